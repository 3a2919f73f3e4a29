"""CPU cost of the live view itself, on synthetic data (no BPF).

    .venv/bin/python benchmarks/tui_cpu.py [--seconds 30] [--processes 200] [--threads 10]
                                           [--delay 1] [--mode headless|tmux] [--threads-view]

headless: the app runs under Textual's headless driver (App.run_test) in this
process; CPU = this process's user+system time over the measured window.
tmux: the app runs in a real (tmux) terminal in a child process; CPU is read
from /proc/PID/stat. Both print the percentage of one core; the target is < 5%.
The SyntheticSource's own cost (building 2,000-thread snapshots) is included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def headless(args) -> tuple:
    from rseqtop.model.synthetic import SyntheticSource
    from rseqtop.tui.app import make_app

    app = make_app(SyntheticSource(args.processes, args.threads), delay=args.delay)
    async with app.run_test(size=(200, 50)) as pilot:
        if args.threads_view:
            await pilot.press("H")
        await asyncio.sleep(max(2.0, 2 * args.delay))  # warm up: first polls, first full layout
        c0, t0, p0 = cpu_seconds(), time.monotonic(), app.model.polls
        await asyncio.sleep(args.seconds)
        c1, t1, p1 = cpu_seconds(), time.monotonic(), app.model.polls
        await pilot.press("q")
    return c1 - c0, t1 - t0, p1 - p0


def proc_cpu(pid: int, tid: Optional[int] = None) -> float:
    """CPU seconds of process `pid`, or of its thread `tid`."""
    stat = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tmux(args) -> tuple:
    session = f"rseqtop-bench-{os.getpid()}"
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
            f"from rseqtop.model.synthetic import SyntheticSource; from rseqtop.tui.app import make_app; "
            f"app = make_app(SyntheticSource({args.processes}, {args.threads}), delay={args.delay}); "
            f"app.threads_mode = {bool(args.threads_view)}; app.run()")
    pidfile = Path(f"/tmp/{session}.pid")
    cmd = f"echo $$ > {pidfile}; exec {shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd], check=True)
    try:
        while not pidfile.exists() or not pidfile.read_text().strip():
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        time.sleep(max(3.0, 2 * args.delay))
        c0, m0, t0 = proc_cpu(pid), proc_cpu(pid, pid), time.monotonic()
        time.sleep(args.seconds)
        c1, m1, t1 = proc_cpu(pid), proc_cpu(pid, pid), time.monotonic()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        pidfile.unlink(missing_ok=True)
    # The main thread runs Textual and rseqtop's front end; the others are
    # the poll worker (here the SyntheticSource building its snapshots) and
    # Textual's terminal input and output threads.
    print(f"main thread {100.0 * (m1 - m0) / (t1 - t0):.2f}%  other threads (poll worker, terminal I/O) "
          f"{100.0 * ((c1 - c0) - (m1 - m0)) / (t1 - t0):.2f}%")
    return c1 - c0, t1 - t0, None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--processes", type=int, default=200)
    p.add_argument("--threads", type=int, default=10)
    p.add_argument("--delay", type=float, default=1.0)
    p.add_argument("--mode", choices=("headless", "tmux"), default="headless")
    p.add_argument("--threads-view", action="store_true", help="measure the thread view (H) instead")
    args = p.parse_args()
    cpu, wall, polls = asyncio.run(headless(args)) if args.mode == "headless" else tmux(args)
    view = "threads" if args.threads_view else "processes"
    print(f"mode {args.mode}  view {view}  {args.processes} processes x {args.threads} threads  "
          f"refresh {args.delay:g}s  window {wall:.1f}s" + (f"  polls {polls}" if polls is not None else ""))
    print(f"cpu {cpu:.2f}s = {100.0 * cpu / wall:.2f}% of one core (target < 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
