"""Thread and process churn with rseqtop attached: exited threads' and
processes' counts are kept exactly, and maps never fill silently."""

import os
import time

import pytest

from support import ISOLATED_PRIORITY, run_realtime

from rseqtop import workload
from rseqtop.collect import Collector


@pytest.fixture(scope="module")
def collector(bpf_ok):
    workload.build()
    with Collector() as c:
        yield c


def test_thread_churn_totals_exact(collector):
    # 10,000 short-lived threads per second, each registering rseq and
    # running a few sections (benchmarks/churn.py runs it for a minute)
    summary = workload.run(["--churn-threads", "--threads", "8", "--in-cs-delay", "5000", "--churn-rate", "10000",
                            "--duration", "10"], timeout=120)
    snap = collector.poll()
    created = summary["churn"]["created"]
    print(f"thread churn: {created} threads ({summary['churn']['per_second']:.0f}/s), "
          f"{summary['totals']['aborts']} aborts")
    assert created > 10000 and summary["totals"]["aborts"] > 0
    proc = snap.process(summary["pid"])
    maps = {m.name: m for m in snap.self_stats.maps}
    assert maps["threads"].dropped == 0 and maps["procs"].dropped == 0
    assert proc.counts.aborts == summary["totals"]["aborts"]
    assert proc.threads_exited >= created


def test_process_churn_totals_exact_per_pid(collector):
    summary = workload.run(["--churn-processes", "--threads", "4", "--in-cs-delay", "5000", "--duration", "2"],
                           timeout=120)
    snap = collector.poll()
    children = summary["children"]
    assert summary["children_totals"]["aborts"] > 0 and len(children) > 100
    got: dict = {}
    for p in collector.assembly.processes:  # every generation of recycled pids
        if str(p.pid) in children:
            got[p.pid] = got.get(p.pid, 0) + p.counts.aborts
    maps = {m.name: m for m in snap.self_stats.maps}
    assert maps["procs"].dropped == 0 and maps["threads"].dropped == 0
    wrong = {pid: (got.get(int(pid), 0), rec["aborts"]) for pid, rec in children.items()
             if got.get(int(pid), 0) != rec["aborts"]}
    print(f"process churn: {summary['children_totals']['processes']} children, "
          f"{summary['children_totals']['aborts']} aborts, {len(wrong)} pids wrong")
    assert not wrong, dict(list(wrong.items())[:10])
    # the parent ran no section itself
    assert snap.process(summary["pid"]).counts.aborts == 0


def test_reap_ages_dead_processes_out_of_the_maps_and_keeps_their_counts(bpf_ok):
    """poll() never deletes; reap() drops what died keep_dead_seconds ago,
    and the system totals still count it."""
    with Collector(keep_dead_seconds=0) as c:
        before = c.poll().totals.aborts
        summary = workload.run(["--threads", "2", "--signal-rate", "2000", "--in-cs-delay", "3000",
                                "--duration", "0.5"], timeout=60)
        pid, aborts = summary["pid"], summary["totals"]["aborts"]
        assert aborts > 0
        first = c.poll()
        assert first.process(pid).counts.aborts == aborts
        assert c.poll().process(pid) is not None, "poll alone deleted it"
        assert c.reap() == 0  # first seen dead now: dropped at the next reap
        time.sleep(0.01)
        c.poll()
        assert c.reap() >= 1
        after = c.poll()
        assert after.process(pid) is None
        assert after.totals.aborts >= before + aborts
        tracked = {k.value for k in c.bpf["dead_threads"].keys()}
        assert not tracked & {int(tid) for tid in summary["threads"]}
        assert all(k.tgid != pid for k in c.bpf["procs"].keys())


def test_reap_deletes_a_dead_processs_preempters(bpf_ok):
    """Preempter entries are keyed by the preempting process and name: the
    reaper deletes each by the key the reader read, and must leave no entry
    of a dead process."""
    with Collector(keep_dead_seconds=0) as c:
        summary = run_realtime(["--threads", 1, "--cpus", (os.cpu_count() or 1) - 1, "--op", "delay",
                                "--in-cs-delay", 5000, "--antagonist", "reap-hog", "--antagonist-threads", 2,
                                "--antagonist-rate", 2000, "--duration", 0.5], priority=ISOLATED_PRIORITY)
        pid = summary["pid"]
        mine = lambda: [k for k in c.bpf["preempters"].keys() if k.tgid == pid]  # noqa: E731
        c.poll()
        assert any(k.comm == b"reap-hog" for k in mine()), "the antagonists preempted nothing: nothing to reap"
        c.reap()
        time.sleep(0.01)
        c.poll()
        assert c.reap() >= 1
        assert mine() == []


def test_exited_threads_are_counted_not_kept_when_no_thread_is_shown(bpf_ok):
    """With threads "none" (the exporter without --labels tid) exited
    threads' records are not parsed or kept, only the dead_threads map's
    fill is reported; their counts stay in their process's totals, and
    asking for threads again shows them, each exact."""
    with Collector(threads="none") as c:
        summary = workload.run(["--threads", "3", "--signal-rate", "2000", "--in-cs-delay", "3000",
                                "--duration", "0.5"], timeout=60)
        pid, want = summary["pid"], {int(tid): w for tid, w in summary["threads"].items()}
        snap = c.poll()
        assert snap.process(pid).counts.aborts == summary["totals"]["aborts"] > 0
        assert snap.threads_of(pid) == ()
        fill = {m.name: m.used for m in snap.self_stats.maps}["dead_threads"]
        in_map = {k.value for k in c.bpf["dead_threads"].keys()}
        assert set(want) <= in_map and fill >= len(want)
        c.want_threads("all")
        shown = {t.tid: t for t in c.poll().threads_of(pid)}
        assert {tid: (shown[tid].alive, shown[tid].counts.aborts) for tid in want} == {
            tid: (False, w["aborts"]) for tid, w in want.items()}
