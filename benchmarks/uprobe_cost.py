"""What --uprobes costs a program per run of an abort handler: the bundled
workload, one thread pinned to one CPU, every second attempt failing its
cpu_id check and jumping to the abort handler (--mismatch-to-abort
--mismatch-every 2), timed (wall and the process's CPU) without rseqtop,
with rseqtop attached, and with rseqtop --uprobes (the handlers probed).

    benchmarks/uprobe_cost.py [--ops 1000000] [--runs 3]

The figure is (CPU with --uprobes - CPU with rseqtop) / handler runs: the
breakpoint trap and the BPF program, per hit. Medians of --runs runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rseqtop import workload  # noqa: E402
from rseqtop.collect import Collector  # noqa: E402


def args_for(ops: int) -> list:
    cpu = str((os.cpu_count() or 1) - 1)
    return ["--threads", "1", "--cpus", cpu, "--op", "counter", "--ops", str(ops),
            "--mismatch-to-abort", "--mismatch-every", "2"]


def timed_run(args: list) -> tuple:
    """(wall seconds, CPU seconds, handler runs) of one workload run."""
    t0 = time.monotonic()
    proc = workload.start(args, stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"workload failed ({proc.returncode})")
    totals = workload.parse_summary(out)["totals"]
    return wall, ru.ru_utime + ru.ru_stime, totals["aborts"] + totals["cpu_mismatch"]


def median_runs(args: list, runs: int) -> tuple:
    got = [timed_run(args) for _ in range(runs)]
    return tuple(statistics.median(x[i] for x in got) for i in range(3))


def probe_workload(c: Collector) -> int:
    """Probe the workload binary's handlers (they stay probed for every
    later process of it): scan a running one."""
    proc = workload.start(["--threads", "1", "--duration", "1", "--op", "counter"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        c.handlers.scan_process(proc.pid)
    finally:
        proc.wait(timeout=60)
    st = workload.build().stat()
    return c.handlers.probed_in((st.st_dev, st.st_ino))


def measure(ops: int, runs: int) -> dict:
    args = args_for(ops)
    workload.build()
    rows = {"without rseqtop": median_runs(args, runs)}
    with Collector():
        rows["rseqtop"] = median_runs(args, runs)
    with Collector(uprobes=True) as c:
        probed = probe_workload(c)
        if probed == 0:
            raise SystemExit("no handler of the workload was probed")
        rows["rseqtop --uprobes"] = median_runs(args, runs)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=1_000_000, help="commits per run (as many handler runs)")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    rows = measure(a.ops, a.runs)
    print("| configuration | handler runs | wall s | CPU s | CPU ns per handler run |")
    print("|---|---|---|---|---|")
    for name, (wall, cpu, hits) in rows.items():
        print(f"| {name} | {hits:.0f} | {wall:.3f} | {cpu:.3f} | {1e9 * cpu / hits:.0f} |")
    base, probed = rows["rseqtop"], rows["rseqtop --uprobes"]
    per_hit = 1e9 * (probed[1] - base[1]) / probed[2]
    per_hit_wall = 1e9 * (probed[0] - base[0]) / probed[2]
    print(f"\n--uprobes costs {per_hit:.0f} ns of CPU ({per_hit_wall:.0f} ns of wall time) per abort-handler run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
