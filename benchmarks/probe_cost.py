"""Per-probe BPF cost (kernel.bpf_stats_enabled): run time per event and the
CPU share of each rseqtop program, during a workload configuration.

    benchmarks/probe_cost.py [--config preemption-heavy] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rseqtop import workload  # noqa: E402
from rseqtop.collect import Collector  # noqa: E402

NCPU = os.cpu_count() or 1
CONFIGS = {
    "fast path": ["--threads", str(NCPU), "--op", "counter"],
    "preemption-heavy": ["--threads", str(8 * NCPU), "--yield", "--op", "counter"],
    "abort-heavy": ["--threads", str(NCPU), "--op", "delay", "--in-cs-delay", "2000", "--signal-rate", "2000"],
    # one thread preempted again and again by the same task (a noisy neighbour)
    "one antagonist": ["--threads", "1", "--cpus", str(NCPU - 1), "--op", "counter", "--antagonist", "hog",
                       "--antagonist-rate", "5000", "--antagonist-spin", "5"],
}
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def prog_stats(collector) -> dict:
    out = {}
    for name, fn in collector.bpf.funcs.items():
        info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
        ns = int(re.search(r"^run_time_ns:\s*(\d+)", info, re.M).group(1))
        cnt = int(re.search(r"^run_cnt:\s*(\d+)", info, re.M).group(1))
        out[name.decode() if isinstance(name, bytes) else name] = (ns, cnt)
    return out


def measure(config: str, seconds: float, defines: dict | None = None, quiet: bool = False) -> list:
    """defines: extra -D flags of the BPF program (e.g. RSEQTOP_NO_PREEMPTERS,
    the baseline of benchmarks/bench.py --switch-cost)."""
    old = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        with Collector(sizes=defines) as c:
            before = prog_stats(c)
            t0 = time.monotonic()
            summary = workload.run(CONFIGS[config] + ["--duration", str(seconds)], timeout=seconds + 60)
            wall = time.monotonic() - t0
            after = prog_stats(c)
    finally:
        STATS.write_text(old)
    rows = []
    for name in sorted(after):
        ns = after[name][0] - before.get(name, (0, 0))[0]
        cnt = after[name][1] - before.get(name, (0, 0))[1]
        rows.append((name, cnt, cnt / wall, ns / cnt if cnt else 0.0, 100.0 * ns / 1e9 / wall / NCPU))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows), 0.0, sum(r[4] for r in rows)))
    if not quiet:
        print(f"{config}: {summary['ops_per_second']:.3e} ops/s over {wall:.1f} s")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=list(CONFIGS), default="preemption-heavy")
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    rows = measure(a.config, a.seconds)
    print("| program | events | events/s | ns/event | CPU % of the machine |")
    print("|---|---|---|---|---|")
    for name, cnt, rate, ns, cpu in rows:
        print(f"| {name} | {cnt} | {rate:.0f} | {ns:.0f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
