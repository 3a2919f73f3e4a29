"""The collector: a snapshot source over the kernel's maps.

It wires the stages together: Probes (load and attach), MapReader (maps ->
records), assemble (records -> Snapshot, pure) and Reaper (age dead
processes out). Maps are never cleared: every count is a total since
attach, so that Prometheus counters stay monotonic and rates are
differences of snapshots (rseqtop.model.rates).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from rseqtop.collect import reaper as reaper_mod
from rseqtop.collect.assemble import Assembly, View, assemble
from rseqtop.collect.handoff import HandedProbes
from rseqtop.collect.loader import Probes
from rseqtop.collect.reader import THREAD_MODES, MapReader
from rseqtop.collect.stacks import AbortStacks
from rseqtop.collect.records import MapRecords
from rseqtop.collect.uprobes import HandlerProbes
from rseqtop.errors import UserError
from rseqtop.model.snapshot import Counts, Snapshot
from rseqtop.symbols.symbolizer import Symbolizer

# Seconds after each read during which threads' mm_cid is recorded (0: all
# the time while asked for). Shown mm_cid values are then each thread's
# latest from such a window: exact for threads that ran in it. The record
# costs ~15% of a switch-bound workload's throughput while attached
# (benchmarks/bench.py, "rseqtop --json (mm_cid always)"): 50 ms in a 1 s
# refresh is under 1%, and a thread that runs at all runs in 50 ms.
MM_CID_WINDOW = 0.05


def _no_section(pid: int, gen: int, abort_ip: int) -> None:
    return None


def compile_comm(comm: Optional[str]) -> Optional[re.Pattern]:
    if not comm:
        return None
    try:
        return re.compile(comm)
    except re.error as err:
        raise UserError(f"bad --comm regular expression {comm!r}: {err}", exit_code=2) from None


class Collector:
    """Attach rseqtop's probes; poll() returns a Snapshot, reap() ages dead
    processes out of the maps (see rseqtop.source.SnapshotSource).

    pids: only these processes (tgids) are tracked; cgroups: only tasks in
    these cgroup v2 directories; comm: a regular expression applied to what
    snapshots show. All can change at run time with set_filter(). lean:
    this process never loads libbcc (and LLVM): see rseqtop.collect.handoff
    for what it does without.
    """

    def __init__(self, pids: Optional[Iterable[int]] = None, comm: Optional[str] = None,
                 cgroups: Optional[Iterable[str]] = None, sizes: Optional[dict] = None,
                 emit_events: bool = False, tracefs_root: Optional[Path] = None,
                 symbolizer: Optional[Symbolizer] = None, keep_dead_seconds: float = 60.0,
                 keep_dead_max: int = 4096, syscalls: bool = False, mm_cid_window: float = MM_CID_WINDOW,
                 threads: str = "all", uprobes: bool = False, lean: bool = False,
                 stacks: bool = False, storm: Optional[tuple] = None, event_kinds: int = 0):
        self._pids = set(pids) if pids else set()
        self._comm = compile_comm(comm)
        self._cgroups = list(cgroups or ())
        self._emit_events = emit_events
        self._event_kinds = event_kinds  # bits 1 << RSEQTOP_EV_*: non-abort events, pid filter only
        self._storm = storm  # (K aborts, T seconds); None: bpf/rseqtop.h's defaults
        self._want_mm_cid = False
        self.mm_cid_window = mm_cid_window
        self.want_threads(threads)
        # lean: bcc stays in a short-lived loader process (rseqtop.collect.handoff);
        # not with --uprobes, which attaches probes as binaries appear, nor
        # with --stacks (bcc's stack map walk)
        lean = lean and not uprobes and not stacks
        self.loader = (HandedProbes if lean else Probes)(sizes, syscalls, tracefs_root, uprobes, stacks)
        # --uprobes: abort handlers probed as processes and sections appear
        self.handlers = HandlerProbes(self.loader.attach_handler) if uprobes else None
        self._reader: Optional[MapReader] = None
        self.reaper = reaper_mod.Reaper(keep_dead_seconds, keep_dead_max)
        self.symbolize = symbolizer or Symbolizer()
        # --stacks: abort stacks, symbolized at poll time while processes live
        self.stacks = AbortStacks(self.symbolize) if stacks else None
        self._gens: dict[int, int] = {}  # pid -> newest generation seen (whose names the symbolizer holds)
        self._last_totals: dict[tuple, Counts] = {}  # (pid, gen) -> last totals shown
        self._forgotten = Counts()  # processes aged out of the maps, for the system totals
        self.records: Optional[MapRecords] = None  # of the latest poll
        self.assembly: Optional[Assembly] = None

    # -- set-up ---------------------------------------------------------
    @property
    def probes(self) -> tuple:
        """The tracepoints attached, as "system:event"."""
        return self.loader.names

    @property
    def bpf(self):
        return self.loader.bpf

    @property
    def plan(self):
        return self.loader.plan

    @property
    def era(self):
        return self.loader.era

    def generate(self) -> str:
        """The BPF program for this kernel (what --ebpf prints)."""
        return self.loader.generate()

    def attach(self) -> "Collector":
        self.loader.attach()
        self._reader = MapReader(self.loader)
        self._configure()
        self.loader.watch_sites(self._on_new_site)
        self._scan_handlers(self._pids)
        return self

    def __enter__(self) -> "Collector":
        return self.attach() if self.bpf is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.loader.close()

    def pause_watcher(self) -> None:
        self.loader.pause_watcher()

    def resume_watcher(self) -> None:
        self.loader.resume_watcher()

    def _on_new_site(self, tgid: int, gen: int, start_ip: int) -> None:
        self._note_generation(tgid, gen)
        self.symbolize(tgid, start_ip)
        if self.handlers is not None:
            # a handler no section table named (or of a file mapped since)
            abort_ip = self.loader.site_abort_ip(tgid, gen, start_ip)
            if abort_ip:
                self.handlers.add_handler(tgid, abort_ip)

    def _scan_handlers(self, idents) -> None:
        """--uprobes: probe the abort handlers of processes (pids, or
        (pid, gen) pairs) not scanned yet."""
        if self.handlers is None:
            return
        for ident in idents:
            pid, gen = ident if isinstance(ident, tuple) else (ident, self._gens.get(ident, 0))
            self.handlers.scan_process(pid, gen, lambda start, pid=pid: self.symbolize(pid, start))

    def _note_generation(self, pid: int, gen: int) -> None:
        if self._gens.get(pid, gen) < gen:
            self.symbolize.forget(pid)  # names of the previous process with this pid
        self._gens[pid] = max(gen, self._gens.get(pid, gen))

    # -- filters --------------------------------------------------------
    def set_filter(self, pids: Optional[Iterable[int]] = None, comm: Optional[str] = None,
                   cgroups: Optional[Iterable[str]] = None) -> None:
        self._pids = set(pids) if pids else set()
        self._comm = compile_comm(comm)
        self._cgroups = list(cgroups or ())
        if self.bpf is not None:
            self._configure()
            self._scan_handlers(self._pids)

    def set_storm(self, storm: Optional[tuple]) -> None:
        """The abort storm rule: (K consecutive aborts, each less than T
        seconds after the one before); None: bpf/rseqtop.h's defaults."""
        self._storm = storm
        if self.bpf is not None:
            self._configure()

    def set_emit_events(self, on: bool) -> None:
        self._emit_events = on
        if self.bpf is not None:
            self._configure()

    def _configure(self) -> None:
        self.loader.configure(self._pids, self._cgroups, self._emit_events, self._storm, self._event_kinds)

    def want_mm_cid(self, on: bool) -> None:
        """Ask for threads' mm_cid: front ends ask while they show threads.
        It is recorded for mm_cid_window seconds after each read (see
        Probes.mm_cid for the cost), so the poll after next shows it."""
        self._want_mm_cid = on

    def want_threads(self, mode: str) -> None:
        """Which threads snapshots list: "all", "aborting" (those with
        aborts) or "none". Process totals are exact either way; where the
        kernel sums them (the task iterator, 6.9+), threads not asked for
        cost nothing per poll, so front ends ask for what they show."""
        if mode not in THREAD_MODES:
            raise ValueError(f"threads must be one of {THREAD_MODES}")
        self._threads_mode = mode

    # -- events ---------------------------------------------------------
    def open_events(self, callback: Callable) -> None:
        """callback(event) for each event (an abort, or a kind of event_kinds),
        with event a ctypes rseqtop_event."""
        self.set_emit_events(True)
        self.loader.open_events(callback)

    def poll_events(self, timeout_ms: int = 100) -> None:
        """Wait up to timeout_ms for events, then hand all there are to the
        callback (the kinds sent without a wake-up too)."""
        self.loader.poll_events(timeout_ms)
        if self._event_kinds:
            self.loader.consume_events()

    # -- snapshots ------------------------------------------------------
    def read(self) -> MapRecords:
        """One read of the maps, as plain records."""
        if self.bpf is None:
            raise RuntimeError("collector is not attached")
        # threads with only user-detected aborts have no kernel abort: the
        # kernel's "aborting" selection would leave them out
        mode = self._threads_mode
        self._reader.threads = "all" if mode == "aborting" and self.handlers is not None else mode
        rec = self._reader.read()
        # mm_cid as sampled since the previous read; the next sample starts now
        self.loader.mm_cid(self._want_mm_cid, self.mm_cid_window)
        return rec

    def poll(self) -> Snapshot:
        rec = self.read()
        a = assemble(rec, View(frozenset(self._pids), self._comm), self._last_totals, self._forgotten,
                     self.symbolize, self.handlers.section_start if self.handlers is not None else _no_section)
        self._last_totals = dict(a.last_totals)
        for pid, gen in a.newest.items():
            self._note_generation(pid, gen)
        self._scan_handlers(rec.live_idents())  # processes started since the last poll
        if self.stacks is not None:
            self.stacks.read(self.bpf, {(p.pid, p.gen): p.comm for p in a.processes})
        self.records, self.assembly = rec, a
        return a.snapshot

    def stack_table(self) -> list:
        """--stacks: StackCount of every (process, section, stack) seen since
        attach that the filters show (rseqtop.collect.stacks)."""
        if self.stacks is None:
            return []
        return [s for s in self.stacks.table()
                if (not self._pids or s.pid in self._pids) and (self._comm is None or self._comm.search(s.comm))]

    def reap(self) -> int:
        """Age dead processes out of the maps (those of the latest poll);
        returns how many were dropped."""
        rec, a = self.records, self.assembly
        if rec is None or a is None or self.bpf is None:
            return 0
        gone = self.reaper.due(((p.pid, p.gen) for p in a.processes), rec.live_idents(), dict(a.newest),
                               time.monotonic(),
                               self._exited)
        if not gone:
            return 0
        for p in a.processes:
            if (p.pid, p.gen) in gone:
                self._forgotten = self._forgotten + p.counts
        reaper_mod.delete(self.bpf, gone, rec)
        if self.stacks is not None:
            self.stacks.delete_from(self.bpf, gone)
        for pid, gen in gone:
            self._last_totals.pop((pid, gen), None)
            if self._gens.get(pid) == gen and not os.path.exists(f"/proc/{pid}"):
                self._gens.pop(pid, None)
                self.symbolize.forget(pid)
                if self.handlers is not None:
                    self.handlers.forget(pid)
        self.records = self.assembly = None  # what they list is partly deleted now
        return len(gone)

    def _exited(self, pid: int, gen: int) -> bool:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        g = self.loader.proc_gen(pid)
        return g is not None and g > gen
