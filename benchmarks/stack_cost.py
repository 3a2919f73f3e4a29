"""What --stacks costs per abort: the abort program's run time per event
(kernel.bpf_stats_enabled) and the workload's abort rate, with rseqtop
attached without and with --stacks, on the abort-heavy configuration with
two call paths (the bundled workload, built with frame pointers).

    benchmarks/stack_cost.py [--seconds 5] [--runs 3]

The figure is ns per abort of on_rseq_ip_fixup with --stacks minus without:
the user stack walk (frame pointers), its hash and the count map update.
Medians of --runs runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_cost import STATS, prog_stats  # noqa: E402

from rseqtop import workload  # noqa: E402
from rseqtop.collect import Collector  # noqa: E402

NCPU = os.cpu_count() or 1
ARGS = ["--threads", str(NCPU), "--op", "delay", "--in-cs-delay", "2000", "--signal-rate", "2000",
        "--call-paths", "2"]
PROGRAM = "on_rseq_ip_fixup"


def one_run(stacks: bool, seconds: float) -> tuple:
    """(ns per abort of the abort program, workload aborts per second, aborts)."""
    with Collector(stacks=stacks) as c:
        before = prog_stats(c)[PROGRAM]
        summary = workload.run(ARGS + ["--duration", str(seconds)], timeout=seconds + 60)
        after = prog_stats(c)[PROGRAM]
        if stacks:
            c.poll()
            counted = sum(s.count for s in c.stack_table() if s.pid == summary["pid"])
            if counted != summary["totals"]["aborts"]:
                raise SystemExit(f"stacks counted {counted} aborts, the workload {summary['totals']['aborts']}")
    ns, cnt = after[0] - before[0], after[1] - before[1]
    return ns / cnt if cnt else 0.0, summary["totals"]["aborts"] / summary["duration_s"], summary["totals"]["aborts"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    workload.build()
    old = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        got = {False: [], True: []}
        for _ in range(a.runs):
            for stacks in (False, True):  # interleaved: drift in machine load hits both
                got[stacks].append(one_run(stacks, a.seconds))
    finally:
        STATS.write_text(old)
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in got.items()}
    print(f"workload: {' '.join(ARGS)}, {a.seconds:g} s, median of {a.runs} runs")
    print("| rseqtop | ns per abort (abort program) | workload aborts/s |")
    print("|---|---|---|")
    for stacks in (False, True):
        ns, rate, _ = med[stacks]
        print(f"| {'--stacks' if stacks else 'default'} | {ns:.0f} | {rate:.0f} |")
    print(f"--stacks costs {med[True][0] - med[False][0]:.0f} ns per abort")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
