"""Ageing dead processes out of the maps: the one step that deletes map
entries, run by the front ends after they used a snapshot (source.reap()).

A dead process leaves the maps KEEP_DEAD_SECONDS after it died, sooner
(oldest first) when more than KEEP_DEAD_MAX are dead, so that process churn
never fills the maps. Snapshots showed its final totals meanwhile; the
exporter keeps them for its series TTL; the system totals keep counting
them (Collector._forgotten)."""

from __future__ import annotations

import ctypes
from typing import Callable, Iterable

from rseqtop.collect.records import MapRecords


Ident = tuple  # (pid, gen)


class Reaper:
    def __init__(self, keep_seconds: float = 60.0, keep_max: int = 4096):
        self.keep_seconds = keep_seconds
        self.keep_max = keep_max
        self.dead_since: dict[Ident, float] = {}  # when each process was first seen dead

    def due(self, present: Iterable[Ident], live: set, newest: dict, now: float,
            exited: Callable[[int, int], bool]) -> set:
        """The processes to drop now. present: every process in the maps;
        live: those with live threads; newest: pid -> newest generation in
        the maps; exited(pid, gen): the process is gone from the system."""
        present = set(present)
        for ident in present:
            pid, gen = ident
            if ident in live:
                self.dead_since.pop(ident, None)
            elif ident not in self.dead_since and (newest.get(pid, gen) > gen or exited(pid, gen)):
                self.dead_since[ident] = now
        for ident in [i for i in self.dead_since if i not in present]:
            del self.dead_since[ident]
        # Never one first seen dead now, even beyond keep_max: a thread that
        # exited between the reads of procs and threads is in neither for
        # this poll, and only the next one shows the process's final counts.
        aged = sorted(((i, t) for i, t in self.dead_since.items() if t < now), key=lambda kv: kv[1])
        excess = max(0, len(self.dead_since) - self.keep_max)
        gone = {i for n, (i, t) in enumerate(aged) if n < excess or now - t > self.keep_seconds}
        for ident in gone:
            del self.dead_since[ident]
        return gone


def delete(bpf, gone: set, rec: MapRecords) -> None:
    """Delete every entry of the processes `gone` that `rec` read."""
    def ident(r):
        return (r.pid, r.gen) in gone

    deletions = (
        (bpf["procs"], [bpf["procs"].Key(tgid=pid, gen=gen) for pid, gen in gone]),
        (bpf["sites"], [bpf["sites"].Key(tgid=s.pid, gen=s.gen, start_ip=s.start_ip)
                        for s in rec.sites if ident(s)]),
        (bpf["offsets"], [bpf["offsets"].Key(tgid=o.pid, gen=o.gen, start_ip=o.start_ip, offset=o.offset)
                          for o in rec.offsets if ident(o)]),
        (bpf["pcounts"], [bpf["pcounts"].Key(tgid=c.pid, kind=c.kind, cmd=c.cmd, code=c.code, gen=c.gen)
                          for c in rec.calls if ident(c)]),
        (bpf["preempters"], [bpf["preempters"].Key.from_buffer_copy(bytes.fromhex(r.key))
                             for r in rec.preempters if ident(r)]),
        (bpf["dead_threads"], [ctypes.c_uint32(t.tid) for t in rec.threads if not t.alive and ident(t)]),
    )
    if rec.handlers is not None:
        deletions += ((bpf["handlers"], [bpf["handlers"].Key(tgid=h.pid, gen=h.gen, tid=h.tid, abort_ip=h.abort_ip)
                                         for h in rec.handlers if ident(h)]),)
    if rec.live is not None:
        deletions += ((bpf["proc_live"], [bpf["proc_live"].Key(tgid=pid, gen=gen) for pid, gen in gone]),)
    for table, keys in deletions:
        for key in keys:
            try:
                del table[key]
            except KeyError:
                pass
