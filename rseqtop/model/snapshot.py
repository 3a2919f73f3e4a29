"""Immutable snapshots of what the collector read from the kernel's maps.

Every front end (TUI, batch/JSON, exporter) reads these and nothing else.
All counters are totals since the collector attached; rates come from
rseqtop.model.rates, which diffs two snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Optional

CAUSES = ("preempt", "migrate", "signal", "membarrier")
# Registration ABIs by the RSEQTOP_ABI_* code of bpf/rseqtop.h.
ABI_NAMES = {1: "legacy", 2: "v2"}
STALE_BIT = 16


def cause_name(code: int) -> str:
    """An abort's cause code as a label: "preempt+migrate", "stale:preempt", "unknown"."""
    names = "+".join(name for i, name in enumerate(CAUSES) if code & (1 << i))
    if not names:
        return "unknown"
    return f"stale:{names}" if code & STALE_BIT else names


Pairs = tuple  # tuple[tuple[key, int], ...]: an immutable, ordered mapping


def all_aborts(aborts: int, user_aborts: Optional[int]) -> Optional[int]:
    """Kernel and user-detected aborts together; None when the latter were
    not measured."""
    return None if user_aborts is None else aborts + user_aborts


def pairs(mapping) -> Pairs:
    """dict -> sorted tuple of (key, value) with zero values dropped."""
    return tuple(sorted((k, v) for k, v in mapping.items() if v))


@dataclass(frozen=True)
class Counts:
    aborts: int = 0
    updates: int = 0  # rseq_update events (notify-resume with rseq registered)
    preempts: int = 0
    migrations: int = 0
    signals: int = 0
    membarrier_ipis: int = 0
    causes: Pairs = ()  # (cause name, aborts)

    def __add__(self, other: "Counts") -> "Counts":
        merged = dict(self.causes)
        for k, v in other.causes:
            merged[k] = merged.get(k, 0) + v
        return Counts(*(getattr(self, f) + getattr(other, f) for f in COUNT_FIELDS), causes=pairs(merged))

    def cause(self, name: str) -> int:
        return dict(self.causes).get(name, 0)

    def top_cause(self) -> str:
        return max(self.causes, key=lambda kv: (kv[1], kv[0]))[0] if self.causes else ""


# Counts' scalar fields, in order: rates, sums and the front ends' columns
# iterate over these, so a new count is added in one place.
COUNT_FIELDS = tuple(f.name for f in fields(Counts) if f.name != "causes")
_count_values = attrgetter(*COUNT_FIELDS)


def sum_counts(items) -> Counts:
    """The sum of many Counts at once (a process's ten thousand threads:
    no intermediate Counts per addition)."""
    items = list(items)
    if not items:
        return Counts()
    columns = zip(*map(_count_values, items))
    merged: dict = {}
    for c in items:
        for k, v in c.causes:
            merged[k] = merged.get(k, 0) + v
    return Counts(*map(sum, columns), causes=pairs(merged))


# The cause whose events a count field counts (the same order as CAUSES).
CAUSE_OF_FIELD = {"preempts": "preempt", "migrations": "migrate", "signals": "signal",
                  "membarrier_ipis": "membarrier"}


@dataclass(frozen=True)
class Preempter:
    """The tasks of one process with one name that ran next on the CPU
    after preempting a thread, and how many aborts their preemptions
    caused. tgid is the process; pid the latest of its threads with that
    name to cause one (a thread id, as sched_switch's next_pid), the only
    one when the name is a single thread's; kthread: a kernel thread (None:
    it exited before rseqtop could tell). pid None: not seen (the thread's
    latest switch-out was voluntary, or it ran on another CPU before its
    preempter switched out)."""

    pid: Optional[int]
    tgid: Optional[int]
    comm: str
    count: int
    kthread: Optional[bool] = None


def top_preempters(entries, n: int) -> tuple:
    """(the n most frequent known preempters, the count of the other known
    ones, the count of unknown ones)."""
    known = sorted((e for e in entries if e.pid is not None), key=lambda e: (-e.count, e.pid))
    unknown = sum(e.count for e in entries if e.pid is None)
    return tuple(known[:n]), sum(e.count for e in known[n:]), unknown


def merge_preempters(groups) -> tuple:
    """Preempters of several sections summed by process and name (the
    pid of the entry that comes first stands for them), most frequent
    first."""
    by_task: dict = {}
    for entries in groups:
        for e in entries:
            key = None if e.pid is None else (e.tgid, e.comm)
            have = by_task.get(key)
            by_task[key] = e if have is None else Preempter(have.pid, e.tgid, e.comm, have.count + e.count, e.kthread)
    return tuple(sorted(by_task.values(), key=lambda e: (-e.count, -1 if e.pid is None else e.pid)))


@dataclass(frozen=True)
class ThreadStats:
    pid: int
    tid: int
    comm: str
    counts: Counts
    cpu: int = -1  # latest cpu_id the kernel wrote to the thread's rseq area
    node: int = -1
    mm_cid: int = -1  # -1: not reported by this kernel
    last_signal: int = 0
    alive: bool = True
    gen: int = 0  # its process's generation (see ProcessStats.gen)
    # With --uprobes: runs of its sections' abort handlers that no kernel
    # abort sent it to (the sections' own cpu_id checks); None: not measured
    user_aborts: Optional[int] = None


@dataclass(frozen=True)
class MembarrierStats:
    cmd: str  # e.g. "PRIVATE_EXPEDITED_RSEQ"
    calls: int
    errors: Pairs = ()  # (errno name, count)
    latency_log2_ns: Pairs = ()  # (log2 slot, count): slot k holds [2^k, 2^(k+1)) ns


@dataclass(frozen=True)
class ProcessStats:
    pid: int
    comm: str
    counts: Counts
    threads_live: int = 0  # threads with rseq seen and not exited
    threads_exited: int = 0
    registrations: int = 0
    unregistrations: int = 0
    registration_errors: Pairs = ()  # (errno name, count), registrations and unregistrations
    membarrier: tuple = ()  # MembarrierStats, by command
    alive: bool = True
    # How many earlier processes with this pid died while rseqtop watched: a
    # recycled pid is a new process, with counts from zero.
    gen: int = 0
    # successful registrations by the ABI their length asks for: ("legacy",
    # n) for 32-byte areas, ("v2", n) for longer ones (see ABI_NAMES)
    registrations_by_abi: Pairs = ()
    user_aborts: Optional[int] = None  # as ThreadStats.user_aborts, all its threads
    # abort storms and preempters, summed over its sections (SiteStats)
    storms: int = 0
    preempters: tuple = ()  # Preempter, most frequent first

    def membarrier_calls(self) -> int:
        return sum(m.calls for m in self.membarrier)


@dataclass(frozen=True)
class SiteStats:
    pid: int
    start_ip: int
    symbol: str  # binary!symbol+offset, or the address when unknown
    aborts: int
    causes: Pairs = ()
    abort_ip: int = 0
    post_commit_offset: int = 0
    offsets: Pairs = ()  # (interrupted offset from start_ip, aborts)
    user_aborts: Optional[int] = None  # as ThreadStats.user_aborts, at this section's abort handler
    # runs of consecutive aborts of one thread here that met the storm rule
    storms: int = 0
    preempters: tuple = ()  # Preempter of its aborts caused by preemption, most frequent first


@dataclass(frozen=True)
class MapFill:
    name: str
    used: int
    capacity: int
    dropped: int = 0  # inserts refused because the map was full


@dataclass(frozen=True)
class SelfStats:
    probes_attached: tuple = ()  # "rseq:rseq_ip_fixup", ...
    probes_missing: tuple = ()  # human lines: what is missing and what that costs
    unavailable_causes: tuple = ()  # causes this kernel cannot attribute, e.g. ("membarrier",)
    events_sent: int = 0
    events_lost: int = 0
    maps: tuple = ()  # MapFill
    bpf_run_time_ns: Optional[int] = None  # None: kernel.bpf_stats_enabled is off
    bpf_run_count: Optional[int] = None
    cpu_seconds: float = 0.0  # rseqtop's own user+system CPU time
    poll_seconds: float = 0.0  # how long reading the maps took
    # rseq and membarrier system calls counted (opt-in: --syscalls)
    syscall_accounting: bool = True
    # program runs the kernel skipped (its recursion guard: the program was
    # already running on that CPU, preempted from 6.19): events not seen
    probe_misses: int = 0
    # --uprobes: user-detected aborts are measured (abort handlers probed),
    # and how many handlers have a uprobe
    uprobes: bool = False
    handlers_probed: int = 0

    def dropped(self) -> int:
        return sum(m.dropped for m in self.maps)


@dataclass(frozen=True)
class Snapshot:
    monotonic: float  # seconds, CLOCK_MONOTONIC, when the maps were read
    wall: float  # seconds since the epoch
    era: str  # "classic", "rewrite" or "v2"
    era_description: str
    totals: Counts  # system-wide, from the per-CPU counters
    processes: tuple = ()  # ProcessStats
    threads: tuple = ()  # ThreadStats (live, then recently exited)
    sites: tuple = ()  # SiteStats
    cpu_aborts: tuple = ()  # aborts per CPU, indexed by CPU number
    self_stats: SelfStats = field(default_factory=SelfStats)
    # ProcessStats of earlier generations of recycled pids, dead and still in
    # the maps: not shown (a pid is one row), but counted by the exporter's
    # series, which must not lose a process that died and gave its pid away
    # between two polls
    earlier: tuple = ()

    def process(self, pid: int) -> Optional[ProcessStats]:
        for p in self.processes:
            if p.pid == pid:
                return p
        return None

    def threads_of(self, pid: int) -> tuple:
        return tuple(t for t in self.threads if t.pid == pid)

    def sites_of(self, pid: int) -> tuple:
        return tuple(s for s in self.sites if s.pid == pid)
