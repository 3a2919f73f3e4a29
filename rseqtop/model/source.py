"""What every front end polls: a snapshot source.

rseqtop.collect.Collector reads the kernel's maps; rseqtop.model.synthetic's
SyntheticSource makes deterministic data for front-end tests, snapshot
tests and benchmarks. Front ends call poll() each interval and reap() after
it, and know nothing else about where snapshots come from.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

from rseqtop.model.snapshot import Snapshot


class SnapshotSource(Protocol):
    def attach(self) -> "SnapshotSource":
        """Start collecting (load and attach probes); returns self."""

    def poll(self) -> Snapshot:
        """Totals since attach, as of now."""

    def reap(self) -> int:
        """Drop processes that died a while ago from the source's storage
        (their final totals were in the snapshots meanwhile); returns how
        many. Separate from poll so that reading never deletes."""

    def want_mm_cid(self, on: bool) -> None:
        """Threads' mm_cid from the next poll on (it may cost more to collect)."""

    def want_threads(self, mode: str) -> None:
        """Which threads snapshots list: "all", "aborting" (with aborts) or
        "none"; process totals are exact either way."""

    def set_filter(self, pids: Optional[Iterable[int]] = None, comm: Optional[str] = None,
                   cgroups: Optional[Iterable[str]] = None) -> None:
        """Only these processes from the next poll on."""

    def close(self) -> None:
        """Stop collecting (detach)."""


def poll_and_reap(source: SnapshotSource) -> Snapshot:
    """One interval's snapshot; then what it showed for the last time goes."""
    snap = source.poll()
    source.reap()
    return snap
