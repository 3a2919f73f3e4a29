"""Attach rseqtop's collector and poll it every second until SIGINT/SIGTERM.

    collector_probe.py [INTERVAL] [--syscalls] [--no-preempters]

Used by benchmarks/run as the "collector" mode and for start-up timing:
prints `ATTACHED <seconds since launch>` and `FIRST <seconds>` on stdout.
"""

import signal
import sys
import threading
import time

T0 = time.monotonic()

from rseqtop.collect import Collector  # noqa: E402  (import time counts)
from rseqtop.model.source import poll_and_reap  # noqa: E402


def main() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    interval = float(args[0]) if args else 1.0
    # --no-preempters: without the who-preempted bookkeeping in sched_switch
    defines = {"RSEQTOP_NO_PREEMPTERS": 1} if "--no-preempters" in sys.argv else None
    with Collector(syscalls="--syscalls" in sys.argv, sizes=defines) as c:
        print(f"ATTACHED {time.monotonic() - T0:.3f}", flush=True)
        c.poll()
        print(f"FIRST {time.monotonic() - T0:.3f}", flush=True)
        while not stop.wait(interval):
            poll_and_reap(c)  # as the front ends do
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
