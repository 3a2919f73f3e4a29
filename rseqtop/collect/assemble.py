"""Records -> Snapshot: a pure function of one read of the maps, the
display filter, and what the previous polls left (the totals shown last,
the counts of processes already aged out of the maps).

Unit-tested from recorded records without root (tests/test_assemble.py).
"""

from __future__ import annotations

import errno as errno_mod
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional

from rseqtop.collect.records import CallRecord, MapRecords, ProcRecord
from rseqtop.kernel import bpfgen
from rseqtop.kernel import facts as kernel
from rseqtop.model.snapshot import (
    ABI_NAMES, COUNT_FIELDS, Counts, MapFill, MembarrierStats, Preempter, ProcessStats, SelfStats, SiteStats,
    Snapshot, merge_preempters, pairs, sum_counts,
)

K = bpfgen.header_constants()
# map -> the counter of inserts it refused when full
DROP_COUNTERS = {"threads": "threads_dropped", "dead_threads": None, "procs": "procs_dropped",
                 "sites": "sites_dropped", "offsets": "offsets_dropped", "pcounts": "pcounts_dropped",
                 "proc_live": "live_dropped", "proc_slot": "slots_dropped", "handlers": "handlers_dropped",
                 "preempters": "preempters_dropped"}

Ident = tuple  # (pid, gen): a process; a recycled pid is another process


@dataclass(frozen=True)
class View:
    """The display filter: which processes snapshots show (system totals
    count every process)."""

    pids: frozenset = frozenset()
    comm: Optional[re.Pattern] = None

    def shows(self, p: ProcessStats) -> bool:
        return (not self.pids or p.pid in self.pids) and (not self.comm or bool(self.comm.search(p.comm)))


@dataclass(frozen=True)
class Assembly:
    snapshot: Snapshot
    # every process in the maps, unfiltered, earlier generations of recycled
    # pids included: what the reaper ages out
    processes: tuple = ()
    newest: Mapping[int, int] = field(default_factory=dict)  # pid -> its newest generation
    last_totals: Mapping[Ident, Counts] = field(default_factory=dict)  # for the next assembly


def errno_name(code: int) -> str:
    return errno_mod.errorcode.get(code, f"E{code}")


def membarrier_cmd_name(cmd: int) -> str:
    return kernel.MEMBARRIER_CMDS.get(cmd, f"CMD_{cmd}")


def assemble(rec: MapRecords, view: View = View(), last_totals: Mapping[Ident, Counts] = {},
             forgotten: Counts = Counts(), symbol: Callable[[int, int], str] = lambda pid, ip: f"0x{ip:x}",
             section_of: Callable[[int, int, int], Optional[int]] = lambda pid, gen, abort_ip: None
             ) -> Assembly:
    """symbol(pid, start_ip) names a critical section; section_of(pid, gen,
    abort_ip) is the start_ip of the section a handler serves, if known
    (--uprobes: a section that never aborted in the kernel has no site)."""
    shown_before = dict(last_totals)
    everyone = _processes(rec, shown_before)
    # System-wide totals, before the display filter; processes already
    # dropped from the maps still count.
    totals = sum_counts([forgotten] + [p.counts for p in everyone])
    newest: dict[int, ProcessStats] = {}
    for p in everyone:
        if p.pid not in newest or p.gen > newest[p.pid].gen:
            newest[p.pid] = p
    processes = [p for p in newest.values() if view.shows(p)]
    earlier = tuple(p for p in everyone if p is not newest[p.pid] and view.shows(p))
    keep = {(p.pid, p.gen) for p in processes}
    threads = [t for t in rec.threads if (t.pid, t.gen) in keep]
    sites = _sites(rec, keep, symbol)
    if rec.handlers is not None:
        processes, threads, sites = _with_user_aborts(rec.handlers, processes, threads, sites, symbol, section_of)
    processes = _with_site_sums(processes, sites)
    snap = Snapshot(rec.monotonic, rec.wall, rec.setup.era, rec.setup.era_description, totals,
                    tuple(sorted(processes, key=lambda p: p.pid)),
                    tuple(sorted(threads, key=lambda t: (t.pid, t.tid))),
                    tuple(sorted(sites, key=lambda s: (s.pid, s.start_ip))),
                    rec.cpu_aborts, _self_stats(rec), earlier)
    return Assembly(snap, tuple(everyone), {pid: p.gen for pid, p in newest.items()}, shown_before)


def _processes(rec: MapRecords, shown_before: dict) -> list:
    """Every process with rseq activity, by (pid, gen): totals are exited
    threads' (procs) plus live threads' counts, summed in the kernel
    (rec.live) or here from the threads. Updates shown_before."""
    by_proc: dict[Ident, list] = {}
    for t in rec.threads:
        by_proc.setdefault((t.pid, t.gen), []).append(t)
    summed = {(r.pid, r.gen): r for r in rec.live} if rec.live is not None else None
    procs = {(p.pid, p.gen): p for p in rec.procs}
    calls: dict[Ident, list] = {}
    for c in rec.calls:
        calls.setdefault((c.pid, c.gen), []).append(c)
    live_comms = dict(rec.live_comms)
    out = []
    for ident in sorted(set(by_proc) | set(procs) | set(calls) | set(summed or ())):
        pid, gen = ident
        ts = by_proc.get(ident, [])
        p = procs.get(ident)
        if summed is None:
            live = [t.counts for t in ts if t.alive]
            nlive = len(live)
        else:
            s = summed.get(ident)
            nlive = s.threads if s else 0
            live = [s.counts] if nlive else []
        counts = sum_counts(([p.retired] if p else []) + live)
        counts = _monotonic(shown_before, ident, counts)
        reg, unreg, reg_err, membarrier, by_abi = _process_calls(calls.get(ident, []))
        out.append(ProcessStats(pid, _process_comm(pid, ts, p, live_comms if live else {}), counts, nlive,
                                p.exited_threads if p else 0, reg, unreg, reg_err, membarrier,
                                alive=bool(live), gen=gen, registrations_by_abi=by_abi))
    return out


def _monotonic(shown_before: dict, ident: Ident, counts: Counts) -> Counts:
    """A thread that exits between the reads of procs and threads is in
    neither for one poll; show the previous totals instead of a dip."""
    prev = shown_before.get(ident)
    if prev is not None and dipped(prev, counts):
        return prev
    shown_before[ident] = counts
    return counts


def dipped(prev: Counts, cur: Counts) -> bool:
    if any(getattr(cur, f) < getattr(prev, f) for f in COUNT_FIELDS):
        return True
    now = dict(cur.causes)
    return any(now.get(k, 0) < v for k, v in prev.causes)


def _process_comm(pid: int, threads: list, proc: Optional[ProcRecord], live_comms: dict) -> str:
    """A process's name is its main thread's: live from /proc, else the name
    its main thread died with, else a thread's."""
    if live_comms.get(pid):
        return live_comms[pid]
    if proc is not None and proc.comm:
        return proc.comm
    for t in threads:
        if t.tid == pid:
            return t.comm
    return threads[0].comm if threads else ""


def _process_calls(rows: list[CallRecord]) -> tuple:
    """(registrations, unregistrations, registration errors, membarrier stats,
    registrations by ABI) from a process's keyed counters."""
    reg = unreg = 0
    by_abi: dict = {}
    reg_err: dict = {}
    mb: dict[int, dict] = {}
    for r in rows:
        if r.kind in (K["RSEQTOP_PC_RSEQ_REG"], K["RSEQTOP_PC_RSEQ_UNREG"]):
            if r.code:
                reg_err[errno_name(r.code)] = reg_err.get(errno_name(r.code), 0) + r.n
            elif r.kind == K["RSEQTOP_PC_RSEQ_REG"]:
                reg += r.n
                abi = ABI_NAMES.get(r.cmd, f"abi{r.cmd}")
                by_abi[abi] = by_abi.get(abi, 0) + r.n
            else:
                unreg += r.n
            continue
        m = mb.setdefault(r.cmd, {"calls": 0, "errors": {}, "lat": {}})
        if r.kind == K["RSEQTOP_PC_MB_CALL"]:
            m["calls"] += r.n
        elif r.kind == K["RSEQTOP_PC_MB_ERROR"]:
            m["errors"][errno_name(r.code)] = r.n
        elif r.kind == K["RSEQTOP_PC_MB_LATENCY"]:
            m["lat"][r.code] = r.n
    membarrier = tuple(MembarrierStats(membarrier_cmd_name(cmd), m["calls"], pairs(m["errors"]), pairs(m["lat"]))
                       for cmd, m in sorted(mb.items()))
    return reg, unreg, pairs(reg_err), membarrier, pairs(by_abi)


def _sites(rec: MapRecords, keep: set, symbol: Callable[[int, int], str]) -> list:
    offs: dict[tuple, dict] = {}
    for o in rec.offsets:
        offs.setdefault((o.pid, o.gen, o.start_ip), {})[o.offset] = o.n
    pre: dict[tuple, list] = {}
    for r in rec.preempters:
        if (r.pid, r.gen) in keep:
            pre.setdefault((r.pid, r.gen, r.start_ip), []).append(
                Preempter(r.ptid, r.ptgid if r.ptid is not None else None, r.comm, r.n, r.kthread))
    return [SiteStats(s.pid, s.start_ip, symbol(s.pid, s.start_ip), s.aborts, s.causes, s.abort_ip,
                      s.post_commit_offset, pairs(offs.get((s.pid, s.gen, s.start_ip), {})), storms=s.storms,
                      preempters=merge_preempters([pre.get((s.pid, s.gen, s.start_ip), ())]))
            for s in rec.sites if (s.pid, s.gen) in keep]


def _with_user_aborts(handlers: tuple, processes: list, threads: list, sites: list, symbol, section_of) -> tuple:
    """--uprobes: each process, thread and section with its user-detected
    aborts (0 when its handlers never ran without a kernel abort). A
    thread's are in the map even after it exited, so a process's are the
    sum over all its threads' records, not only the live ones. A handler
    whose section the kernel never aborted gets a section row of its own
    when section_of knows the section's start."""
    by_proc: dict = {}
    by_thread: dict = {}
    by_handler: dict = {}
    for h in handlers:
        n = h.user
        by_proc[(h.pid, h.gen)] = by_proc.get((h.pid, h.gen), 0) + n
        by_thread[(h.pid, h.gen, h.tid)] = by_thread.get((h.pid, h.gen, h.tid), 0) + n
        by_handler[(h.pid, h.gen, h.abort_ip)] = by_handler.get((h.pid, h.gen, h.abort_ip), 0) + n
    processes = [replace(p, user_aborts=by_proc.get((p.pid, p.gen), 0)) for p in processes]
    threads = [replace(t, user_aborts=by_thread.get((t.pid, t.gen, t.tid), 0)) for t in threads]
    gens = {p.pid: p.gen for p in processes}  # the one generation shown per pid
    sites = [replace(s, user_aborts=by_handler.get((s.pid, gens.get(s.pid), s.abort_ip), 0)) for s in sites]
    known = {(s.pid, s.abort_ip) for s in sites} | {(s.pid, s.start_ip) for s in sites}
    for (pid, gen, abort_ip), n in sorted(by_handler.items()):
        if n and gens.get(pid) == gen and (pid, abort_ip) not in known:
            start = section_of(pid, gen, abort_ip)
            if start is not None and (pid, start) not in known:
                known.add((pid, start))
                sites.append(SiteStats(pid, start, symbol(pid, start), 0, abort_ip=abort_ip, user_aborts=n))
    return processes, threads, sites


def _with_site_sums(processes: list, sites: list) -> list:
    """Each process's storms and preempters: the sums over its sections."""
    by_pid: dict[int, list] = {}
    for s in sites:
        by_pid.setdefault(s.pid, []).append(s)
    return [replace(p, storms=sum(s.storms for s in by_pid.get(p.pid, ())),
                    preempters=merge_preempters(s.preempters for s in by_pid.get(p.pid, ())))
            if p.pid in by_pid else p for p in processes]


def _self_stats(rec: MapRecords) -> SelfStats:
    alive = sum(1 for t in rec.threads if t.alive)
    used = {"threads": alive if rec.live is None else sum(r.threads for r in rec.live),
            "dead_threads": len(rec.threads) - alive, "procs": len(rec.procs), "sites": len(rec.sites),
            "offsets": len(rec.offsets), "pcounts": len(rec.calls), "proc_live": len(rec.live or ()),
            "handlers": len(rec.handlers or ()), "preempters": len(rec.preempters)}
    used.update(dict(rec.map_used))
    capacity = dict(rec.setup.capacities)
    maps = tuple(MapFill(name, used[name], capacity[name], rec.counter(drop) if drop else 0)
                 for name, drop in DROP_COUNTERS.items() if name in capacity)
    s = rec.setup
    return SelfStats(s.probes, s.missing, s.unavailable_causes, rec.counter("events_sent"),
                     rec.counter("events_lost"), maps, rec.bpf_run_time_ns, rec.bpf_run_count, rec.cpu_seconds,
                     rec.read_seconds, s.syscalls, rec.probe_misses, rec.handlers is not None,
                     rec.handlers_probed)
