"""A prometheus_client Collector over a snapshot source.

The source is a rseqtop.source.SnapshotSource (rseqtop.collect.Collector,
rseqtop.model.synthetic.SyntheticSource). It is polled at scrape time, under a
lock, and nothing here clears a BPF map: every counter is a total since
attach (the cloudflare/ebpf_exporter model). Between scrapes, tick() polls
too when the last poll is older than its argument (`rseqtop export
--poll-interval`): dead processes then leave the maps within that time,
their counts kept in their label sets, however long the scrape interval.
A failed poll is logged and counted in rseqtop_scrape_errors_total; the
scrape still answers, with the last good values.

Cardinality. Series are labelled by comm and container identity (pod UID,
container ID) by default; processes sharing those labels are summed.
`labels="pid"` adds a pid label and `labels="tid"` adds per-thread series
for the per-thread counters. At most `max_series` label sets are kept per
level; further ones are refused and counted once each in
rseqtop_series_dropped_total. A label set whose processes are all gone (or
exited) for `series_ttl` seconds is forgotten (rseqtop_series_expired_total).

Monotonicity. While a label set exists its counters never go down: the last
values of a process that leaves the snapshot are kept ("retired") in its
label set, and each value is the maximum seen for its process.
"""

from __future__ import annotations

import logging
import threading
import time
from operator import attrgetter
from typing import Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from rseqtop import __version__
from rseqtop.exporter import cgroup
from rseqtop.exporter.exposition import FastCounter, FastGauge, FastHistogram
from rseqtop.model.snapshot import CAUSE_OF_FIELD, CAUSES, COUNT_FIELDS
from rseqtop.model.source import poll_and_reap

log = logging.getLogger("rseqtop.export")

LABEL_MODES = ("comm", "pid", "tid")
BASE_LABELS = ("comm", "pod_uid", "container_id")
OTHER_SITE = "[other]"
UNKNOWN_PREEMPTER = "[unknown]"
# Histogram buckets for membarrier latency: le = 2^k ns for k in this range.
LAT_MIN_LOG2, LAT_MAX_LOG2 = 10, 33  # ~1 us .. ~8.6 s
# (k, bucket bound text): the le label prometheus_client writes for 2^k ns in seconds
LAT_BOUNDS = tuple((k, repr(float(2 ** k) / 1e9)) for k in range(LAT_MIN_LOG2, LAT_MAX_LOG2 + 1))

# Per-entity counters, one per snapshot.COUNT_FIELDS (a test checks): series id
# prefix -> (metric name without _total, help, extra label names)
COUNTERS = {
    "aborts": ("rseqtop_aborts", "rseq critical sections aborted by the kernel (rseq_ip_fixup), by cause", ("cause",)),
    "preempts": ("rseqtop_preemptions",
                 "Preemptions of threads with rseq registered (sched_switch while runnable)", ()),
    "migrations": ("rseqtop_migrations", "CPU migrations of threads with rseq registered", ()),
    "signals": ("rseqtop_signals", "Signals delivered to threads with rseq registered", ()),
    "membarrier_ipis": ("rseqtop_membarrier_ipis", "membarrier PRIVATE_EXPEDITED_RSEQ IPIs that interrupted the thread", ()),
    "updates": ("rseqtop_rseq_updates",
                "rseq_update events: the kernel rewrote the thread's rseq area on return to user space", ()),
}
# Counters that exist only when rseqtop can see their cause.
CAUSE_COUNTERS = CAUSE_OF_FIELD
PROCESS_COUNTERS = {
    "registrations": ("rseqtop_registrations",
                      "Successful rseq registrations (rseq syscalls without the unregister flag), by ABI: "
                      "legacy (32-byte area) or v2 (longer area; lazy ID updates from 7.1)", ("abi",)),
    "unregistrations": ("rseqtop_unregistrations", "Successful rseq unregistrations", ()),
    "reg_errors": ("rseqtop_registration_errors",
                   "Failed rseq syscalls (registrations and unregistrations), by errno", ("errno",)),
    "mb_calls": ("rseqtop_membarrier_calls", "membarrier system calls, by command", ("command",)),
    "mb_errors": ("rseqtop_membarrier_errors", "Failed membarrier system calls, by command and errno",
                  ("command", "errno")),
    # only with --uprobes: absent (not 0) when not measured
    "user_aborts": ("rseqtop_user_aborts",
                    "Runs of rseq abort handlers that no kernel abort caused: the critical sections' own "
                    "cpu_id-mismatch retries, which the kernel never sees (uprobes at the handlers, --uprobes)",
                    ()),
    "storms": ("rseqtop_abort_storms",
               "Abort storms: runs of consecutive aborts of one thread in one critical section, each less than "
               "the storm interval after the previous one, that reached the storm length (counted once per run; "
               "rseqtop export --storm-aborts / --storm-interval)", ()),
}


# the series ids of Counts' fields but aborts (by cause, below), and a reader of their values
_FIELD_SIDS = tuple((f,) for f in COUNT_FIELDS if f != "aborts")
_field_values = attrgetter(*(f for f in COUNT_FIELDS if f != "aborts"))


def _counts_values(c, out: dict) -> None:
    named = 0
    for cause, n in c.causes:
        out[("aborts", cause)] = out.get(("aborts", cause), 0) + n
        named += n
    if c.aborts > named:  # never hide an abort: what no cause covers is unknown
        out[("aborts", "unknown")] = out.get(("aborts", "unknown"), 0) + c.aborts - named
    out.update(zip(_FIELD_SIDS, _field_values(c)))


def _process_values(p, sites, syscalls: bool = True, preempt_seen: bool = True) -> dict:
    out: dict = {}
    _counts_values(p.counts, out)
    if syscalls:  # not counted is absent, not zero
        out[("registrations", "legacy")] = 0  # counted: zero, not absent
        for abi, n in p.registrations_by_abi:
            out[("registrations", abi)] = n
        out[("unregistrations",)] = p.unregistrations
    for name, n in p.registration_errors:
        out[("reg_errors", name)] = n
    for m in p.membarrier:
        out[("mb_calls", m.cmd)] = out.get(("mb_calls", m.cmd), 0) + m.calls
        for name, n in m.errors:
            out[("mb_errors", m.cmd, name)] = out.get(("mb_errors", m.cmd, name), 0) + n
        for slot, n in m.latency_log2_ns:
            out[("mb_lat", m.cmd, int(slot))] = out.get(("mb_lat", m.cmd, int(slot)), 0) + n
    for s in sites:
        out[("site", s.symbol)] = out.get(("site", s.symbol), 0) + s.aborts
    if p.user_aborts is not None:
        out[("user_aborts",)] = p.user_aborts
    out[("storms",)] = p.storms
    if preempt_seen:  # not seen is absent, not zero
        for e in p.preempters:
            comm = UNKNOWN_PREEMPTER if e.pid is None else e.comm
            out[("preempter", comm)] = out.get(("preempter", comm), 0) + e.count
    return out


class _Entity:
    __slots__ = ("key", "values", "gauge", "base")

    def __init__(self, key: tuple, base: Optional[dict] = None):
        self.key = key
        self.values: dict = {}
        self.gauge = 0
        # What the entity had counted under its previous label set (a process
        # that renamed itself): only the rest belongs to this one, so that a
        # sum over label sets still equals the entity's total.
        self.base: dict = base or {}

    def contribution(self):
        base = self.base
        for sid, v in self.values.items():
            yield sid, v - base.get(sid, 0)


class _Group:
    __slots__ = ("retired", "members", "last_alive", "sites", "preempters")

    def __init__(self, now: float):
        self.retired: dict = {}
        self.members: set = set()
        self.last_alive = now
        self.sites: list = []  # admitted site symbols, sticky while the group lives
        self.preempters: list = []  # admitted preempter comms, the same way


class SeriesSet:
    """Label sets (groups) fed by entities (processes or threads), monotonic and bounded."""

    def __init__(self, max_series: int, ttl: float):
        self.max_series = max_series
        self.ttl = ttl
        self.entities: dict = {}
        self.groups: dict = {}
        self.refused: dict = {}  # label key -> last seen (each counted once while it keeps appearing)
        self.tombstones: set = set()  # entity ids whose group expired while they were still listed
        self.dropped = 0
        self.expired = 0

    def update(self, now: float, rows) -> None:
        """rows: iterable of (entity id, label key, alive, values dict, gauge)."""
        seen = set()
        for eid, key, alive, values, gauge in rows:
            seen.add(eid)
            if eid in self.tombstones:
                if not alive:
                    continue
                self.tombstones.discard(eid)  # a reused id, running again
            ent = self.entities.get(eid)
            base = None
            if ent is not None and ent.key != key:  # renamed or reused: close the old one
                self._retire(eid, ent)
                if all(values.get(sid, 0) >= v for sid, v in ent.values.items()):
                    base = ent.values  # the same entity, renamed: counts go on
                ent = None
            if ent is None:
                group = self.groups.get(key)
                if group is None:
                    if len(self.groups) >= self.max_series:
                        if key not in self.refused:
                            self.dropped += 1
                        self.refused[key] = now
                        continue
                    group = self.groups[key] = _Group(now)
                ent = self.entities[eid] = _Entity(key, base)
                group.members.add(eid)
            group = self.groups[key]
            vals = ent.values
            have = vals.get
            for sid, v in values.items():
                old = have(sid)
                if old is None or v > old:  # a zero is a series too
                    vals[sid] = v
            ent.gauge = gauge if alive else 0
            if alive:
                group.last_alive = now
        for eid in [e for e in self.entities if e not in seen]:
            self._retire(eid, self.entities[eid])
        for key in [k for k, g in self.groups.items() if now - g.last_alive > self.ttl]:
            group = self.groups.pop(key)
            for eid in group.members:
                self.entities.pop(eid, None)
                self.tombstones.add(eid)
            self.expired += 1
        self.tombstones &= seen
        for key in [k for k, t in self.refused.items() if now - t > self.ttl]:
            del self.refused[key]

    def _retire(self, eid, ent: _Entity) -> None:
        del self.entities[eid]
        group = self.groups.get(ent.key)
        if group is None:
            return
        group.members.discard(eid)
        for sid, v in ent.contribution():
            group.retired[sid] = group.retired.get(sid, 0) + v

    def totals(self):
        """Yield (label key, group, totals dict, gauge sum)."""
        entities = self.entities
        for key, group in self.groups.items():
            if len(group.members) == 1 and not group.retired:
                # the common case with pid labels: one process, never renamed (read-only to callers)
                ent = entities[next(iter(group.members))]
                if not ent.base:
                    yield key, group, ent.values, ent.gauge
                    continue
            tot = dict(group.retired)
            gauge = 0
            for eid in group.members:
                ent = entities[eid]
                gauge += ent.gauge
                for sid, v in ent.contribution():
                    tot[sid] = tot.get(sid, 0) + v
            yield key, group, tot, gauge


class RseqCollector:
    """prometheus_client custom collector: register it in a CollectorRegistry."""

    def __init__(self, source, labels: str = "comm", max_series: int = 2000, series_ttl: float = 600.0,
                 top_sites: int = 10, top_preempters: int = 5,
                 identity: Optional[Callable[[int], cgroup.Identity]] = cgroup.identity,
                 lock: Optional[threading.Lock] = None, version: str = __version__):
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}")
        self.source = source
        self.labels = labels
        self.top_sites = top_sites
        self.top_preempters = top_preempters
        self.identity = identity or (lambda pid: cgroup.NONE)
        self.lock = lock or threading.Lock()
        self.version = version
        self.procs = SeriesSet(max_series, series_ttl)
        self.threads = SeriesSet(max_series, series_ttl) if labels == "tid" else None
        self._ident_cache: dict = {}
        self.scrape_errors = 0
        self.last = None  # last good Snapshot
        self.polled = float("-inf")  # time.monotonic() of the latest poll, scrape or tick
        self.proc_labels = BASE_LABELS + (("pid",) if labels in ("pid", "tid") else ())
        self.thread_labels = BASE_LABELS + ("pid", "tid")

    def describe(self):
        # Registering must not poll the BPF maps; the names are all ours.
        return []

    # -- update ---------------------------------------------------------
    def _ident(self, pid: int) -> cgroup.Identity:
        ident = self._ident_cache.get(pid)
        if ident is None:
            try:
                ident = self.identity(pid)
            except Exception:  # a resolver must never break a scrape
                ident = cgroup.NONE
            self._ident_cache[pid] = ident
        return ident

    def _update(self, snap) -> None:
        sites: dict = {}
        for s in snap.sites:
            sites.setdefault(s.pid, []).append(s)
        with_pid = self.labels in ("pid", "tid")
        present = set()
        syscalls = snap.self_stats.syscall_accounting
        preempt_seen = "preempt" not in snap.self_stats.unavailable_causes

        def key_of(p) -> tuple:
            ident = self._ident(p.pid)
            return (p.comm, ident.pod_uid, ident.container_id) + ((str(p.pid),) if with_pid else ())

        def proc_rows():
            # a process is (pid, generation): a recycled pid's new process
            # must not take over (max) the counts of the one before it
            for p in snap.processes:
                present.add(p.pid)
                values = _process_values(p, sites.get(p.pid, ()), syscalls, preempt_seen)
                yield (p.pid, p.gen), key_of(p), p.alive, values, p.threads_live
            for p in snap.earlier:  # dead, their pid taken: sites are the new process's
                yield (p.pid, p.gen), key_of(p), False, _process_values(p, (), syscalls, preempt_seen), 0

        self.procs.update(snap.monotonic, proc_rows())
        if self.threads is not None:
            def thread_rows():
                for t in snap.threads:
                    ident = self._ident(t.pid)
                    key = (t.comm, ident.pod_uid, ident.container_id, str(t.pid), str(t.tid))
                    vals: dict = {}
                    _counts_values(t.counts, vals)
                    yield t.tid, key, t.alive, vals, 0
            self.threads.update(snap.monotonic, thread_rows())
        for pid in [p for p in self._ident_cache if p not in present]:
            del self._ident_cache[pid]
        self.last = snap

    def _poll(self) -> None:
        self.polled = time.monotonic()
        try:
            snap = poll_and_reap(self.source)
            self._update(snap)
        except Exception as err:  # count and log, keep serving the last values
            self.scrape_errors += 1
            log.warning("scrape error %d: reading the snapshot failed: %s: %s",
                        self.scrape_errors, type(err).__name__, err)

    def tick(self, interval: float) -> bool:
        """Between scrapes: poll (and so reap) when the latest poll is
        `interval` seconds old or older. Without it a long scrape interval
        lets every process that died meanwhile wait in the maps and in
        memory (measured: 200 processes a second, 15 s scrapes, ~25 MiB).
        The series take each dead process's final counts here, as at a
        scrape. Returns whether it polled."""
        if interval <= 0 or time.monotonic() - self.polled < interval:
            return False
        with self.lock:
            self._poll()
        return True

    # -- collect --------------------------------------------------------
    def collect(self):
        t0 = time.perf_counter()
        with self.lock:
            self._poll()
            families = self._families()
            families.extend(self._self_families())
            dur = GaugeMetricFamily("rseqtop_scrape_duration_seconds",
                                    "Time this scrape took to read the BPF maps and build the metrics")
            dur.add_metric([], time.perf_counter() - t0)
            families.append(dur)
        return families

    def _families(self) -> list:
        pl = list(self.proc_labels)
        counter_labels = list(self.thread_labels) if self.threads is not None else pl
        fams = {}
        for sid, (name, help_, extra) in COUNTERS.items():
            fams[sid] = FastCounter(name, help_, labels=counter_labels + list(extra))
        for sid, (name, help_, extra) in PROCESS_COUNTERS.items():
            fams[sid] = FastCounter(name, help_, labels=pl + list(extra))
        sites = FastCounter(
            "rseqtop_site_aborts",
            f"Aborts by critical section (symbol of its start address); the first {self.top_sites} "
            f"sections per label set get their own series, later ones are summed as {OTHER_SITE}",
            labels=pl + ["symbol"])
        lat = FastHistogram("rseqtop_membarrier_duration_seconds",
                                    "membarrier system call latency (log2 buckets; the sum is estimated "
                                    "from bucket midpoints)", labels=pl + ["command"])
        preempters = FastCounter(
            "rseqtop_preempter_aborts",
            f"Aborts caused by preemption, by the comm of the task that ran next on the CPU (the preempter); "
            f"the first {self.top_preempters} preempters per label set get their own series, later ones are "
            f"summed as {OTHER_SITE}, aborts whose preempter was not seen are {UNKNOWN_PREEMPTER}",
            labels=pl + ["preempter"])
        threads = FastGauge("rseqtop_threads_registered", "Live threads with rseq registered", labels=pl)

        # A cause this kernel cannot see has no series at all (an absent
        # series, not a misleading 0); rseqtop_cause_available says why.
        unseen = {sid for sid, cause in CAUSE_COUNTERS.items()
                  if self.last is not None and cause in self.last.self_stats.unavailable_causes}
        # Rows go straight into the families (label values, value): at 10,000
        # series a scrape is mostly this loop.
        counter_rows = {sid: fams[sid].rows for sid in COUNTERS if sid not in unseen}
        rows_of = {sid: fams[sid].rows for sid in PROCESS_COUNTERS}
        if self.threads is not None:
            for key, group, tot, gauge in self.threads.totals():
                for sid, v in tot.items():
                    rows = counter_rows.get(sid[0])
                    if rows is not None:
                        rows.append((key + sid[1:], v))
        else:  # the per-entity counters are the processes' own
            rows_of.update(counter_rows)
        for key, group, tot, gauge in self.procs.totals():
            threads.rows.append((key, gauge))
            site_tot: dict = {}
            pre_tot: dict = {}
            lat_by_cmd: dict = {}
            for sid, v in tot.items():
                kind = sid[0]
                rows = rows_of.get(kind)
                if rows is not None:
                    rows.append((key + sid[1:], v))
                elif kind == "site":
                    site_tot[sid[1]] = v
                elif kind == "preempter":
                    pre_tot[sid[1]] = v
                elif kind == "mb_lat":
                    lat_by_cmd.setdefault(sid[1], {})[sid[2]] = v
            if site_tot:
                _add_top(sites, key, group.sites, self.top_sites, site_tot)
            unknown = pre_tot.pop(UNKNOWN_PREEMPTER, None)
            if unknown is not None:  # its own series, never among the top nor in [other]
                preempters.rows.append((key + (UNKNOWN_PREEMPTER,), unknown))
            if pre_tot:
                _add_top(preempters, key, group.preempters, self.top_preempters, pre_tot)
            for cmd, slots in sorted(lat_by_cmd.items()):
                buckets, total = _buckets(slots)
                lat.add_metric(key + (cmd,), buckets, sum_value=total)
        return list(fams.values()) + [sites, preempters, lat, threads]

    def _self_families(self) -> list:
        out = []
        snap = self.last
        info = GaugeMetricFamily("rseqtop_build_info", "rseqtop version and the kernel's rseq era "
                                 "(classic: up to 6.18, rewrite: 6.19+, v2: lazy updates)",
                                 labels=["version", "era"])
        info.add_metric([self.version, snap.era if snap else ""], 1)
        out.append(info)
        st = snap.self_stats if snap else None
        g = GaugeMetricFamily("rseqtop_probes_attached", "Tracepoints rseqtop is attached to")
        g.add_metric([], len(st.probes_attached) if st else 0)
        out.append(g)
        g = GaugeMetricFamily("rseqtop_probes_missing", "Tracepoints rseqtop wanted but this kernel lacks")
        g.add_metric([], len(st.probes_missing) if st else 0)
        out.append(g)
        g = GaugeMetricFamily("rseqtop_syscall_accounting",
                              "1 when rseq registrations and membarrier calls are counted (rseqtop export "
                              "--syscalls), 0 when not (their series are then absent)")
        g.add_metric([], 1 if st and st.syscall_accounting else 0)
        out.append(g)
        g = GaugeMetricFamily("rseqtop_cause_available",
                              "1 when this kernel lets rseqtop attribute aborts to the cause, 0 when it cannot "
                              "(its counters are then absent, not zero)", labels=["cause"])
        for cause in CAUSES:
            g.add_metric([cause], 0 if st and cause in st.unavailable_causes else 1)
        out.append(g)
        c = CounterMetricFamily("rseqtop_events_lost", "Sampled abort events lost because the ring buffer was full")
        c.add_metric([], st.events_lost if st else 0)
        out.append(c)
        used = GaugeMetricFamily("rseqtop_map_entries", "Entries in use in a BPF map", labels=["map"])
        cap = GaugeMetricFamily("rseqtop_map_capacity_entries", "Capacity of a BPF map", labels=["map"])
        drop = CounterMetricFamily("rseqtop_map_inserts_dropped",
                                   "Inserts a full BPF map refused (those entities are not counted)",
                                   labels=["map"])
        for m in (st.maps if st else ()):
            used.add_metric([m.name], m.used)
            cap.add_metric([m.name], m.capacity)
            drop.add_metric([m.name], m.dropped)
        out += [used, cap, drop]
        if st is not None and st.bpf_run_time_ns is not None:
            c = CounterMetricFamily("rseqtop_bpf_run_time_seconds",
                                    "CPU time spent in rseqtop's BPF programs (needs kernel.bpf_stats_enabled=1)")
            c.add_metric([], st.bpf_run_time_ns / 1e9)
            out.append(c)
            c = CounterMetricFamily("rseqtop_bpf_runs", "Runs of rseqtop's BPF programs (needs kernel.bpf_stats_enabled=1)")
            c.add_metric([], st.bpf_run_count or 0)
            out.append(c)
        c = CounterMetricFamily("rseqtop_bpf_missed_runs",
                                "Events rseqtop's BPF programs may not have counted because the kernel skipped "
                                "their runs (of a program with a twin, only as many as both skipped)")
        c.add_metric([], st.probe_misses if st else 0)
        out.append(c)
        c = CounterMetricFamily("rseqtop_cpu_aborts", "rseq aborts by CPU (all processes)", labels=["cpu"])
        for cpu, n in enumerate(snap.cpu_aborts if snap else ()):
            c.add_metric([str(cpu)], n)
        out.append(c)
        g = GaugeMetricFamily("rseqtop_poll_duration_seconds", "Time the last scrape spent reading the BPF maps")
        g.add_metric([], st.poll_seconds if st else 0.0)
        out.append(g)
        sets = [s for s in (self.procs, self.threads) if s is not None]
        g = GaugeMetricFamily("rseqtop_series_label_sets", "Label sets currently exported")
        g.add_metric([], sum(len(s.groups) for s in sets))
        out.append(g)
        c = CounterMetricFamily("rseqtop_series_dropped",
                                "Label sets refused because --max-series was reached (each counted once)")
        c.add_metric([], sum(s.dropped for s in sets))
        out.append(c)
        c = CounterMetricFamily("rseqtop_series_expired",
                                "Label sets forgotten after their processes were gone for --series-ttl")
        c.add_metric([], sum(s.expired for s in sets))
        out.append(c)
        c = CounterMetricFamily("rseqtop_scrape_errors", "Scrapes whose snapshot read failed (last values served)")
        c.add_metric([], self.scrape_errors)
        out.append(c)
        return out


def _add_top(fam, labels: tuple, admitted: list, limit: int, totals: dict) -> None:
    """The `limit` biggest keys of a label set get their own series, admitted
    for good (sticky, so that a series never turns into part of the other
    one and back); later keys are summed as OTHER_SITE."""
    have = set(admitted)
    if len(admitted) < limit:
        new = [k for k in totals if k not in have]
        if new:
            new.sort(key=lambda k: (-totals[k], k))
            admitted.extend(new[:limit - len(admitted)])
            have.update(admitted)
    other = 0
    rows = fam.rows
    for key, v in totals.items():
        if key in have:
            rows.append((labels + (key,), v))
        else:
            other += v
    if other:
        rows.append((labels + (OTHER_SITE,), other))


def _buckets(slots: dict) -> tuple:
    """log2 ns slots {k: n} (k counts [2^k, 2^(k+1)) ns) -> cumulative buckets, estimated sum (s)."""
    ordered = sorted(slots.items())
    buckets = []
    acc = i = 0
    for k, le in LAT_BOUNDS:
        while i < len(ordered) and ordered[i][0] + 1 <= k:  # slot k-1 ends at 2^k ns
            acc += ordered[i][1]
            i += 1
        buckets.append((le, acc))
    total = sum(slots.values())
    buckets.append(("+Inf", total))
    est = sum(n * 1.5 * (2 ** slot) for slot, n in slots.items()) / 1e9
    return buckets, est
