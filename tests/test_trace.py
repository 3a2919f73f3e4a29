"""`rseqtop trace` against the real collector and the bundled workload (root)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from rseqtop import workload
from support import Trace

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

PINNED = ["--threads", "2", "--cpus", "0", "--in-cs-delay", "200", "--signal-rate", "50", "--duration", "1"]


@pytest.fixture(scope="module")
def traced(bpf_ok, rseqtop_cmd):
    """One `rseqtop trace --json` (with a storm rule, support.STORM_CLI)
    over two workload runs, pinned and storm (each start compiles: 16 s in
    a kernel VM), stopped after both: (exit code, records, stderr lines,
    pinned summary, storm summary)."""
    from support import STORM_CLI, STORM_RUN, run_realtime

    tr = Trace(rseqtop_cmd + ["trace", "--json", *STORM_CLI])
    try:
        pinned = workload.run(PINNED, timeout=60)
        storm = run_realtime(STORM_RUN)
        time.sleep(0.3)  # the trace loop polls the ring buffer every 100 ms; it drains it again on exit
    finally:
        rc = tr.stop(signal.SIGINT)
    return rc, [json.loads(line) for line in tr.out], tr.err, pinned, storm


@pytest.mark.kernel
def test_json_lines_for_the_workload_equal_its_aborts(traced, record_property):
    rc, records, err, summary, _ = traced
    assert rc == 0
    assert all(r["schema_version"] == 1 for r in records)
    mine = [r for r in records if r["pid"] == summary["pid"]]
    assert mine, "no abort lines for the workload"
    r = mine[0]
    assert {"time", "comm", "pid", "tid", "cpu", "cause", "site", "offset"} <= set(r)
    assert r["cpu"] == 0 and "rseq_op_" in r["site"]
    record_property("figure", f"{len(mine)}={summary['totals']['aborts']} abort lines")
    if not any("lost" in line for line in err):
        assert len(mine) == summary["totals"]["aborts"]
        per_tid: dict = {}
        for rec in mine:
            per_tid[rec["tid"]] = per_tid.get(rec["tid"], 0) + 1
        if isinstance(summary.get("threads"), dict):
            for tid, t in summary["threads"].items():
                assert per_tid.get(int(tid), 0) == t["aborts"]


def test_pid_filter_text_output_and_sigterm(bpf_ok, rseqtop_cmd):
    wl = workload.start(["--threads", "2", "--in-cs-delay", "200", "--signal-rate", "50", "--duration", "20"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    other = workload.start(PINNED, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tr = Trace(rseqtop_cmd + ["trace", "-p", str(wl.pid)])
        deadline = time.monotonic() + 20
        while len(tr.out) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tr.stop(signal.SIGTERM) == 0
    finally:
        for p in (wl, other):
            p.terminate()
            p.wait(timeout=10)
    assert tr.out[0].split()[:6] == ["TIME", "COMM", "PID", "TID", "CPU", "CAUSE"]
    # an abort that completes a storm ends in "  STORM (run N)" (docs/live-view.md)
    rows = [re.sub(r"  STORM \(run \d+\)$", "", line.rstrip("\n")).split() for line in tr.out[1:]]
    assert len(rows) >= 4
    assert all(r[2] == str(wl.pid) for r in rows)
    assert all(r[-1].startswith("+0x") and "rseq_op_" in r[-2] for r in rows)
    assert "Traceback" not in "".join(tr.err)


@pytest.mark.kernel
def test_storm_marks_equal_the_workloads_storms(traced, record_property):
    """Each abort event carries the thread's run of consecutive aborts in
    its section: the events whose run reaches K exactly are the storms, as
    many as the workload counted by the same rule (support.STORM_RUN)."""
    from support import STORM_RULE, storm_problem

    rc, records, err, _, summary = traced
    assert rc == 0
    mine = [r for r in records if r["pid"] == summary["pid"]]
    assert not any("lost" in line for line in err)
    assert len(mine) == summary["totals"]["aborts"]
    k = STORM_RULE[0]
    starts = sum(1 for r in mine if r["run"] == k)
    record_property("figure", f"{starts}={summary['totals']['storms']} storms")
    assert not storm_problem(summary), storm_problem(summary)
    assert starts == summary["totals"]["storms"]
    assert all(r["storm"] == (r["run"] >= k) for r in mine)
    assert max(r["run"] for r in mine) == summary["totals"]["max_abort_run"]
