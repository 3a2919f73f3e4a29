"""Every abort and signal counted while the kernel skips program runs.

From 6.19 a tracepoint program's run is skipped on a CPU where a bpf(2) map
operation (any process's) was preempted (the regular program), or where the
same program's earlier run was (a raw one). rseq_ip_fixup and
signal_deliver therefore get both kinds ("Twins" in bpf/rseqtop.bpf.c).
This run makes skips likely: two unpinned workload threads under a signal
storm, while the collector reads the maps in a tight loop on the same two
CPUs. Ground truth: the workload's own abort and signal counts."""

from __future__ import annotations

import subprocess

import pytest
from support import fdinfo_stats

from rseqtop import workload
from rseqtop.collect.collector import Collector
from rseqtop.kernel.bpfgen import twin_program


def skipped_runs(collector) -> dict:
    """Each program's runs the kernel skipped (its recursion misses)."""
    out = {}
    for name, fd in collector.loader.programs():
        out[name] = fdinfo_stats(fd)[2]
    return out


def run_under_map_reads(binary) -> tuple:
    with Collector() as c:
        twins = c.plan.twins
        args = [str(binary), "--threads", "2", "--op", "delay", "--in-cs-delay", "3000", "--signal-rate", "500",
                "--duration", "2"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        while proc.poll() is None:
            c.poll()  # map reads, back to back
        summary = workload.parse_summary(proc.stdout.read())
        c.poll()
        snap = c.poll()
        skipped = skipped_runs(c)
    return twins, summary, snap, skipped


@pytest.mark.bpf
@pytest.mark.kernel
def test_aborts_and_signals_exact_while_the_kernel_skips_runs(bpf_ok, record_property):
    binary = workload.build()
    for _attempt in range(3):
        twins, summary, snap, skipped = run_under_map_reads(binary)
        pid = summary["pid"]
        threads = {t.tid: t for t in snap.threads_of(pid)}
        want = {int(tid): w for tid, w in summary["threads"].items()}
        record_property("figure", f"aborts {sum(t.counts.aborts for t in threads.values())}/"
                                  f"{summary['totals']['aborts']}, skipped runs {skipped}, twins {twins}")
        assert summary["totals"]["aborts"] > 100 and summary["totals"]["signals"] > 100
        assert snap.self_stats.dropped() == 0  # a full map (another tool's 10,000 threads) is not this test's
        assert set(want) <= set(threads), (want, {t: (x.alive, x.counts.aborts) for t, x in threads.items()})
        for tid, w in want.items():
            assert (threads[tid].counts.aborts, threads[tid].counts.signals) == (w["aborts"], w["signals"]), tid
        assert sum(s.aborts for s in snap.sites_of(pid)) == summary["totals"]["aborts"]
        if not twins or skipped.get("on_rseq_ip_fixup", 0) + skipped.get("on_signal_deliver", 0):
            break
    if twins:  # the twins did work: their regular programs were skipped in these runs
        assert twins[:2] == ("rseq_ip_fixup", "signal_deliver") and "sched_process_exit" in twins
        assert skipped["on_rseq_ip_fixup"] + skipped["on_signal_deliver"] > 0, skipped
        assert snap.self_stats.probe_misses == sum(
            min(n, skipped[twin_program(name[3:])]) if twin_program(name[3:]) in skipped else n
            for name, n in skipped.items() if not name.endswith("_twin"))
    else:
        assert not any(name.endswith("_twin") for name in skipped), skipped
