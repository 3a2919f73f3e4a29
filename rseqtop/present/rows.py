"""What the live views show, computed from snapshots: pure, no Textual.

`LiveModel.update(snapshot)` keeps the previous snapshot and a short history
of each process's abort rate (for sparklines); `process_rows`, `thread_rows`
and `site_rows` turn the two latest snapshots into plain row objects that the
TUI and the batch/JSON writers format.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from rseqtop.model import rates
from rseqtop.model.rates import Rates
from rseqtop.model.snapshot import Counts, Snapshot, top_preempters
from rseqtop.present.textsafe import printable

HISTORY = 20
# Preempters named per process and section (JSON, drill-down); the rest
# are summed as "other".
TOP_PREEMPTERS = 5
SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values, width: int = 10) -> str:
    return _sparkline(tuple(values)[-width:])


@functools.lru_cache(maxsize=4096)
def _sparkline(vals: tuple) -> str:
    # cached: the live view draws one per process per refresh, mostly the same as the last one
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return SPARK[0] * len(vals)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in vals)


def cause_split(causes, total: Optional[int] = None, limit: int = 3) -> str:
    """"preempt 80% signal 20%" from (cause, n) pairs, biggest first."""
    total = total if total is not None else sum(n for _, n in causes)
    if not total:
        return ""
    parts = sorted(causes, key=lambda kv: (-kv[1], kv[0]))
    shown = [f"{name} {100.0 * n / total:.0f}%" for name, n in parts[:limit]]
    if len(parts) > limit:
        shown.append(f"+{len(parts) - limit}")
    return " ".join(shown)


def preempter_split(entries, limit: int = 3) -> str:
    """"hog 97%, kworker/1:2 2%, other 1%": who ran next after the
    preemptions that aborted sections, share of those aborts, biggest
    first; "unknown" for aborts whose preempter was not seen."""
    total = sum(e.count for e in entries)
    if not total:
        return ""
    top, other, unknown = top_preempters(entries, limit)
    parts = [f"{printable(e.comm)}{' [k]' if e.kthread else ''} {100.0 * e.count / total:.0f}%" for e in top]
    if other:
        parts.append(f"other {100.0 * other / total:.0f}%")
    if unknown:
        parts.append(f"unknown {100.0 * unknown / total:.0f}%")
    return ", ".join(parts)


def storms_text(n: int) -> str:
    """The storm marker: "-" for none, else the count with a "!"."""
    return f"{n}!" if n else "-"


@dataclass(frozen=True)
class ProcessRow:
    pid: int
    comm: str
    threads: int
    rates: Rates
    counts: Counts
    top_cause: str
    top_site: str
    history: tuple = ()
    alive: bool = True
    unavailable: tuple = ()  # causes this kernel cannot see (shown as n/a)
    user_aborts: Optional[int] = None  # --uprobes: user-detected aborts; None: not measured
    storms: int = 0
    preempters: tuple = ()  # rseqtop.model.snapshot.Preempter, most frequent first


@dataclass(frozen=True)
class ThreadRow:
    pid: int
    tid: int
    comm: str
    cpu: int
    mm_cid: int
    rates: Rates
    counts: Counts
    alive: bool = True
    unavailable: tuple = ()
    node: int = -1  # NUMA node of `cpu`; -1 while the CPU is unknown
    last_signal: int = 0  # number of the last signal delivered to the thread; 0: none seen
    user_aborts: Optional[int] = None  # as ProcessRow.user_aborts


@dataclass(frozen=True)
class SiteRow:
    pid: int
    start_ip: int
    symbol: str
    aborts_per_s: float
    aborts: int
    share: Optional[float]  # percent of the process's aborts
    causes: tuple
    offsets: tuple  # (offset, aborts)
    post_commit_offset: int = 0
    user_aborts: Optional[int] = None  # as ProcessRow.user_aborts, at this section's handler
    storms: int = 0
    preempters: tuple = ()

    def top_offset(self) -> Optional[int]:
        return max(self.offsets, key=lambda kv: kv[1])[0] if self.offsets else None


@dataclass
class LiveModel:
    """The two latest snapshots and the abort-rate history per process."""

    prev: Optional[Snapshot] = None
    cur: Optional[Snapshot] = None
    history: dict = field(default_factory=dict)
    polls: int = 0
    # (prev, cur, their process rates): update and process_rows both need them
    rates_kept: Optional[tuple] = field(default=None, repr=False, compare=False)

    def update(self, snap: Snapshot) -> None:
        self.prev, self.cur = self.cur, snap
        self.polls += 1
        prates = self.process_rates()
        seen = set()
        for p in snap.processes:
            seen.add(p.pid)
            h = self.history.setdefault(p.pid, deque(maxlen=HISTORY))
            if self.prev is not None:
                h.append(prates[p.pid].aborts if p.pid in prates else 0.0)
        for pid in list(self.history):
            if pid not in seen:
                del self.history[pid]

    def process_rates(self) -> dict:
        """pid -> Rates between the two latest snapshots ({} before there are two)."""
        if self.prev is None or self.cur is None:
            return {}
        kept = self.rates_kept
        if kept is None or kept[0] is not self.prev or kept[1] is not self.cur:
            kept = self.rates_kept = (self.prev, self.cur, rates.process_rates(self.prev, self.cur))
        return kept[2]

    @property
    def interval(self) -> float:
        return rates.interval(self.prev, self.cur) if self.cur else 0.0

    def system(self) -> Rates:
        return rates.system_rates(self.prev, self.cur) if self.cur and self.prev else Rates()

    def self_cpu_percent(self) -> Optional[float]:
        dt = self.interval
        if dt <= 0:
            return None
        return 100.0 * max(0.0, self.cur.self_stats.cpu_seconds - self.prev.self_stats.cpu_seconds) / dt

    def bpf_cpu_percent(self) -> Optional[float]:
        dt = self.interval
        if dt <= 0 or self.cur.self_stats.bpf_run_time_ns is None or self.prev.self_stats.bpf_run_time_ns is None:
            return None
        return 100.0 * max(0, self.cur.self_stats.bpf_run_time_ns - self.prev.self_stats.bpf_run_time_ns) / 1e9 / dt

    def process_rows(self, include_idle: bool = False) -> list:
        snap = self.cur
        if snap is None:
            return []
        prates = self.process_rates()
        best_site: dict = {}
        for s in snap.sites:
            if s.aborts and (s.pid not in best_site or s.aborts > best_site[s.pid].aborts):
                best_site[s.pid] = s
        out = []
        for p in snap.processes:
            if not include_idle and not p.counts.aborts and not p.user_aborts:
                continue
            site = best_site.get(p.pid)
            out.append(ProcessRow(p.pid, p.comm, p.threads_live, prates.get(p.pid, Rates()), p.counts,
                                  p.counts.top_cause(), site.symbol if site else "",
                                  tuple(self.history.get(p.pid, ())), p.alive,
                                  snap.self_stats.unavailable_causes, p.user_aborts, p.storms, p.preempters))
        return out

    def thread_rows(self, pid: Optional[int] = None, include_idle: bool = False) -> list:
        snap = self.cur
        if snap is None:
            return []
        threads = snap.threads_of(pid) if pid is not None else snap.threads
        threads = [t for t in threads if include_idle or t.counts.aborts or t.user_aborts]
        trates = rates.thread_rates(self.prev, snap, threads) if self.prev else {}
        unavailable = snap.self_stats.unavailable_causes
        return [ThreadRow(t.pid, t.tid, t.comm, t.cpu, t.mm_cid, trates.get(t.tid, Rates()), t.counts, t.alive,
                          unavailable, node=t.node, last_signal=t.last_signal, user_aborts=t.user_aborts)
                for t in threads]

    def site_rows(self, pid: int) -> list:
        snap = self.cur
        if snap is None:
            return []
        srates = rates.site_rates(self.prev, snap) if self.prev else {}
        proc = snap.process(pid)
        total = proc.counts.aborts if proc else 0
        rows = [SiteRow(s.pid, s.start_ip, s.symbol, srates.get((s.pid, s.start_ip), 0.0), s.aborts,
                        100.0 * s.aborts / total if total else None, s.causes, s.offsets, s.post_commit_offset,
                        s.user_aborts, s.storms, s.preempters)
                for s in snap.sites_of(pid)]
        return sorted(rows, key=lambda r: (-r.aborts, r.start_ip))


def row_filter(text: str):
    """A predicate on rows for the `/` filter: digits match a pid (or tid),
    anything else is a regular expression on comm (a plain substring when it
    is not a valid expression)."""
    text = text.strip()
    if not text:
        return lambda row: True
    if text.isdigit():
        n = int(text)
        return lambda row: row.pid == n or getattr(row, "tid", None) == n
    try:
        rx = re.compile(text)
        return lambda row: bool(rx.search(row.comm))
    except re.error:
        return lambda row: text in row.comm
