"""`rseqtop demo`: run the bundled workload so that it aborts visibly, and
open the live view on it. Quitting the view stops the workload."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from rseqtop.commands.options import positive_float, positive_int
from rseqtop.errors import UserError

EPILOG = """examples:
  rseqtop demo                  # 4 threads per CPU, preempted and signalled inside their sections
  rseqtop demo --threads 2      # fewer threads: fewer preemptions, fewer aborts
  rseqtop demo --signal-rate 0  # only preemption and migration aborts

The workload is `rseqtop workload` (see `rseqtop workload --help`); it stops
when you quit the view (q) and its own exact abort count is printed then."""

DURATION = 24 * 3600  # the workload runs until the view quits


def configure(parser) -> None:
    parser.add_argument("--threads", type=positive_int, help="workload threads (default: 4 per CPU)")
    parser.add_argument("--in-cs-delay", type=int, default=300, metavar="N",
                        help="delay-loop iterations inside the delay section (default 300)")
    parser.add_argument("--signal-rate", type=float, default=50.0, metavar="HZ",
                        help="SIGUSR1 to the workers, HZ in total (default 50; 0: none)")
    parser.add_argument("-d", "--delay", type=positive_float, default=1.0, metavar="SECONDS",
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)


def workload_args(args) -> list:
    threads = args.threads or 4 * (len(os.sched_getaffinity(0)) or 1)
    out = ["--threads", threads, "--in-cs-delay", max(0, args.in_cs_delay), "--duration", DURATION,
           "--name", "rseqtop-demo"]
    if args.signal_rate and args.signal_rate > 0:
        out += ["--signal-rate", args.signal_rate]
    return [str(a) for a in out]


def stop(proc: subprocess.Popen) -> dict | None:
    """SIGTERM the workload, wait, and return its summary (None if it had none)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    try:
        return json.loads(out) if out else None
    except ValueError:
        return None


def run(args) -> int:
    from rseqtop import workload
    from rseqtop.collect import Collector
    from rseqtop.tui.launch import run_tui

    if args.ebpf:
        sys.stdout.write(Collector(pids=[os.getpid()]).generate())
        return 0
    if not sys.stdout.isatty():
        raise UserError("rseqtop demo needs a terminal (it opens the live view)", exit_code=2)
    # The demo shows everything, registrations and membarrier calls included:
    # a demo is not production, so the syscall tracepoints' cost is fine here.
    collector = Collector(syscalls=True)
    collector.attach()  # first: a missing privilege fails before anything starts
    try:
        proc = workload.start(workload_args(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except BaseException:
        collector.close()
        raise
    summary = None
    try:
        collector.set_filter(pids=[proc.pid])
        run_tui(collector, args.delay, f"the demo workload (pid {proc.pid})")
    finally:
        summary = stop(proc)
    if summary:
        totals = summary.get("totals", {})
        sys.stdout.write(f"rseqtop demo: the workload (pid {proc.pid}) counted {totals.get('aborts', '?')} kernel "
                         f"aborts and {totals.get('commits', '?')} commits itself (rseqtop attached before it started, "
                         f"so its ABORTS total counts the same aborts).\n")
    return 0
