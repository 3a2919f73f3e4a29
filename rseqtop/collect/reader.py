"""Reading the kernel's maps into plain records (rseqtop.collect.records).

The only step of a poll that touches the maps. Hash maps are read in
batches as raw bytes; a thread or process whose bytes (and hot state) did
not change since the previous poll keeps its record, so a poll of ten
thousand mostly idle threads converts only the few that ran."""

from __future__ import annotations

import ctypes
import resource
import struct
import time
from pathlib import Path

from rseqtop.collect.batch import BatchTable
from rseqtop.collect.records import (
    CallRecord, HandlerRecord, LiveRecord, MapRecords, OffsetRecord, PreempterRecord, ProcRecord, SiteRecord,
)
from rseqtop.collect.slots import PROC_KEY, SlotTable
from rseqtop.kernel import facts as kernel
from rseqtop.kernel import bpfgen, bpfsys, linux
from rseqtop.kernel import taskstorage
from rseqtop.kernel.kthread import KthreadCache
from rseqtop.model.snapshot import COUNT_FIELDS, Counts, ThreadStats, cause_name, pairs, sum_counts

COUNTER_PREFIX = "RSEQTOP_CNT_"
HOT_OUT = struct.Struct("=IiQQ")  # struct rseqtop_hot_out: tid, cpu_id, updates, preempts
# Collector.want_threads: RSEQTOP_ITER_THREADS_<MODE> of bpf/rseqtop.h
THREAD_MODES = ("none", "aborting", "all")
# More live threads with aborts than this: one pass of the task iterator
# reads them, not a lookup and a pidfd each. Measured in poll_scale.py: ~7 us
# a thread read one by one, a pass ~2 us a task on the machine (10,000
# idle threads): one by one costs less up to ~2,800 such threads among
# 10,000 tasks, and the limit stays below that.
MAX_ABORTERS_ONE_BY_ONE = 2000


def comm_text(raw) -> str:
    data = bytes(raw).split(b"\0", 1)[0]
    return data.decode("utf-8", errors="backslashreplace")


def cause_pairs(values, names: tuple) -> tuple:
    """A record's cause slots (aborts by cause code) as (cause name, aborts)
    pairs; names[code] is the code's name (rseqtop.model.snapshot.cause_name)."""
    if not any(values):
        return ()
    return pairs({names[i]: n for i, n in enumerate(values) if n})


def iterator_threads(data: bytes, record_size: int) -> tuple:
    """The threads the task iterator wrote: ([(tid bytes, struct
    rseqtop_thread bytes)], {tid: (updates, preempts, cpu)})."""
    step = HOT_OUT.size + record_size
    raw, hot = [], {}
    for off in range(0, len(data) - step + 1, step):
        tid, cpu, updates, preempts = HOT_OUT.unpack_from(data, off)
        raw.append((tid.to_bytes(4, "little"), data[off + HOT_OUT.size:off + step]))
        hot[tid] = (updates, preempts, cpu)
    return raw, hot


class ThreadLayout:
    """Parses struct rseqtop_thread straight from its bytes with struct
    (what ctypes would do field by field, several times faster: a poll may
    parse thousands)."""

    def __init__(self, leaf, cause_names: tuple, nodes: dict):
        fields = dict(leaf._fields_)
        hot, counts = fields["h"], fields["c"]
        h0 = leaf.h.offset
        self.nodes = nodes
        self.cause_names = cause_names
        self.counts_at = leaf.c.offset + counts.aborts.offset
        self.counts = struct.Struct(f"={len(COUNT_FIELDS) + len(cause_names)}Q")
        # the six scalars in COUNT_FIELDS order, then the causes
        if [getattr(counts, f).offset - counts.aborts.offset for f in COUNT_FIELDS + ("causes",)] != \
                [8 * i for i in range(len(COUNT_FIELDS) + 1)]:
            raise RuntimeError("struct rseqtop_counts changed: update rseqtop.collect.reader.ThreadLayout")
        self.cpu_at = h0 + hot.cpu_id.offset
        self.hot_at = (h0 + hot.updates.offset, h0 + hot.preempts.offset)
        self.ids_at = leaf.tgid.offset
        self.ids = struct.Struct(f"=IIiI{ctypes.sizeof(fields['comm'])}s")  # tgid, gen, mm_cid, last_signal, comm
        if [leaf.gen.offset, leaf.mm_cid.offset, leaf.last_signal.offset, leaf.comm.offset] != \
                [self.ids_at + 4, self.ids_at + 8, self.ids_at + 12, self.ids_at + 16]:
            raise RuntimeError("struct rseqtop_thread changed: update rseqtop.collect.reader.ThreadLayout")

    def parse(self, tid: int, raw: bytes, alive: bool):
        """(ThreadStats from the record alone, (updates, preempts, cpu) of
        its own hot copy); None for a record not filled in yet."""
        tgid, gen, mm_cid, last_signal, comm = self.ids.unpack_from(raw, self.ids_at)
        if not tgid:
            return None
        v = self.counts.unpack_from(raw, self.counts_at)
        causes = cause_pairs(v[len(COUNT_FIELDS):], self.cause_names)
        cpu = int.from_bytes(raw[self.cpu_at:self.cpu_at + 4], "little", signed=True)
        own = (int.from_bytes(raw[self.hot_at[0]:self.hot_at[0] + 8], "little"),
               int.from_bytes(raw[self.hot_at[1]:self.hot_at[1] + 8], "little"), cpu)
        counts = Counts(*v[:len(COUNT_FIELDS)], causes=causes)
        return (ThreadStats(tgid, tid, comm_text(comm), counts, cpu, self.nodes.get(cpu, 0) if cpu >= 0 else -1, mm_cid,
                            last_signal, alive, gen), own)


class MapReader:
    """Reads one attached program's maps (see rseqtop.collect.loader.Probes)."""

    def __init__(self, probes):
        self.probes = probes
        k = probes.constants
        self._ncodes = k["RSEQTOP_NCODES"]
        self._cause_names = tuple(cause_name(i) for i in range(self._ncodes))
        self._counter_names = {v: name[len(COUNTER_PREFIX):].lower() for name, v in k.items()
                               if name.startswith(COUNTER_PREFIX) and name != "RSEQTOP_NCOUNTERS"}
        self._nodes = kernel.cpu_nodes()
        b = probes.bpf
        self._tables = {name: BatchTable(b[name])
                        for name in ("threads", "dead_threads", "procs", "pcounts", "sites", "offsets",
                                     "preempters")}
        if probes.uprobes:
            self._tables["handlers"] = BatchTable(b["handlers"])
        self._unknown_preempter = k["RSEQTOP_PREEMPTER_UNKNOWN"]
        self._kthread = KthreadCache()
        # tid -> (updates, preempts, cpu) last read from the hot state: a
        # thread gone between the map read and the hot read keeps them
        self._last_hot: dict[int, tuple] = {}
        # from the previous poll, to reuse what did not change: tid -> (value
        # bytes, hot state, record, its parse) of live threads, tid -> (value
        # bytes, record) of exited ones, key + value bytes -> record of procs
        self._live_cache: dict[int, tuple] = {}
        self._dead_cache: dict[int, tuple] = {}
        self._proc_cache: dict[bytes, ProcRecord] = {}
        self._entry_cache: dict[str, dict] = {}  # map name -> key + value bytes -> record (_records)
        self._thread_layout = ThreadLayout(b["threads"].Leaf, self._cause_names, self._nodes)
        self._thread_size = ctypes.sizeof(b["threads"].Leaf)
        # which threads polls bring (Collector.want_threads): with the task
        # iterator, only these are read one by one
        self.threads = "all"
        self._iter_threads = {mode: k[f"RSEQTOP_ITER_THREADS_{mode.upper()}"] for mode in THREAD_MODES}
        # process slots: processes' live threads without reading them
        self._slots = None
        if probes.hot_fd is not None:
            self._slots = SlotTable(b, self._ncodes, lambda values: cause_pairs(values, self._cause_names))
            self._tables["aborters"] = BatchTable(b["aborters"])
        if probes.hot_iter_link is not None:
            self._tables["proc_live"] = BatchTable(b["proc_live"])
            self._live_values = struct.Struct(f"=2Q{len(COUNT_FIELDS) + self._ncodes}Q")
            if self._live_values.size != ctypes.sizeof(b["proc_live"].Leaf):
                raise RuntimeError("struct rseqtop_live changed: update rseqtop.collect.reader")

    def _counts(self, c) -> Counts:
        return Counts(c.aborts, c.updates, c.preempts, c.migrations, c.signals, c.membarrier_ipis,
                      cause_pairs(c.causes, self._cause_names))

    def read(self) -> MapRecords:
        b = self.probes.bpf
        t = self._tables
        t0 = time.monotonic()
        counters = [sum(v) for v in b["counters"].values()]
        named = {self._counter_names[i]: n for i, n in enumerate(counters) if i in self._counter_names}
        # Read procs before threads: a thread that exits in between is then
        # missing from both for one poll (a dip that the assembly's monotonic
        # guard hides) instead of being counted twice.
        procs = self._procs(t["procs"].raw())
        live, live_raw, hot, map_used = self._live_threads(named)
        dead_raw = t["dead_threads"].raw()
        if self.threads == "none":
            # Nothing shows threads (their counts are in their processes'
            # retired totals): of the exited ones only the map's fill is
            # reported. Parsing and caching them kept up to a map's worth
            # of records alive, which the exporter's RSS crept up by as
            # threads exited (its own HTTP threads among them).
            map_used = map_used + (("dead_threads", len(dead_raw)),)
            dead_raw = []
        calls = self._records("pcounts", lambda k, v: CallRecord(k.tgid, k.gen, k.kind, k.cmd, k.code, v.value))
        names = self._cause_names
        # The abort program counts a section's abort before its offset and
        # preempter: reading those first, a section never shows fewer
        # aborts than its offsets (or preempters) add up to, even while
        # threads keep aborting between the reads.
        offsets = self._records("offsets", lambda k, v: OffsetRecord(k.tgid, k.gen, k.start_ip, k.offset, v.value))
        preempters = self._records("preempters", self._preempter)
        sites = self._records("sites", lambda k, v: SiteRecord(k.tgid, k.gen, k.start_ip, v.aborts,
                                                               cause_pairs(v.causes, names), v.abort_ip,
                                                               v.post_commit_offset, v.storms))
        cpu_aborts = tuple(b["cpu_aborts"][0]) if len(counters) else ()
        threads = self._threads(live_raw, dead_raw, hot)
        handlers = None
        if "handlers" in t:
            handlers = self._records("handlers", lambda k, v: HandlerRecord(k.tgid, k.gen, k.tid, k.abort_ip,
                                                                            v.hits, v.kernel))
        read_seconds = time.monotonic() - t0
        live_pids = {r.pid for r in threads if r.alive} if live is None else {r.pid for r in live if r.threads}
        run_ns, run_cnt, misses = self._bpf_stats()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return MapRecords(self.probes.setup, time.monotonic(), time.time(), read_seconds, pairs(named), procs,
                          threads, calls, sites, offsets, cpu_aborts,
                          tuple((pid, linux.proc_comm(pid) or "") for pid in sorted(live_pids)),
                          run_ns, run_cnt, misses, ru.ru_utime + ru.ru_stime, live, handlers,
                          self.probes.handlers_probed, preempters, map_used)

    def _live_threads(self, named: dict) -> tuple:
        """(LiveRecords or None, [(tid bytes, record bytes)] of the live
        threads asked for, {tid: (updates, preempts, cpu)} or None: each
        thread's own hot state, through a pidfd or in its record, and the
        map use for MapRecords.map_used)."""
        # some processes went without a slot: their threads are summed by the
        # iterator (from then on at every poll: the counter only grows)
        slotless = named.get("slots_dropped", 0) > 0
        live = list(self._slots.read()) if self._slots is not None else None
        used = (("proc_slot", len(live)), ("proc_live", 0)) if live is not None else ()
        if live is not None and self.threads != "all" and not slotless:
            if self.threads == "none":
                return tuple(live), [], None, used
            tids = None if named.get("aborters_dropped") else self._aborters()
            if tids is not None:
                return tuple(live), self._records_of(tids), None, used
        data = self.probes.iterate(self._iter_threads[self.threads])
        if data is None:
            # no iterator: every thread, and its hot state through a pidfd
            return (None if slotless or live is None else tuple(live)), self._tables["threads"].raw(), None, used
        # the kernel summed the live threads of processes without a slot;
        # only the threads asked for come out, each with its hot state
        summed = self._live(self.probes.iter_pass)
        raw, hot = iterator_threads(data, self._thread_size)
        return merge_live((live or []) + list(summed)), raw, hot, used + (("proc_live", len(summed)),)

    def _aborters(self):
        """The live threads with aborts (tids); None when there are too
        many to read one by one."""
        raw = self._tables["aborters"].raw()
        if len(raw) > MAX_ABORTERS_ONE_BY_ONE:
            return None
        return [int.from_bytes(kb, "little") for kb, _ in raw]

    def _records_of(self, tids: list) -> list:
        """[(tid bytes, record bytes)] of these threads (gone ones left out)."""
        fd = self._tables["threads"].table.map_fd
        value = ctypes.create_string_buffer(self._thread_size)
        out = []
        for tid in tids:
            key = ctypes.c_uint32(tid)
            if bpfsys.lookup(fd, key, value):
                out.append((bytes(key), value.raw))
        return out

    def _preempter(self, k, v) -> PreempterRecord:
        if k.ptgid == self._unknown_preempter:
            return PreempterRecord(k.tgid, k.gen, k.start_ip, None, 0, "", v.count, None, bytes(k).hex())
        comm = comm_text(k.comm)
        return PreempterRecord(k.tgid, k.gen, k.start_ip, v.ptid, k.ptgid, comm, v.count,
                               self._kthread(v.ptid, comm, k.ptgid), bytes(k).hex())

    def _records(self, name: str, make) -> tuple:
        """make(key, value) of every entry of map `name` (ctypes), made
        again only for entries whose bytes changed since the previous poll:
        most sections, offsets and preempters are unchanged from one poll to
        the next (and a preempter's kernel-thread check reads /proc)."""
        table = self._tables[name].table
        key_type, leaf_type = table.Key, table.Leaf
        old, cache, out = self._entry_cache.get(name, {}), {}, []
        for kb, vb in self._tables[name].raw():
            raw = kb + vb
            rec = old.get(raw)
            if rec is None:
                rec = make(key_type.from_buffer_copy(kb), leaf_type.from_buffer_copy(vb))
            cache[raw] = rec
            out.append(rec)
        self._entry_cache[name] = cache
        return tuple(out)

    def _procs(self, raw: list) -> tuple:
        cache, out = {}, []
        key_type, leaf_type = self._tables["procs"].table.Key, self._tables["procs"].table.Leaf
        for kb, vb in raw:
            rec = self._proc_cache.get(kb + vb)
            if rec is None:
                k, v = key_type.from_buffer_copy(kb), leaf_type.from_buffer_copy(vb)
                rec = ProcRecord(k.tgid, k.gen, comm_text(v.comm), self._counts(v.retired), int(v.exited_threads))
            cache[kb + vb] = rec
            out.append(rec)
        self._proc_cache = cache
        return tuple(out)

    def _live(self, current: int) -> tuple:
        """Processes' live threads as the task iterator summed them in this
        pass (entries of other passes are processes with none now)."""
        out = []
        n = len(COUNT_FIELDS)
        for kb, vb in self._tables["proc_live"].raw():
            v = self._live_values.unpack(vb)
            if v[0] != current:
                continue
            pid, gen = PROC_KEY.unpack_from(kb)
            counts = Counts(*v[2:2 + n], causes=cause_pairs(v[2 + n:], self._cause_names))
            out.append(LiveRecord(pid, gen, v[1], counts))
        return tuple(out)

    def _threads(self, live_raw: list, dead_raw: list, hot) -> tuple:
        parse = self._thread_layout.parse
        nodes = self._nodes
        hot_fd = self.probes.hot_fd
        last_hot = self._last_hot
        old_cache = self._live_cache
        out = []
        seen_hot, live_cache = {}, {}
        for kb, vb in live_raw:
            tid = int.from_bytes(kb, "little")
            if hot_fd is None:
                h = None  # the hot state is in the record itself
            elif hot is not None:
                # gone between the two reads: its last values (exit copies the final ones)
                h = hot.get(tid) or last_hot.get(tid, (0, 0, -1))
            else:
                got = taskstorage.lookup(hot_fd, tid, self.probes.hot_value)
                h = (got.updates, got.preempts, got.cpu_id) if got else last_hot.get(tid, (0, 0, -1))
            cached = old_cache.get(tid)
            if cached is not None and cached[0] == vb:
                base = cached[3]
                if cached[1] == h:
                    rec = cached[2]
                    live_cache[tid] = cached
                    if h is not None:
                        seen_hot[tid] = h
                    out.append(rec)
                    continue
            else:
                # the record's own part, parsed again only when its bytes change
                base = parse(tid, vb, True)
                if base is None:  # a record created this instant, not filled in yet
                    continue
            # Live threads' update and preemption counts are in their hot
            # state: in task storage, or the record's own copy (exited
            # threads' were copied into its counts at exit).
            t, (upd, pre, cpu) = base[0], (h if h is not None else base[1])
            c = t.counts
            rec = ThreadStats(t.pid, tid, t.comm,
                              Counts(c.aborts, upd, pre, c.migrations, c.signals, c.membarrier_ipis, c.causes),
                              cpu, nodes.get(cpu, 0) if cpu >= 0 else -1, t.mm_cid, t.last_signal, True, t.gen)
            if h is not None:
                seen_hot[tid] = h
            live_cache[tid] = (vb, h, rec, base)
            out.append(rec)
        self._last_hot, self._live_cache = seen_hot, live_cache
        dead_cache = {}
        for kb, vb in dead_raw:
            tid = int.from_bytes(kb, "little")
            if tid in live_cache:
                continue
            cached = self._dead_cache.get(tid)
            if cached is not None and cached[0] == vb:
                rec = cached[1]
            else:
                base = parse(tid, vb, False)
                if base is None:
                    continue
                rec = base[0]
            dead_cache[tid] = (vb, rec)
            out.append(rec)
        self._dead_cache = dead_cache
        return tuple(out)

    def _bpf_stats(self) -> tuple:
        """(run ns, runs, events possibly unseen) of the programs: the first
        two only with kernel.bpf_stats_enabled, the last always (never
        hidden): runs the kernel skipped (see "Twins" in the BPF program),
        where a program has a twin only as many as the smaller of the two
        skip counts, the most the pair can have lost."""
        stats = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1"
        run_ns = run_cnt = 0
        skipped = {}
        for name, fd in self.probes.programs():
            try:
                ns, cnt, skipped[name] = bpfsys.prog_stats(fd)
            except OSError:
                continue
            run_ns += ns
            run_cnt += cnt
        misses = unseen(skipped)
        return (run_ns, run_cnt, misses) if stats else (None, None, misses)


def merge_live(records: list) -> tuple:
    """One LiveRecord per process: a process may have threads in its slot
    and others (tracked when no slot was left) summed by the iterator."""
    by: dict = {}
    for r in records:
        by.setdefault((r.pid, r.gen), []).append(r)
    return tuple(rs[0] if len(rs) == 1 else
                 LiveRecord(rs[0].pid, rs[0].gen, sum(r.threads for r in rs), sum_counts(r.counts for r in rs))
                 for rs in by.values())


def unseen(skipped: dict) -> int:
    """Events possibly lost, from each program's skipped runs: a program
    and its twin (on_X and bpfgen.twin_program(X)) lose at most min() of
    theirs."""
    total = 0
    for name, n in skipped.items():
        if name.endswith("_twin"):
            continue
        twin = skipped.get(bpfgen.twin_program(name[len("on_"):]))
        total += n if twin is None else min(n, twin)
    return total
