"""The pure assembly (records -> Snapshot) and the reaper's decisions,
without root: from records recorded on a real run of the workload (with its
own counts as ground truth; scripts/record-maps made them) and from
hand-made records for the cases a run cannot produce on demand."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from rseqtop.collect.assemble import View, assemble
from rseqtop.collect.reaper import Reaper
from rseqtop.collect.records import (
    CallRecord, LiveRecord, MapRecords, OffsetRecord, ProcRecord, Setup, SiteRecord, dumps, loads,
)
from rseqtop.model.snapshot import Counts, ThreadStats, pairs

DATA = Path(__file__).parent / "data"
RECORDINGS = sorted(DATA.glob("records-*.json"))


def load(path):
    d = json.loads(path.read_text())
    return loads(json.dumps(d["records"])), d["summary"]


@pytest.mark.parametrize("path", RECORDINGS, ids=[p.stem for p in RECORDINGS])
def test_recorded_run_assembles_to_the_workloads_own_counts(path):
    rec, summary = load(path)
    symbols = {int(op["start_ip"], 16): op["symbol"] for op in summary["ops"].values()}
    snap = assemble(rec, symbol=lambda pid, ip: symbols.get(ip, hex(ip))).snapshot
    pid = summary["pid"]
    proc = snap.process(pid)
    assert proc is not None and not proc.alive
    assert proc.counts.aborts == summary["totals"]["aborts"] > 0
    assert sum(n for _, n in proc.counts.causes) == proc.counts.aborts
    assert proc.threads_exited >= len(summary["threads"])
    threads = {t.tid: t for t in snap.threads_of(pid)}
    for tid, want in summary["threads"].items():
        assert threads[int(tid)].counts.aborts == want["aborts"], tid
    sites = {s.start_ip: s for s in snap.sites_of(pid)}
    for name, op in summary["ops"].items():
        if op.get("enabled", True) and op["aborts"]:
            site = sites[int(op["start_ip"], 16)]
            assert site.aborts == op["aborts"] and op["symbol"] in site.symbol, name
            assert sum(n for _, n in site.offsets) == site.aborts
    assert snap.totals.aborts == summary["totals"]["aborts"]  # the recording kept the workload only


def test_recordings_exist():
    assert RECORDINGS, "tests/data/records-*.json: record them with scripts/record-maps"


def test_records_round_trip_through_json():
    for path in RECORDINGS:
        rec, _ = load(path)
        assert loads(dumps(rec)) == rec
    rec = records([thread(10, 10, 5)], live=[LiveRecord(10, 0, 3, counts(7, 7))])
    assert loads(dumps(rec)) == rec


# -- hand-made records ------------------------------------------------------
def counts(aborts, preempts=0, cause="preempt"):
    return Counts(aborts=aborts, updates=10 * aborts, preempts=preempts, causes=pairs({cause: aborts}))


SETUP = Setup("classic", "up to 6.18", ("rseq:rseq_ip_fixup",), (), (),
              pairs({"threads": 100, "dead_threads": 50, "procs": 10}))


def records(threads=(), procs=(), sites=(), offsets=(), calls=(), live_comms=(), counters=(), t=1.0, live=None):
    return MapRecords(SETUP, t, 1000.0 + t, 0.001, pairs(dict(counters)), tuple(procs), tuple(threads),
                      tuple(calls), tuple(sites), tuple(offsets), (3, 4), tuple(live_comms),
                      live=None if live is None else tuple(live))


def thread(pid, tid, aborts, alive=True, gen=0, comm="worker"):
    return ThreadStats(pid, tid, comm, counts(aborts, aborts), cpu=1, node=0, alive=alive, gen=gen)


def test_process_totals_are_retired_plus_live_threads():
    rec = records([thread(10, 10, 5), thread(10, 11, 7)], [ProcRecord(10, 0, "main", counts(100), 3)],
                  live_comms=[(10, "renamed")])
    p = assemble(rec).snapshot.process(10)
    assert p.counts.aborts == 112 and p.threads_live == 2 and p.threads_exited == 3
    assert p.comm == "renamed"  # live: /proc's name, not the one the kernel saw first


def test_a_thread_exiting_between_the_reads_never_makes_totals_dip():
    first = assemble(records([thread(10, 10, 5), thread(10, 11, 7)]))
    # thread 11 exited after procs was read and before threads was: in neither
    second = assemble(records([thread(10, 10, 6)], t=2.0), last_totals=first.last_totals)
    assert second.snapshot.process(10).counts.aborts == 12  # the previous totals, not 6
    third = assemble(records([thread(10, 10, 6)], [ProcRecord(10, 0, "w", counts(7, 7), 1)], t=3.0),
                     last_totals=second.last_totals)
    assert third.snapshot.process(10).counts.aborts == 13


def test_recycled_pid_shows_the_newest_process_and_counts_both():
    rec = records([thread(10, 10, 4, gen=1, comm="new")],
                  [ProcRecord(10, 0, "old", counts(50), 2)])
    a = assemble(rec)
    assert [(p.pid, p.gen, p.comm) for p in a.snapshot.processes] == [(10, 1, "new")]
    assert [(p.pid, p.gen, p.counts.aborts) for p in a.processes] == [(10, 0, 50), (10, 1, 4)]
    assert a.snapshot.totals.aborts == 54 and a.newest == {10: 1}


def test_view_filters_what_is_shown_not_the_totals():
    rec = records([thread(10, 10, 5, comm="a"), thread(20, 20, 7, comm="b")],
                  sites=[SiteRecord(10, 0, 0x1000, 5), SiteRecord(20, 0, 0x2000, 7)])
    snap = assemble(rec, View(frozenset({20}))).snapshot
    assert [p.pid for p in snap.processes] == [20] and [t.tid for t in snap.threads] == [20]
    assert [s.pid for s in snap.sites] == [20] and snap.totals.aborts == 12
    assert [p.pid for p in assemble(rec, View(comm=re.compile("^a$"))).snapshot.processes] == [10]


def test_processes_aged_out_still_count_in_the_system_totals():
    snap = assemble(records([thread(10, 10, 5)]), forgotten=counts(1000)).snapshot
    assert snap.totals.aborts == 1005 and snap.process(10).counts.aborts == 5


def test_comm_of_a_dead_process_is_its_main_threads_last_name():
    rec = records([thread(10, 11, 1, alive=False, comm="helper"), thread(10, 10, 1, alive=False, comm="main")])
    assert assemble(rec).snapshot.process(10).comm == "main"
    rec = records([thread(10, 11, 1, alive=False, comm="helper")], [ProcRecord(10, 0, "exitname", counts(2), 1)])
    assert assemble(rec).snapshot.process(10).comm == "exitname"


def test_sites_offsets_and_symbols():
    rec = records([thread(10, 10, 9)], sites=[SiteRecord(10, 0, 0x1000, 9, pairs({"preempt": 9}), 0x1040, 0x20)],
                  offsets=[OffsetRecord(10, 0, 0x1000, 0x8, 4), OffsetRecord(10, 0, 0x1000, 0x10, 5),
                           OffsetRecord(10, 1, 0x1000, 0x10, 99)])  # another generation's
    s = assemble(rec, symbol=lambda pid, ip: f"bin!op+{ip - 0x1000}").snapshot.sites[0]
    assert (s.symbol, s.aborts, s.offsets, s.abort_ip) == ("bin!op+0", 9, ((8, 4), (16, 5)), 0x1040)


def test_calls_become_registrations_errors_and_membarrier_stats():
    from rseqtop.kernel import bpfgen
    k = bpfgen.header_constants()
    rec = records([thread(10, 10, 1)], calls=[
        CallRecord(10, 0, k["RSEQTOP_PC_RSEQ_REG"], k["RSEQTOP_ABI_LEGACY"], 0, 3),
        CallRecord(10, 0, k["RSEQTOP_PC_RSEQ_REG"], k["RSEQTOP_ABI_V2"], 0, 2),
        CallRecord(10, 0, k["RSEQTOP_PC_RSEQ_REG"], k["RSEQTOP_ABI_LEGACY"], 22, 1),
        CallRecord(10, 0, k["RSEQTOP_PC_RSEQ_UNREG"], k["RSEQTOP_ABI_LEGACY"], 0, 4),
        CallRecord(10, 0, k["RSEQTOP_PC_MB_CALL"], 128, 0, 6),
        CallRecord(10, 0, k["RSEQTOP_PC_MB_ERROR"], 128, 1, 2),
        CallRecord(10, 0, k["RSEQTOP_PC_MB_LATENCY"], 128, 12, 6)])
    p = assemble(rec).snapshot.process(10)
    assert (p.registrations, p.unregistrations) == (5, 4)
    assert p.registrations_by_abi == (("legacy", 3), ("v2", 2)) and p.registration_errors == (("EINVAL", 1),)
    (mb,) = p.membarrier
    assert (mb.cmd, mb.calls, mb.errors, mb.latency_log2_ns) == ("PRIVATE_EXPEDITED_RSEQ", 6, (("EPERM", 2),),
                                                                  ((12, 6),))


def test_map_fill_and_self_stats():
    rec = records([thread(10, 10, 1), thread(10, 11, 1, alive=False)], [ProcRecord(10, 0, "w", Counts(), 1)],
                  counters={"threads_dropped": 7, "events_sent": 3, "events_lost": 1})
    st = assemble(rec).snapshot.self_stats
    maps = {m.name: m for m in st.maps}
    assert (maps["threads"].used, maps["threads"].capacity, maps["threads"].dropped) == (1, 100, 7)
    assert (maps["dead_threads"].used, maps["procs"].used) == (1, 1)
    assert (st.events_sent, st.events_lost, st.probes_attached) == (3, 1, ("rseq:rseq_ip_fixup",))


def test_process_totals_from_the_kernels_sums_need_no_thread_records():
    """Where the task iterator sums live threads in the kernel (rec.live),
    process totals are retired + that sum, whatever threads are listed."""
    live = [LiveRecord(10, 0, 10000, counts(70, 70)), LiveRecord(20, 0, 0, Counts())]
    procs = [ProcRecord(10, 0, "w", counts(30, 30), 4), ProcRecord(20, 0, "gone", counts(9), 2)]
    rec = records([thread(10, 10, 5)], procs, live_comms=[(10, "svc")], live=live)
    a = assemble(rec)
    p = a.snapshot.process(10)
    assert (p.counts.aborts, p.threads_live, p.alive, p.comm) == (100, 10000, True, "svc")
    q = a.snapshot.process(20)
    assert (q.counts.aborts, q.threads_live, q.alive) == (9, 0, False)
    assert [t.tid for t in a.snapshot.threads] == [10]  # only the one listed
    assert rec.live_idents() == {(10, 0)}
    maps = {m.name: m for m in a.snapshot.self_stats.maps}
    assert maps["threads"].used == 10000 and a.snapshot.totals.aborts == 109


# -- the reaper ---------------------------------------------------------------
def never_exited(pid, gen):
    return False


def test_reaper_drops_dead_processes_after_keep_seconds():
    r = Reaper(keep_seconds=60, keep_max=100)
    present = [(10, 0), (20, 0)]
    assert r.due(present, {(20, 0)}, {10: 0, 20: 0}, 0.0, lambda pid, gen: pid == 10) == set()
    assert r.due(present, {(20, 0)}, {10: 0, 20: 0}, 59.0, never_exited) == set()
    assert r.due(present, {(20, 0)}, {10: 0, 20: 0}, 61.0, never_exited) == {(10, 0)}
    assert r.dead_since == {}


def test_reaper_sees_an_older_generation_as_dead_and_keeps_live_ones():
    r = Reaper(keep_seconds=0, keep_max=100)
    assert r.due([(10, 0), (10, 1)], {(10, 1)}, {10: 1}, 0.0, never_exited) == set()
    assert r.due([(10, 0), (10, 1)], {(10, 1)}, {10: 1}, 0.5, never_exited) == {(10, 0)}


def test_reaper_drops_the_oldest_first_beyond_keep_max():
    r = Reaper(keep_seconds=1000, keep_max=100)
    present = [(pid, 0) for pid in (1, 2, 3, 4)]
    for n in range(len(present)):  # died at 0, 1, 2 and 3 s
        assert r.due(present[: n + 1], set(), {}, float(n), lambda pid, gen: True) == set()
    r.keep_max = 2
    assert r.due(present, set(), {}, 10.0, lambda pid, gen: True) == {(1, 0), (2, 0)}
    assert sorted(r.dead_since) == [(3, 0), (4, 0)]


def test_reaper_never_drops_a_process_first_seen_dead_now_even_beyond_keep_max():
    """Its final counts may show only at the next poll (a thread that exits
    between the reads of procs and threads is in neither): more dead
    processes than keep_max at one poll are dropped at the next."""
    r = Reaper(keep_seconds=1000, keep_max=2)
    present = [(pid, 0) for pid in range(1, 6)]
    assert r.due(present, set(), {}, 0.0, lambda pid, gen: True) == set()
    assert len(r.dead_since) == 5
    more = present + [(6, 0)]
    gone = r.due(more, set(), {}, 1.0, lambda pid, gen: True)
    assert len(gone) == 4 and gone < set(present)  # 4 of those seen at 0 s (which: the same age)
    assert len(r.dead_since) == 2 and (6, 0) in r.dead_since


def test_reaper_forgets_a_process_that_came_back_to_life_or_left():
    r = Reaper(keep_seconds=10, keep_max=100)
    r.due([(10, 0)], set(), {}, 0.0, lambda pid, gen: True)
    r.due([(10, 0)], {(10, 0)}, {}, 1.0, lambda pid, gen: True)  # live threads again: not dead
    assert r.dead_since == {}
    r.due([(20, 0)], set(), {}, 2.0, lambda pid, gen: True)
    r.due([], set(), {}, 3.0, lambda pid, gen: True)  # deleted by someone else
    assert r.dead_since == {}


def test_assembly_is_pure():
    rec = records([thread(10, 10, 5)])
    last = {}
    a = assemble(rec, last_totals=last)
    assert last == {} and replace(rec) == rec
    assert assemble(rec).snapshot == a.snapshot
