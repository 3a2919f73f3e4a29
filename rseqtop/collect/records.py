"""Plain records of one read of the kernel's maps: what the reader produces
and the pure assembly consumes. No ctypes, no bcc: records can be saved as
JSON and assembled again without root (tests/data/records-*.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Optional

from rseqtop.model.snapshot import Counts, Pairs, ThreadStats


@dataclass(frozen=True)
class ProcRecord:
    """What a process's exited threads left (map procs)."""

    pid: int
    gen: int
    comm: str
    retired: Counts
    exited_threads: int = 0


@dataclass(frozen=True)
class CallRecord:
    """One keyed per-process counter (map pcounts): rseq(2) and membarrier(2)
    calls, errors and latency slots (kinds: RSEQTOP_PC_* of bpf/rseqtop.h)."""

    pid: int
    gen: int
    kind: int
    cmd: int
    code: int
    n: int


@dataclass(frozen=True)
class SiteRecord:
    pid: int
    gen: int
    start_ip: int
    aborts: int
    causes: Pairs = ()
    abort_ip: int = 0
    post_commit_offset: int = 0
    storms: int = 0


@dataclass(frozen=True)
class PreempterRecord:
    """Aborts of a section caused by preemption, for one preempter (map
    preempters): a process ptgid and a thread name, ptid the latest of its
    threads to cause one. ptid None: not seen; kthread None: unknown (read
    from /proc by the reader); key: the map key's bytes in hex, to delete
    the entry (records are JSON)."""

    pid: int
    gen: int
    start_ip: int
    ptid: Optional[int]
    ptgid: int
    comm: str
    n: int
    kthread: Optional[bool] = None
    key: str = ""


@dataclass(frozen=True)
class OffsetRecord:
    pid: int
    gen: int
    start_ip: int
    offset: int
    n: int


@dataclass(frozen=True)
class LiveRecord:
    """A process's live threads summed in the kernel (map proc_live, written
    by the task iterator at this read)."""

    pid: int
    gen: int
    threads: int
    counts: Counts


@dataclass(frozen=True)
class HandlerRecord:
    """Runs of one abort handler by one thread (map handlers, --uprobes):
    `kernel` of them right after a kernel abort of the thread there."""

    pid: int
    gen: int
    tid: int
    abort_ip: int
    hits: int
    kernel: int

    @property
    def user(self) -> int:
        return max(0, self.hits - self.kernel)


@dataclass(frozen=True)
class Setup:
    """What was attached: fixed from attach to close."""

    era: str = ""
    era_description: str = ""
    probes: tuple = ()
    missing: tuple = ()
    unavailable_causes: tuple = ()
    capacities: Pairs = ()  # (map name, entries)
    syscalls: bool = False
    uprobes: bool = False  # abort handlers probed (--uprobes)


@dataclass(frozen=True)
class MapRecords:
    setup: Setup
    monotonic: float  # when the read ended
    wall: float
    read_seconds: float  # how long reading the maps took
    counters: Pairs = ()  # (RSEQTOP_CNT_* name in lower case, total over CPUs)
    procs: tuple = ()  # ProcRecord
    # live threads from the threads map (update and preemption counts and
    # CPU from their hot state), exited ones from dead_threads: the model's
    # ThreadStats already, as the assembly passes them through
    threads: tuple = ()  # ThreadStats
    calls: tuple = ()  # CallRecord
    sites: tuple = ()  # SiteRecord
    offsets: tuple = ()  # OffsetRecord
    cpu_aborts: tuple = ()
    # the name of each process with live threads, read from /proc
    # (threads rename themselves after the kernel first saw them)
    live_comms: Pairs = ()
    bpf_run_time_ns: Optional[int] = None
    bpf_run_count: Optional[int] = None
    probe_misses: int = 0
    cpu_seconds: float = 0.0
    # Processes' live threads summed in the kernel (LiveRecord), where the
    # task iterator runs: `threads` then holds only the threads asked for
    # (Collector.want_threads). None: sum `threads`, which holds them all.
    live: Optional[tuple] = None
    # HandlerRecord with --uprobes; None: user-detected aborts not measured
    handlers: Optional[tuple] = None
    handlers_probed: int = 0  # uprobes attached at abort handlers
    preempters: tuple = ()  # PreempterRecord
    # (map name, entries in use) for maps whose use only the reader knows
    # (process slots, and proc_live of this read's iterator pass)
    map_used: Pairs = ()

    def counter(self, name: str) -> int:
        return dict(self.counters).get(name, 0)

    def live_idents(self) -> set:
        """(pid, gen) of every process with live threads."""
        if self.live is not None:
            return {(r.pid, r.gen) for r in self.live if r.threads}
        return {(t.pid, t.gen) for t in self.threads if t.alive}


# -- JSON ---------------------------------------------------------------
_NESTED = {"procs": ProcRecord, "threads": ThreadStats, "calls": CallRecord, "sites": SiteRecord,
           "offsets": OffsetRecord, "live": LiveRecord, "handlers": HandlerRecord,
           "preempters": PreempterRecord}


def _tuples(value):
    """JSON arrays back into the tuples records hold."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _counts(d: dict) -> Counts:
    return Counts(**{k: _tuples(v) for k, v in d.items()})


def _record(cls, d: dict):
    kw = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        kw[f.name] = _counts(v) if f.name in ("counts", "retired") else _tuples(v)
    return cls(**kw)


def dumps(rec: MapRecords) -> str:
    return json.dumps(asdict(rec), indent=1, sort_keys=True)


def loads(text: str) -> MapRecords:
    d = json.loads(text)
    kw = {f.name: _tuples(d[f.name]) for f in fields(MapRecords) if f.name in d and f.name not in _NESTED}
    kw["setup"] = _record(Setup, d["setup"])
    for name, cls in _NESTED.items():
        if name in ("live", "handlers") and d.get(name) is None:
            continue  # live: summed from the threads; handlers: not measured
        kw[name] = tuple(_record(cls, x) for x in d.get(name, ()))
    return MapRecords(**kw)
