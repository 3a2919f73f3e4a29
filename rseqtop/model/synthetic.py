"""A synthetic snapshot source (rseqtop.source.SnapshotSource): deterministic
fake data, for front-end tests, snapshot tests and front-end benchmarks
(benchmarks/tui_cpu.py, scrape_latency.py), where a real collector would need
root and give numbers that change from run to run.

Each poll advances a fake clock by `step` seconds and every counter by a
fixed per-entity rate, so rates are known exactly.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from rseqtop.kernel import bpfgen
from rseqtop.model.snapshot import (
    COUNT_FIELDS, Counts, MapFill, MembarrierStats, Preempter, ProcessStats, SelfStats, SiteStats, Snapshot,
    ThreadStats, merge_preempters, pairs, sum_counts,
)

PROBES = tuple(f"{system}:{event}" for system, event, *_ in bpfgen.PROBES)
OPS = ("rseq_op_counter", "rseq_op_spinlock_lock", "rseq_op_push", "rseq_op_pop", "rseq_op_delay")


class SyntheticSource:
    def __init__(self, processes: int = 3, threads_per_process: int = 4, step: float = 1.0,
                 comms: Optional[list] = None, cpus: int = 2, unavailable_causes: tuple = ()):
        self.nproc = processes
        self.nthreads = threads_per_process
        self.step = step
        self.comms = comms
        self.cpus = cpus
        self.polls = 0
        self.pids: set = set()
        self.comm: Optional[re.Pattern] = None
        self.unavailable_causes = unavailable_causes
        self.probes = PROBES
        self.closed = False
        self._shapes: dict = {}  # i -> _shape(i)

    # The per-second rates of thread j of process i (pid 1000+i).
    @staticmethod
    def thread_rate(i: int, j: int) -> Counts:
        aborts = (i % 7 + 1) * (j + 1) * 10
        return Counts(aborts=aborts, updates=aborts * 20, preempts=aborts * 2, migrations=i % 3 + j,
                      signals=(i % 2) * 5, membarrier_ipis=(i % 4 == 0) * 3,
                      causes=pairs({"preempt": aborts - 5 if aborts > 5 else aborts,
                                    "signal": 5 if aborts > 5 else 0}))

    @staticmethod
    def storms(i: int, k: int, elapsed: float) -> int:
        """Abort storms of section k of process i: one a second in the first
        section of every other process."""
        return int(elapsed) if k == 0 and i % 2 == 0 else 0

    @staticmethod
    def preempters(i: int, aborts: int) -> tuple:
        """A section's preempters: a process's antagonist 60%, a kernel
        worker 30%, the rest not seen."""
        hog, kworker = aborts * 6 // 10, aborts * 3 // 10
        entries = (Preempter(2000 + i, 2000 + i, f"hog{i}", hog, False),
                   Preempter(50, 50, "kworker/1:2", kworker, True),
                   Preempter(None, None, "", aborts - hog - kworker))
        return tuple(e for e in entries if e.count)


    def _shape(self, i: int) -> tuple:
        """What never changes between polls of process i: its pid and comm,
        its threads' ids and per-second rates, its sections' addresses and
        names (the real collector keeps the like: comms, symbols, records
        whose bytes did not change). Polls only scale the rates."""
        shape = self._shapes.get(i)
        if shape is None:
            pid, comm = 1000 + i, self.comm_of(i)
            threads = []
            for j in range(self.nthreads):
                c = self.thread_rate(i, j)
                threads.append((pid + 100000 * (j + 1) if j else pid, (i + j) % self.cpus, j,
                                tuple(getattr(c, f) for f in COUNT_FIELDS), c.causes))
            sites = tuple((k, 0x401000 + 0x100 * k, f"{comm}!{op}+0x0")
                          for k, op in enumerate(OPS[: 1 + i % len(OPS)]))
            shape = self._shapes[i] = (pid, comm, tuple(threads), sites)
        return shape

    def comm_of(self, i: int) -> str:
        if self.comms:
            return self.comms[i % len(self.comms)]
        return ("tcmalloc-svc", "envoy", "rseq-workload", "java", "postgres")[i % 5] + ("" if i < 5 else str(i))

    def set_filter(self, pids: Optional[Iterable[int]] = None, comm: Optional[str] = None,
                   cgroups: Optional[Iterable[str]] = None) -> None:
        self.pids = set(pids or ())
        self.comm = re.compile(comm) if comm else None

    def poll(self) -> Snapshot:
        self.polls += 1
        elapsed = self.polls * self.step
        procs, threads, sites = [], [], []
        for i in range(self.nproc):
            pid, comm, thread_shapes, site_shapes = self._shape(i)
            if (self.pids and pid not in self.pids) or (self.comm and not self.comm.search(comm)):
                continue
            own = [Counts(*[int(v * elapsed) for v in scalars],
                          causes=tuple([(name, n) for name, rate in causes if (n := int(rate * elapsed))]))
                   for _, _, _, scalars, causes in thread_shapes]
            pc = sum_counts(own)
            threads += [ThreadStats(pid, tid, comm, c, cpu, 0, mm_cid)
                        for (tid, cpu, mm_cid, _, _), c in zip(thread_shapes, own)]
            own_sites = []
            for k, start, symbol in site_shapes:
                share = pc.aborts // (k + 2)
                half = share // 2
                own_sites.append(SiteStats(pid, start, symbol, share, (("preempt", share),) if share else (),
                                           start + 0x40, 0x20,
                                           tuple([kv for kv in ((0x10, half), (0x18, share - half)) if kv[1]]),
                                           storms=self.storms(i, k, elapsed), preempters=self.preempters(i, share)))
            sites += own_sites
            mb = (MembarrierStats("PRIVATE_EXPEDITED_RSEQ", int(10 * elapsed), pairs({"EPERM": int(10 * elapsed)}),
                                  pairs({12: int(10 * elapsed)})),) if i % 4 == 0 else ()
            procs.append(ProcessStats(pid, comm, pc, self.nthreads, 0, self.nthreads, 0, (), mb,
                                      registrations_by_abi=pairs({"legacy": self.nthreads}),
                                      storms=sum(st.storms for st in own_sites),
                                      preempters=merge_preempters(st.preempters for st in own_sites)))
        total = sum_counts(p.counts for p in procs)
        stats = SelfStats(probes_attached=self.probes, unavailable_causes=self.unavailable_causes,
                          maps=(MapFill("threads", len(threads), 32768), MapFill("sites", len(sites), 4096)))
        return Snapshot(monotonic=elapsed, wall=1_700_000_000.0 + elapsed, era="classic",
                        era_description="up to 6.18 (synthetic)", totals=total, processes=tuple(procs),
                        threads=tuple(threads), sites=tuple(sites),
                        cpu_aborts=tuple(int(total.aborts * (c + 1) / 3) for c in range(self.cpus)),
                        self_stats=stats)

    def attach(self) -> "SyntheticSource":
        return self

    def reap(self) -> int:
        return 0  # nothing dies here

    def want_mm_cid(self, on: bool) -> None:
        pass  # always there

    def want_threads(self, mode: str) -> None:
        pass  # always all: front ends filter what they show

    def close(self) -> None:
        self.closed = True
