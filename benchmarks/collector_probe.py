"""Attach rseqtop's collector and poll it every second until SIGINT/SIGTERM.

Used by benchmarks/run as the "collector" mode and for start-up timing:
prints `ATTACHED <seconds since launch>` and `FIRST <seconds>` on stdout.
"""

import signal
import sys
import threading
import time

T0 = time.monotonic()

from rseqtop.collector import Collector  # noqa: E402  (import time counts)


def main() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    interval = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    with Collector() as c:
        print(f"ATTACHED {time.monotonic() - T0:.3f}", flush=True)
        c.poll()
        print(f"FIRST {time.monotonic() - T0:.3f}", flush=True)
        while not stop.wait(interval):
            c.poll()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
