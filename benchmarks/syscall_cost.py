"""What --syscalls costs every system call on the machine: ns per getppid()
untraced, with the collector's syscall accounting, and with it as planned
for 6.19+ (the regular programs plus the raw_syscalls twins that keep the
counts exact there, see docs/kernels.md). Rounds interleave the modes;
medians are printed.

    benchmarks/syscall_cost.py [--rounds 5] [--calls 5000000]

On a kernel before 6.19 the last mode is the same program as 6.19+ gets,
attached here by planning for 6.19 (rseqtop.kernel.facts).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rseqtop.collect import Collector  # noqa: E402
from rseqtop.kernel import facts  # noqa: E402

LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def build(tmp: Path) -> Path:
    src, exe = tmp / "getppid.c", tmp / "getppid"
    src.write_text(LOOP)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def ns_per_call(exe: Path, calls: int) -> float:
    out = subprocess.run([str(exe), str(calls)], check=True, capture_output=True, text=True).stdout
    return float(out)


def measure(mode: str, exe: Path, calls: int) -> float:
    if mode == "untraced":
        return ns_per_call(exe, calls)
    saved = facts.PREEMPTIBLE_TRACEPOINTS_SINCE
    if mode.endswith("(6.19+ plan)"):
        facts.PREEMPTIBLE_TRACEPOINTS_SINCE = (0, 0)
    try:
        with Collector(syscalls=True) as c:
            twins = [e for e in c.plan.twins if e.startswith("sys_")]
            if mode.endswith("(6.19+ plan)") and not twins:
                raise SystemExit("no syscall twins on this machine (x86_64 only)")
            return ns_per_call(exe, calls)
    finally:
        facts.PREEMPTIBLE_TRACEPOINTS_SINCE = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5_000_000)
    args = ap.parse_args()
    modes = ("untraced", "--syscalls", "--syscalls (6.19+ plan)")
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        got = {m: [] for m in modes}
        for _ in range(args.rounds):
            for m in modes:
                got[m].append(measure(m, exe, args.calls))
    base = statistics.median(got["untraced"])
    print(f"{'mode':<26} {'ns/getppid':>11} {'added ns':>9}   rounds")
    for m in modes:
        med = statistics.median(got[m])
        print(f"{m:<26} {med:>11.1f} {med - base:>9.1f}   {' '.join(f'{x:.1f}' for x in got[m])}")


if __name__ == "__main__":
    main()
