"""Rates from two snapshots: pure functions, no state.

Counters in snapshots are totals since attach; a rate is the difference of
two totals over the time between the snapshots. A key that is new in the
later snapshot counts from zero (it appeared in between).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Iterable, Optional

from rseqtop.model.snapshot import COUNT_FIELDS, Counts, Snapshot


@dataclass(frozen=True)
class Rates:
    """Per-second rates of one entity (process, thread, site or the system):
    one per field of snapshot.COUNT_FIELDS, in that order (a test checks)."""

    aborts: float = 0.0
    updates: float = 0.0
    preempts: float = 0.0
    migrations: float = 0.0
    signals: float = 0.0
    membarrier_ipis: float = 0.0

    @property
    def abort_ratio(self) -> Optional[float]:
        """Aborts per 100 preemptions in the interval (None without preemptions)."""
        return 100.0 * self.aborts / self.preempts if self.preempts else None


ZERO = Rates()
_values = attrgetter(*COUNT_FIELDS)


def counts_rate(prev: Optional[Counts], cur: Counts, seconds: float) -> Rates:
    if seconds <= 0 or prev is cur:  # the collector keeps an unchanged thread's Counts
        return ZERO
    if prev is None:
        return Rates(*(v / seconds if v > 0 else 0.0 for v in _values(cur)))
    return Rates(*((a - b) / seconds if a > b else 0.0 for a, b in zip(_values(cur), _values(prev))))


def interval(prev: Optional[Snapshot], cur: Snapshot) -> float:
    return cur.monotonic - prev.monotonic if prev else 0.0


def system_rates(prev: Optional[Snapshot], cur: Snapshot) -> Rates:
    return counts_rate(prev.totals if prev else None, cur.totals, interval(prev, cur))


def process_rates(prev: Optional[Snapshot], cur: Snapshot) -> dict[int, Rates]:
    dt = interval(prev, cur)
    # (pid, gen): a recycled pid is another process, counted from zero
    before = {(p.pid, p.gen): p.counts for p in prev.processes} if prev else {}
    return {p.pid: counts_rate(before.get((p.pid, p.gen)), p.counts, dt) for p in cur.processes}


def thread_rates(prev: Optional[Snapshot], cur: Snapshot, threads: Optional[Iterable] = None) -> dict[int, Rates]:
    """tid -> rates of `threads` (default: all of cur's)."""
    dt = interval(prev, cur)
    before = {(t.tid, t.pid, t.gen): t.counts for t in prev.threads} if prev else {}
    return {t.tid: counts_rate(before.get((t.tid, t.pid, t.gen)), t.counts, dt)
            for t in (cur.threads if threads is None else threads)}


def site_rates(prev: Optional[Snapshot], cur: Snapshot) -> dict[tuple[int, int], float]:
    """(pid, start_ip) -> aborts per second."""
    dt = interval(prev, cur)
    if dt <= 0:
        return {(s.pid, s.start_ip): 0.0 for s in cur.sites}
    before = {(s.pid, s.start_ip): s.aborts for s in prev.sites} if prev else {}
    return {(s.pid, s.start_ip): max(0, s.aborts - before.get((s.pid, s.start_ip), 0)) / dt for s in cur.sites}

