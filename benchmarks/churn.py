"""Churn at the highest rate this machine allows, with the collector polling
every second: exactness, map fill and the collector's memory.

    benchmarks/churn.py [--seconds 60] [--processes]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rseqtop import workload  # noqa: E402
from rseqtop.collect import Collector  # noqa: E402
from rseqtop.model.source import poll_and_reap  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--processes", action="store_true", help="churn child processes instead of threads")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("churn.py: run as root", file=sys.stderr)
        return 1
    me = psutil.Process()
    args = ["--threads", "8", "--in-cs-delay", "5000", "--duration", str(a.seconds)]
    args = (["--churn-processes"] if a.processes else ["--churn-threads", "--churn-rate", "10000"]) + args
    # The summary goes to a file: with thousands of children it is larger than
    # a pipe, and nobody reads the pipe until the run ends.
    out = tempfile.NamedTemporaryFile(prefix="rseqtop-churn-", suffix=".json", delete=False)
    args += ["--json-out", out.name]
    with Collector() as c:
        rss = [me.memory_info().rss]
        proc = workload.start(args, stdout=None)
        polls = []
        while proc.poll() is None:
            t0 = time.monotonic()
            poll_and_reap(c)  # as the front ends do
            polls.append(time.monotonic() - t0)
            rss.append(me.memory_info().rss)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        proc.wait()
        summary = workload.parse_summary(Path(out.name).read_text())
        os.unlink(out.name)
        snap = c.poll()
    maps = {m.name: m for m in snap.self_stats.maps}
    churn = summary["churn"]
    if a.processes:
        got: dict = {}
        for p in c.assembly.processes:  # every generation of recycled pids
            got[p.pid] = got.get(p.pid, 0) + p.counts.aborts
        seen = sum(got.get(int(pid), 0) for pid in summary["children"])
        print(f"process churn: {churn['created']} children in {summary['duration_s']:.0f} s "
              f"({churn['per_second']:.0f}/s); aborts: workload {summary['children_totals']['aborts']}, "
              f"rseqtop {seen} (pids still in the maps; older dead ones were dropped by design)")
    else:
        counted = snap.process(summary["pid"]).counts.aborts
        print(f"thread churn: {churn['created']} threads in {summary['duration_s']:.0f} s "
              f"({churn['per_second']:.0f}/s); aborts: workload {summary['totals']['aborts']}, rseqtop {counted} "
              f"({'exact' if counted == summary['totals']['aborts'] else 'MISMATCH'})")
    print("maps: " + ", ".join(f"{m.name} {m.used}/{m.capacity} dropped {m.dropped}" for m in maps.values()))
    print(f"collector RSS: start {rss[1] / 2**20:.1f} MiB, end {rss[-1] / 2**20:.1f} MiB, max {max(rss) / 2**20:.1f} MiB; "
          f"poll p50 {sorted(polls)[len(polls) // 2] * 1e3:.1f} ms, max {max(polls) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
