"""Who preempted and abort storms, without root: the kernel-thread test,
the top-N reduction, the assembly of the preempters map, and what the JSON,
the drill-down text and the exporter make of them (synthetic data whose
numbers are known). The kernel side is checked against the workload's own
counts in tests/test_collector.py, test_live_views.py and test_trace.py."""

from __future__ import annotations

import os
import threading
from dataclasses import replace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rseqtop.collect.assemble import assemble
from rseqtop.collect.records import MapRecords, PreempterRecord, Setup, SiteRecord, dumps, loads
from rseqtop.exporter.metrics import OTHER_SITE, UNKNOWN_PREEMPTER, RseqCollector
from rseqtop.kernel.kthread import KthreadCache, is_kernel_thread, parse_stat_flags
from rseqtop.model.snapshot import Counts, Preempter, ThreadStats, merge_preempters, pairs, top_preempters
from rseqtop.model.synthetic import SyntheticSource
from rseqtop.present import textout
from rseqtop.present.rows import preempter_split
from support import model_of


def test_stat_flags_survive_hostile_names():
    line = "123 (a) b (c) 9) S 2 0 0 0 -1 2129984 0 0\n"
    assert parse_stat_flags(line) == 2129984
    assert parse_stat_flags("garbage") is None


def test_kernel_threads_are_told_apart():
    assert is_kernel_thread(0) is True  # the idle task
    assert is_kernel_thread(os.getpid()) is False
    if os.path.exists("/proc/2/stat") and open("/proc/2/comm").read().strip() == "kthreadd":
        assert is_kernel_thread(2) is True
    assert is_kernel_thread(2**22 + 12345) is None  # above pid_max: no such task
    # a thread through its process's task directory (the per-thread stat)
    tids = []
    t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
    t.start()
    t.join()
    probe = threading.Thread(target=lambda: tids.append(is_kernel_thread(threading.get_native_id(), os.getpid())))
    probe.start()
    probe.join()
    assert tids[1] is False
    # a thread of a process is never a kernel thread (one leads its own
    # group): told without /proc, even once it has exited
    assert is_kernel_thread(tids[0], os.getpid()) is False
    assert is_kernel_thread(2**22 + 12345, 2**22 + 12345) is None  # a group leader that is gone
    if os.path.exists("/proc/2/stat") and open("/proc/2/comm").read().strip() == "kthreadd":
        assert is_kernel_thread(2, 2) is True
    asked = []
    cache = KthreadCache(lambda tid, tgid=None: asked.append(tid) or (None if tid == 7 else True))
    assert [cache(5, "a"), cache(5, "a"), cache(7, "b"), cache(7, "b")] == [True, True, None, None]
    assert asked == [5, 7, 7]  # an unknown answer is asked again
    asked.clear()
    assert [cache(20, "pool", 3), cache(21, "pool", 3), cache(22, "other", 3)] == [True, True, True]
    assert asked == [20, 22]  # one question per process and name, whichever of its threads comes


ENTRIES = (Preempter(10, 10, "hog", 60), Preempter(11, 11, "kworker/1:2", 25, True), Preempter(12, 1, "b", 5),
           Preempter(None, None, "", 10))


def test_top_preempters_other_and_unknown():
    top, other, unknown = top_preempters(ENTRIES, 2)
    assert [e.comm for e in top] == ["hog", "kworker/1:2"] and (other, unknown) == (5, 10)
    merged = merge_preempters([ENTRIES[:2], (Preempter(11, 11, "kworker/1:2", 40, True), ENTRIES[3])])
    assert [(e.pid, e.count) for e in merged] == [(11, 65), (10, 60), (None, 10)]
    assert preempter_split(ENTRIES, 2) == "hog 60%, kworker/1:2 [k] 25%, other 5%, unknown 10%"
    assert preempter_split((Preempter(1, 1, "x\x1b[31m", 1),)) == "x\\x1b[31m 100%"


def test_assembly_sums_sections_into_the_process():
    setup = Setup("classic", "", (), (), (), pairs({"sites": 10, "preempters": 10}))
    t = ThreadStats(10, 10, "w", Counts(aborts=9, causes=pairs({"preempt": 9})))
    rec = MapRecords(setup, 1.0, 1.0, 0.0, threads=(t,),
                     sites=(SiteRecord(10, 0, 0x100, 6, storms=2), SiteRecord(10, 0, 0x200, 3, storms=1)),
                     preempters=(PreempterRecord(10, 0, 0x100, 77, 70, "hog", 5, False),
                                 PreempterRecord(10, 0, 0x100, None, 0, "", 1),
                                 PreempterRecord(10, 0, 0x200, 77, 70, "hog", 3, False)))
    assert loads(dumps(rec)) == rec
    snap = assemble(rec).snapshot
    p = snap.process(10)
    assert p.storms == 3
    assert [(e.pid, e.tgid, e.comm, e.count) for e in p.preempters] == [(77, 70, "hog", 8), (None, None, "", 1)]
    site = {s.start_ip: s for s in snap.sites}[0x100]
    assert site.storms == 2 and [e.count for e in site.preempters] == [5, 1]
    assert dict((m.name, m.used) for m in snap.self_stats.maps)["preempters"] == 3


def test_json_has_storms_and_preempters():
    src = SyntheticSource(processes=3, threads_per_process=2)
    snap_model = model_of(src)
    rec = textout.json_record(snap_model)
    want = {p.pid: p for p in snap_model.cur.processes}
    for p in rec["processes"]:
        s = want[p["pid"]]
        assert p["storms"] == s.storms == sum(x["storms"] for x in p["sections"])
        assert p["preempters"][0] == {"pid": 2000 + p["pid"] - 1000, "tgid": 2000 + p["pid"] - 1000,
                                      "comm": f"hog{p['pid'] - 1000}", "kthread": False,
                                      "count": s.preempters[0].count}
        assert p["preempters"][1]["kthread"] is True
        assert p["preempters_other"] == 0
        assert sum(e["count"] for e in p["preempters"]) + p["preempters_unknown"] == \
            sum(e.count for e in s.preempters)
    assert any(p["storms"] for p in rec["processes"])
    blind = textout.json_record(model_of(SyntheticSource(processes=1, unavailable_causes=("preempt",))))
    p = blind["processes"][0]
    assert p["preempters"] is None and p["preempters_unknown"] is None and p["sections"][0]["preempters"] is None


def families(source, **kw) -> dict:
    reg = CollectorRegistry()
    reg.register(RseqCollector(source, identity=None, **kw))
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, s.labels.get("comm"), s.labels.get("preempter"))] = s.value
    return out


def test_exporter_storms_and_bounded_preempters():
    got = families(SyntheticSource(processes=3, threads_per_process=2), top_preempters=1)
    snap = SyntheticSource(processes=3, threads_per_process=2).poll()  # what the one scrape read
    for p in snap.processes:
        assert got[("rseqtop_abort_storms_total", p.comm, None)] == p.storms
        top, other, unknown = top_preempters(p.preempters, 1)
        assert got[("rseqtop_preempter_aborts_total", p.comm, top[0].comm)] == top[0].count
        assert got[("rseqtop_preempter_aborts_total", p.comm, OTHER_SITE)] == other
        assert got[("rseqtop_preempter_aborts_total", p.comm, UNKNOWN_PREEMPTER)] == unknown
        assert len([k for k in got if k[:2] == ("rseqtop_preempter_aborts_total", p.comm)]) == 3
    blind = families(SyntheticSource(processes=1, unavailable_causes=("preempt",)))
    assert not any(name == "rseqtop_preempter_aborts_total" for name, _, _ in blind)


def test_synthetic_processes_equal_their_sections():
    snap = SyntheticSource(processes=4).poll()
    for p in snap.processes:
        sites = snap.sites_of(p.pid)
        assert p.storms == sum(s.storms for s in sites)
        assert sum(e.count for e in p.preempters) == sum(e.count for s in sites for e in s.preempters)
    assert replace(snap.processes[0], storms=0).storms == 0
