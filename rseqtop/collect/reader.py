"""Reading the kernel's maps into plain records (rseqtop.collect.records).

The only step of a poll that touches the maps; it converts every ctypes
value on the way, so what follows is plain Python."""

from __future__ import annotations

import re
import resource
import time
from pathlib import Path

from rseqtop.collect.records import CallRecord, MapRecords, OffsetRecord, ProcRecord, SiteRecord, ThreadRecord
from rseqtop.kernel import facts as kernel
from rseqtop.kernel import taskstorage
from rseqtop.model.snapshot import Counts, cause_name, pairs

COUNTER_PREFIX = "RSEQTOP_CNT_"


def comm_text(raw) -> str:
    data = bytes(raw).split(b"\0", 1)[0]
    return data.decode("utf-8", errors="backslashreplace")


def _causes(values, ncodes: int) -> tuple:
    return pairs({cause_name(i): values[i] for i in range(ncodes) if values[i]})


class MapReader:
    """Reads one attached program's maps (see rseqtop.collect.loader.Probes)."""

    def __init__(self, probes):
        self.probes = probes
        k = probes.constants
        self._ncodes = k["RSEQTOP_NCODES"]
        self._counter_names = {v: name[len(COUNTER_PREFIX):].lower() for name, v in k.items()
                               if name.startswith(COUNTER_PREFIX) and name != "RSEQTOP_NCOUNTERS"}
        self._nodes = kernel.cpu_nodes()
        # tid -> (updates, preempts, cpu) last read from task storage: a
        # thread gone between the map read and its storage read keeps them
        self._last_hot: dict[int, tuple] = {}

    def _counts(self, c) -> Counts:
        return Counts(c.aborts, c.updates, c.preempts, c.migrations, c.signals, c.membarrier_ipis,
                      _causes(c.causes, self._ncodes))

    def read(self) -> MapRecords:
        b = self.probes.bpf
        t0 = time.monotonic()
        counters = [sum(v) for v in b["counters"].values()]
        named = {self._counter_names[i]: n for i, n in enumerate(counters) if i in self._counter_names}
        # Read procs before threads: a thread that exits in between is then
        # missing from both for one poll (a dip that the assembly's monotonic
        # guard hides) instead of being counted twice.
        procs = tuple(ProcRecord(k.tgid, k.gen, comm_text(v.comm), self._counts(v.retired), int(v.exited_threads))
                      for k, v in b["procs"].items())
        # tgid 0: a record created this instant, not filled in yet
        live = {k.value: v for k, v in b["threads"].items() if v.tgid}
        dead = {k.value: v for k, v in b["dead_threads"].items() if k.value not in live}
        calls = tuple(CallRecord(k.tgid, k.gen, k.kind, k.cmd, k.code, v.value) for k, v in b["pcounts"].items())
        sites = tuple(SiteRecord(k.tgid, k.gen, k.start_ip, v.aborts, _causes(v.causes, self._ncodes), v.abort_ip,
                                 v.post_commit_offset) for k, v in b["sites"].items())
        offsets = tuple(OffsetRecord(k.tgid, k.gen, k.start_ip, k.offset, v.value) for k, v in b["offsets"].items())
        cpu_aborts = tuple(b["cpu_aborts"][0]) if len(counters) else ()
        threads = self._threads(live, dead)
        read_seconds = time.monotonic() - t0
        live_pids = {t.pid for t in threads if t.alive}
        run_ns, run_cnt, misses = self._bpf_stats()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return MapRecords(self.probes.setup, time.monotonic(), time.time(), read_seconds, pairs(named), procs,
                          threads, calls, sites, offsets, cpu_aborts,
                          tuple((pid, _live_comm(pid)) for pid in sorted(live_pids)),
                          run_ns, run_cnt, misses, ru.ru_utime + ru.ru_stime)

    def _threads(self, live: dict, dead: dict) -> tuple:
        seen_hot = {}
        out = []
        for tid, v in live.items():
            # Live threads' update and preemption counts are in their hot
            # state (exited ones' were copied into v.c at exit).
            hot = (v.h.updates, v.h.preempts, v.h.cpu_id)
            if self.probes.hot_fd is not None:
                h = taskstorage.lookup(self.probes.hot_fd, tid, self.probes.hot_value)
                # gone between the two reads: its last values (exit copies the final ones)
                hot = (h.updates, h.preempts, h.cpu_id) if h else self._last_hot.get(tid, (0, 0, -1))
                seen_hot[tid] = hot
            c = self._counts(v.c)
            counts = Counts(c.aborts, hot[0], hot[1], c.migrations, c.signals, c.membarrier_ipis, c.causes)
            out.append(self._thread(tid, v, counts, hot[2], True))
        self._last_hot = seen_hot
        for tid, v in dead.items():
            out.append(self._thread(tid, v, self._counts(v.c), v.h.cpu_id, False))
        return tuple(out)

    def _thread(self, tid: int, v, counts: Counts, cpu: int, alive: bool) -> ThreadRecord:
        return ThreadRecord(v.tgid, tid, v.gen, comm_text(v.comm), counts, cpu,
                            self._nodes.get(cpu, 0) if cpu >= 0 else -1, v.mm_cid, v.last_signal, alive)

    def _bpf_stats(self) -> tuple:
        """(run ns, runs, missed runs) of the programs: the first two only
        with kernel.bpf_stats_enabled, misses always (runs the kernel skipped
        because the program was already running on that CPU: events rseqtop
        did not see, never hidden)."""
        stats = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1"
        run_ns = run_cnt = misses = 0
        for fd in self.probes.program_fds():
            try:
                info = Path(f"/proc/self/fdinfo/{fd}").read_text()
            except OSError:
                continue
            fields = dict(re.findall(r"^(run_time_ns|run_cnt|recursion_misses):\s*(\d+)", info, re.M))
            run_ns += int(fields.get("run_time_ns", 0))
            run_cnt += int(fields.get("run_cnt", 0))
            misses += int(fields.get("recursion_misses", 0))
        return (run_ns, run_cnt, misses) if stats else (None, None, misses)


def _live_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", errors="backslashreplace")
    except OSError:
        return ""

