"""The collector: the only module that imports bcc.

It generates the BPF program for this kernel, compiles and attaches it,
reads the maps into immutable Snapshots, and detaches. Maps are never
cleared: every count is a total since attach, so that Prometheus counters stay
monotonic and rates are differences of snapshots (rseqtop.rates).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import re
import resource
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Optional

from rseqtop import bpfgen, kernel, taskstorage, tracefs
from rseqtop.bccimport import CFLAGS, import_bcc, prepare_headers
from rseqtop.errors import UserError
from rseqtop.kernel import hot_storage_usable
from rseqtop.snapshot import (
    ABI_NAMES, Counts, MapFill, MembarrierStats, ProcessStats, SelfStats, SiteStats, Snapshot, ThreadStats, cause_name, pairs,
)
from rseqtop.symbols import Symbolizer

K = bpfgen.header_constants()
COUNTER_NAMES = {v: k[len("RSEQTOP_CNT_"):].lower() for k, v in K.items()
                 if k.startswith("RSEQTOP_CNT_") and k != "RSEQTOP_NCOUNTERS"}
MAP_LIMITS = {  # map -> (size define, dropped counter)
    "threads": ("RSEQTOP_MAX_THREADS", "threads_dropped"),
    "dead_threads": ("RSEQTOP_MAX_DEAD_THREADS", None),
    "procs": ("RSEQTOP_MAX_PROCS", "procs_dropped"),
    "sites": ("RSEQTOP_MAX_SITES", "sites_dropped"),
    "offsets": ("RSEQTOP_MAX_OFFSETS", "offsets_dropped"),
    "pcounts": ("RSEQTOP_MAX_PCOUNTS", "pcounts_dropped"),
}


def errno_name(code: int) -> str:
    return errno_mod.errorcode.get(code, f"E{code}")


def membarrier_cmd_name(cmd: int) -> str:
    return kernel.MEMBARRIER_CMDS.get(cmd, f"CMD_{cmd}")


def _comm(raw) -> str:
    data = bytes(raw).split(b"\0", 1)[0]
    return data.decode("utf-8", errors="backslashreplace")


def _counts(c) -> Counts:
    return Counts(c.aborts, c.updates, c.preempts, c.migrations, c.signals, c.membarrier_ipis,
                  pairs({cause_name(i): c.causes[i] for i in range(K["RSEQTOP_NCODES"]) if c.causes[i]}))


def check_privileges() -> None:
    missing = kernel.missing_caps(kernel.effective_caps(), kernel.kernel_version())
    if missing:
        raise UserError(f"not privileged: missing {', '.join(missing)}; run as root (sudo) or see 'rseqtop doctor'")


class Collector:
    """Attach rseqtop's probes; poll() returns a Snapshot.

    pids: only these processes (tgids) are tracked; cgroups: only tasks in
    these cgroup v2 directories; comm: a regular expression applied to what
    snapshots show. All can change at run time with set_filter().
    """

    def __init__(self, pids: Optional[Iterable[int]] = None, comm: Optional[str] = None,
                 cgroups: Optional[Iterable[str]] = None, sizes: Optional[dict] = None,
                 emit_events: bool = False, tracefs_root: Optional[Path] = None,
                 symbolizer: Optional[Symbolizer] = None, keep_dead_seconds: float = 60.0,
                 keep_dead_max: int = 4096, syscalls: bool = False):
        self._pids = set(pids) if pids else set()
        self._comm = self._compile_comm(comm)
        self._cgroups = list(cgroups or ())
        self._sizes = sizes or {}
        self._emit_events = emit_events
        self._syscalls = syscalls
        self._want_mm_cid = False
        self._mm_cid_attached = False
        self._tracefs_root = tracefs_root
        self.symbolize = symbolizer or Symbolizer()
        self.bpf = None
        self.plan: Optional[bpfgen.Plan] = None
        self.era = kernel.rseq_era(kernel.kernel_version())
        self._last_totals: dict[tuple, Counts] = {}  # (pid, gen) -> last totals shown
        self._gens: dict[int, int] = {}  # pid -> newest generation seen
        self._dead_since: dict[tuple, float] = {}  # (pid, gen) -> when it was first seen dead
        self._forgotten = Counts()  # processes dropped from the maps, for the system totals
        self.keep_dead_seconds = keep_dead_seconds
        self.keep_dead_max = keep_dead_max
        self._nodes = kernel.cpu_nodes()
        self._last_hot: dict[int, tuple] = {}  # tid -> (updates, preempts, cpu) last read from task storage
        self._seen_hot: dict[int, tuple] = {}

    # -- set-up ---------------------------------------------------------
    @staticmethod
    def _compile_comm(comm: Optional[str]):
        if not comm:
            return None
        try:
            return re.compile(comm)
        except re.error as err:
            raise UserError(f"bad --comm regular expression {comm!r}: {err}", exit_code=2) from None

    def generate(self) -> str:
        """The BPF program for this kernel (what --ebpf prints)."""
        root = self._tracefs_root or tracefs.ensure_root()
        fs = tracefs.TraceFS(root)
        self.plan = bpfgen.plan(fs.format, kernel.kallsyms_address("ipi_rseq"), self._sizes,
                                kernel.kernel_version(), syscalls=self._syscalls, hot_storage=hot_storage_usable())
        upd = fs.format("rseq", "rseq_update")
        self.era = kernel.rseq_era(kernel.kernel_version(),
                                   tuple(f.name for f in upd.fields) if upd else ())
        return bpfgen.source(self.plan)

    def attach(self) -> "Collector":
        check_privileges()
        bcc = import_bcc()
        text = self.generate()
        prepare_headers()
        try:
            self.bpf = bcc.BPF(text=text.encode(), cflags=CFLAGS)
        except Exception as err:
            raise UserError(f"the BPF program failed to compile or load ({_first_line(err)}); "
                            f"see 'rseqtop doctor'") from None
        try:
            for system, event in self.plan.attach:
                if event in self.plan.raw:
                    self.bpf.attach_raw_tracepoint(tp=event, fn_name=f"on_{event}")
                else:
                    self.bpf.attach_tracepoint(tp=f"{system}:{event}", fn_name=f"on_{event}")
        except Exception as err:
            self.close()
            raise UserError(f"attaching to tracepoints failed ({_first_line(err)}); see 'rseqtop doctor'") from None
        if self.plan.hot_storage:
            self._hot_fd = bcc.lib.bpf_table_fd(self.bpf.module, b"hot")
            self._hot_value = dict(self.bpf["threads"].Leaf._fields_)["h"]()
        self._apply_filter()
        self._start_site_watcher()
        return self

    def _start_site_watcher(self) -> None:
        """Symbolize each new critical section as soon as the kernel reports
        it, while its process still lives (maps are unreadable after exit)."""
        key_type = self.bpf["sites"].Key

        def on_new_site(cpu, data, size):
            key = ctypes.cast(data, ctypes.POINTER(key_type)).contents
            if self._gens.get(key.tgid, key.gen) < key.gen:
                self.symbolize.forget(key.tgid)  # a new process with a recycled pid
                self._gens[key.tgid] = key.gen
            self.symbolize(key.tgid, key.start_ip)

        self.bpf["new_sites"].open_perf_buffer(on_new_site, page_cnt=8)
        self.resume_watcher()

    def pause_watcher(self) -> None:
        """Stop the new-site thread (for example while the caller changes its
        credentials: capabilities are per thread, and a thread started later
        inherits the caller's)."""
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            self._stop_watcher.set()
            watcher.join(timeout=5)
            self._watcher = None

    def resume_watcher(self) -> None:
        if getattr(self, "_watcher", None) is not None or self.bpf is None:
            return
        stop = self._stop_watcher = threading.Event()
        bpf = self.bpf

        def loop():
            while not stop.is_set():
                bpf.perf_buffer_poll(100)

        self._watcher = threading.Thread(target=loop, name="rseqtop-symbolizer", daemon=True)
        self._watcher.start()

    def __enter__(self) -> "Collector":
        return self.attach() if self.bpf is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.pause_watcher()
        self._mm_cid_attached = False
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            finally:
                self.bpf = None

    @property
    def probes(self) -> tuple:
        return tuple(f"{s}:{e}" for s, e in self.plan.attach) if self.plan else ()

    # -- filters --------------------------------------------------------
    def set_filter(self, pids: Optional[Iterable[int]] = None, comm: Optional[str] = None,
                   cgroups: Optional[Iterable[str]] = None) -> None:
        self._pids = set(pids) if pids else set()
        self._comm = self._compile_comm(comm)
        self._cgroups = list(cgroups or ())
        if self.bpf is not None:
            self._apply_filter()

    def _apply_filter(self) -> None:
        b = self.bpf
        watch = b["watch_pids"]
        watch.clear()
        for pid in self._pids:
            watch[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        cg = b["watch_cgroups"]
        cg.clear()
        for path in self._cgroups:
            try:
                ino = os.stat(path).st_ino
            except OSError as err:
                raise UserError(f"cgroup {path}: {err.strerror}; give a cgroup v2 directory "
                                f"such as /sys/fs/cgroup/system.slice/foo.service", exit_code=2) from None
            cg[ctypes.c_uint64(ino)] = ctypes.c_uint8(1)
        cfg = b["config"]
        value = cfg[0]
        value.filter = (K["RSEQTOP_FILTER_PIDS"] if self._pids else 0) | \
            (K["RSEQTOP_FILTER_CGROUPS"] if self._cgroups else 0)
        value.emit_events = 1 if self._emit_events else 0
        # Threads the previous filter excluded are checked again.
        value.filter_gen = value.filter_gen % 0xFFFFFFFF + 1
        cfg[0] = value

    def set_emit_events(self, on: bool) -> None:
        self._emit_events = on
        if self.bpf is not None:
            self._apply_filter()

    def want_mm_cid(self, on: bool) -> None:
        """Ask for threads' mm_cid from the next poll on. Where rseq_update is
        a raw tracepoint, mm_cid is only in the regular tracepoint's record,
        whose program costs as much again per context switch: front ends ask
        while they show threads. Elsewhere mm_cid comes with every update."""
        self._want_mm_cid = on

    def _sync_mm_cid(self) -> None:
        if not self.plan.mm_cid_on_demand or self._want_mm_cid == self._mm_cid_attached:
            return
        if self._want_mm_cid:
            self.bpf.attach_tracepoint(tp="rseq:rseq_update", fn_name="on_rseq_update_ids")
        else:
            self.bpf.detach_tracepoint(tp="rseq:rseq_update")  # only this program is a regular one there
        self._mm_cid_attached = self._want_mm_cid

    # -- events ---------------------------------------------------------
    def open_events(self, callback: Callable) -> None:
        """callback(event) for each abort, with event a ctypes rseqtop_event."""
        self.set_emit_events(True)
        table = self.bpf["events"]
        ev_type = table.event

        def handle(ctx, data, size):
            callback(ev_type(data))

        table.open_ring_buffer(handle)

    def poll_events(self, timeout_ms: int = 100) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    # -- snapshots ------------------------------------------------------
    def poll(self) -> Snapshot:
        if self.bpf is None:
            raise RuntimeError("collector is not attached")
        b = self.bpf
        self._sync_mm_cid()
        t0 = time.monotonic()
        counters = [sum(v) for v in b["counters"].values()]
        named = {COUNTER_NAMES[i]: n for i, n in enumerate(counters) if i in COUNTER_NAMES}
        # Read procs before threads: a thread that exits in between is then
        # missing from both for one poll (a dip that the monotonic guard
        # below hides) instead of being counted twice.
        procs = {(k.tgid, k.gen): v for k, v in b["procs"].items()}
        # tgid 0: a record created this instant, not filled in yet
        live = {k.value: v for k, v in b["threads"].items() if v.tgid}
        dead = {k.value: v for k, v in b["dead_threads"].items() if k.value not in live}
        pc_rows = [((k.tgid, k.gen), k.kind, k.cmd, k.code, v.value) for k, v in b["pcounts"].items()]
        site_rows = list(b["sites"].items())
        offset_rows = [((k.tgid, k.gen), k.start_ip, k.offset, v.value) for k, v in b["offsets"].items()]
        cpu_aborts = tuple(b["cpu_aborts"][0]) if len(counters) else ()
        poll_seconds = time.monotonic() - t0

        self._seen_hot = {}
        threads = [self._thread(tid, v, True) for tid, v in live.items()] + \
                  [self._thread(tid, v, False) for tid, v in dead.items()]
        self._last_hot = self._seen_hot
        everyone = self._processes(procs, threads, pc_rows)
        # System-wide totals, before the display filter; processes already
        # dropped from the maps still count.
        totals = self._forgotten
        for p in everyone:
            totals = totals + p.counts
        # A recycled pid shows its newest process; older ones are over.
        newest: dict[int, ProcessStats] = {}
        for p in everyone:
            if p.pid not in newest or p.gen > newest[p.pid].gen:
                newest[p.pid] = p
        for pid, p in newest.items():
            if self._gens.get(pid, p.gen) != p.gen:
                self.symbolize.forget(pid)  # names of the previous process with this pid
            self._gens[pid] = p.gen
        processes = [p for p in newest.values() if self._shown(p)]
        earlier = [p for p in everyone if p is not newest[p.pid] and self._shown(p)]
        keep = {(p.pid, p.gen) for p in processes}
        shown_threads = [t for t in threads if (t.pid, t.gen) in keep]
        sites = self._sites(site_rows, offset_rows, keep)
        run_ns, run_cnt, misses = self._bpf_stats()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        used = {"threads": len(live), "dead_threads": len(dead), "procs": len(procs), "sites": len(site_rows),
                "offsets": len(offset_rows), "pcounts": len(pc_rows)}
        maps = tuple(MapFill(name, used[name], int(self.plan.defines[size]), named.get(drop, 0) if drop else 0)
                     for name, (size, drop) in MAP_LIMITS.items())
        stats = SelfStats(self.probes, self.plan.missing, self.plan.unavailable_causes, named["events_sent"],
                          named["events_lost"], maps, run_ns, run_cnt, ru.ru_utime + ru.ru_stime, poll_seconds,
                          self._syscalls, misses)
        snap = Snapshot(time.monotonic(), time.time(), self.era.name, self.era.description, totals,
                        tuple(sorted(processes, key=lambda p: p.pid)),
                        tuple(sorted(shown_threads, key=lambda t: (t.pid, t.tid))),
                        tuple(sorted(sites, key=lambda s: (s.pid, s.start_ip))),
                        cpu_aborts, stats, tuple(sorted(earlier, key=lambda p: (p.pid, p.gen))))
        self._collect_dead(everyone, newest, threads, site_rows, offset_rows, pc_rows, dead)
        return snap

    # -- dead processes -------------------------------------------------
    def _collect_dead(self, everyone, newest, threads, site_rows, offset_rows, pc_rows, dead) -> None:
        """Drop dead processes from the maps KEEP_DEAD_SECONDS after they
        died, sooner (oldest first) when more than KEEP_DEAD_MAX are dead, so
        that process churn never fills the maps. Snapshots showed their final
        totals meanwhile; the exporter keeps them for its series TTL."""
        now = time.monotonic()
        live = {(t.pid, t.gen) for t in threads if t.alive}
        present = set()
        for p in everyone:
            ident = (p.pid, p.gen)
            present.add(ident)
            if ident in live:
                self._dead_since.pop(ident, None)
            elif ident not in self._dead_since and self._is_dead(ident, newest):
                self._dead_since[ident] = now
        for ident in [i for i in self._dead_since if i not in present]:
            del self._dead_since[ident]
        by_age = sorted(self._dead_since.items(), key=lambda kv: kv[1])
        excess = max(0, len(by_age) - self.keep_dead_max)
        gone = {i for n, (i, t) in enumerate(by_age) if n < excess or now - t > self.keep_dead_seconds}
        if gone:
            self._forget(gone, everyone, site_rows, offset_rows, pc_rows, dead)

    def _is_dead(self, ident: tuple, newest: dict) -> bool:
        pid, gen = ident
        if newest[pid].gen > gen:
            return True
        if not os.path.exists(f"/proc/{pid}"):
            return True
        g = self.bpf["proc_gen"].get(ctypes.c_uint32(pid))
        return g is not None and g.value > gen

    def _forget(self, gone: set, everyone, site_rows, offset_rows, pc_rows, dead) -> None:
        b = self.bpf
        for p in everyone:
            if (p.pid, p.gen) in gone:
                self._forgotten = self._forgotten + p.counts
        deletions = (
            (b["procs"], [b["procs"].Key(pid, gen) for pid, gen in gone]),
            (b["sites"], [k for k, _ in site_rows if (k.tgid, k.gen) in gone]),
            (b["offsets"], [b["offsets"].Key(i[0], i[1], start, off) for i, start, off, _ in offset_rows
                            if i in gone]),
            (b["pcounts"], [b["pcounts"].Key(i[0], kind, cmd, code, i[1]) for i, kind, cmd, code, _ in pc_rows
                            if i in gone]),
            (b["dead_threads"], [ctypes.c_uint32(tid) for tid, v in dead.items() if (v.tgid, v.gen) in gone]),
        )
        for table, keys in deletions:
            for key in keys:
                try:
                    del table[key]
                except KeyError:
                    pass
        for ident in gone:
            self._dead_since.pop(ident, None)
            self._last_totals.pop(ident, None)
            pid = ident[0]
            if self._gens.get(pid) == ident[1] and not os.path.exists(f"/proc/{pid}"):
                self._gens.pop(pid, None)
                self.symbolize.forget(pid)

    def _thread(self, tid: int, v, alive: bool) -> ThreadStats:
        counts = _counts(v.c)
        cpu = v.h.cpu_id
        if alive:
            # Live threads' update and preemption counts are in their hot
            # state (exited ones' were copied into v.c at exit).
            hot = (v.h.updates, v.h.preempts, cpu)
            if self.plan.hot_storage:
                h = taskstorage.lookup(self._hot_fd, tid, self._hot_value)
                # gone between the two reads: its last values (exit copies the final ones)
                hot = (h.updates, h.preempts, h.cpu_id) if h else self._last_hot.get(tid, (0, 0, -1))
                self._seen_hot[tid] = hot
            counts = replace(counts, updates=hot[0], preempts=hot[1])
            cpu = hot[2]
        return ThreadStats(v.tgid, tid, _comm(v.comm), counts, cpu, self._nodes.get(cpu, 0) if cpu >= 0 else -1,
                           v.mm_cid, v.last_signal, alive, v.gen)

    def _processes(self, procs: dict, threads: list, pc_rows: list) -> list:
        """Every process with rseq activity, unfiltered, by (pid, gen): totals
        are exited threads' (procs) plus live threads' counts."""
        by_proc: dict[tuple, list] = {}
        for t in threads:
            by_proc.setdefault((t.pid, t.gen), []).append(t)
        pcs: dict[tuple, list] = {}
        for row in pc_rows:
            pcs.setdefault(row[0], []).append(row[1:])
        out = []
        for ident in set(by_proc) | set(procs) | set(pcs):
            pid, gen = ident
            ts = by_proc.get(ident, [])
            live = [t for t in ts if t.alive]
            p = procs.get(ident)
            counts = _counts(p.retired) if p else Counts()
            for t in live:
                counts = counts + t.counts
            counts = self._monotonic(ident, counts)
            reg, unreg, reg_err, membarrier, by_abi = _process_calls(pcs.get(ident, []))
            out.append(ProcessStats(pid, self._process_comm(pid, ts, p, bool(live)), counts, len(live),
                                    int(p.exited_threads) if p else 0, reg, unreg, reg_err, membarrier,
                                    alive=bool(live), gen=gen, registrations_by_abi=by_abi))
        return out

    def _shown(self, p: ProcessStats) -> bool:
        return (not self._pids or p.pid in self._pids) and (not self._comm or bool(self._comm.search(p.comm)))

    def _monotonic(self, ident: tuple, counts: Counts) -> Counts:
        """A thread that exits between the reads of procs and threads is in
        neither for one poll; show the previous totals instead of a dip."""
        prev = self._last_totals.get(ident)
        if prev is not None and _dipped(prev, counts):
            return prev
        self._last_totals[ident] = counts
        return counts

    @staticmethod
    def _process_comm(pid: int, threads: list, proc, alive: bool) -> str:
        """A process's name is its main thread's comm: read live from /proc
        (threads rename themselves after the kernel first saw them), else
        the name its main thread died with."""
        if alive:
            try:
                with open(f"/proc/{pid}/comm", "rb") as f:
                    return f.read().rstrip(b"\n").decode("utf-8", errors="backslashreplace")
            except OSError:
                pass
        name = _comm(proc.comm) if proc is not None else ""  # bcc gives char[] as bytes, b"" when unset
        if name:
            return name
        for t in threads:
            if t.tid == pid:
                return t.comm
        return threads[0].comm if threads else ""

    def _sites(self, site_rows: list, offset_rows: list, keep: set) -> list:
        offs: dict[tuple, dict] = {}
        for ident, start_ip, offset, n in offset_rows:
            offs.setdefault((ident, start_ip), {})[offset] = n
        out = []
        for k, v in site_rows:
            ident = (k.tgid, k.gen)
            if ident not in keep:
                continue
            causes = pairs({cause_name(i): v.causes[i] for i in range(K["RSEQTOP_NCODES"]) if v.causes[i]})
            out.append(SiteStats(k.tgid, k.start_ip, self.symbolize(k.tgid, k.start_ip), v.aborts, causes,
                                 v.abort_ip, v.post_commit_offset, pairs(offs.get((ident, k.start_ip), {}))))
        return out

    def _bpf_stats(self) -> tuple:
        """(run ns, runs, missed runs) of the programs: the first two only
        with kernel.bpf_stats_enabled, misses always (runs the kernel skipped
        because the program was already running on that CPU: events rseqtop
        did not see, never hidden)."""
        stats = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1"
        run_ns = run_cnt = misses = 0
        for fn in self.bpf.funcs.values():
            try:
                info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
            except OSError:
                continue
            fields = dict(re.findall(r"^(run_time_ns|run_cnt|recursion_misses):\s*(\d+)", info, re.M))
            run_ns += int(fields.get("run_time_ns", 0))
            run_cnt += int(fields.get("run_cnt", 0))
            misses += int(fields.get("recursion_misses", 0))
        return (run_ns, run_cnt, misses) if stats else (None, None, misses)


def _dipped(prev: Counts, cur: Counts) -> bool:
    fields = ("aborts", "updates", "preempts", "migrations", "signals", "membarrier_ipis")
    if any(getattr(cur, f) < getattr(prev, f) for f in fields):
        return True
    now = dict(cur.causes)
    return any(now.get(k, 0) < v for k, v in prev.causes)


def _process_calls(rows: list) -> tuple:
    """(registrations, unregistrations, registration errors, membarrier stats,
    registrations by ABI) from a process's keyed counters."""
    reg = unreg = 0
    by_abi: dict = {}
    reg_err: dict = {}
    mb: dict[int, dict] = {}
    for kind, cmd, code, n in rows:
        if kind in (K["RSEQTOP_PC_RSEQ_REG"], K["RSEQTOP_PC_RSEQ_UNREG"]):
            if code:
                reg_err[errno_name(code)] = reg_err.get(errno_name(code), 0) + n
            elif kind == K["RSEQTOP_PC_RSEQ_REG"]:
                reg += n
                abi = ABI_NAMES.get(cmd, f"abi{cmd}")
                by_abi[abi] = by_abi.get(abi, 0) + n
            else:
                unreg += n
            continue
        m = mb.setdefault(cmd, {"calls": 0, "errors": {}, "lat": {}})
        if kind == K["RSEQTOP_PC_MB_CALL"]:
            m["calls"] += n
        elif kind == K["RSEQTOP_PC_MB_ERROR"]:
            m["errors"][errno_name(code)] = n
        elif kind == K["RSEQTOP_PC_MB_LATENCY"]:
            m["lat"][code] = n
    membarrier = tuple(MembarrierStats(membarrier_cmd_name(cmd), m["calls"], pairs(m["errors"]), pairs(m["lat"]))
                       for cmd, m in sorted(mb.items()))
    return reg, unreg, pairs(reg_err), membarrier, pairs(by_abi)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
