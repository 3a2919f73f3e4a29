"""Scrape latency and RSS of `rseqtop export`'s metrics path against SyntheticSource.

    python benchmarks/scrape_latency.py                 # 10,000 series, 200 scrapes, 20 s soak
    python benchmarks/scrape_latency.py --soak 600      # the 10-minute soak

Serves the real HTTP server in-process on loopback and scrapes it with a real
client. Targets: p99 < 100 ms; RSS flat within 5 % over the soak (compared
after a warm-up). Prints figures; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
from common import timed_get  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from rseqtop.exporter.metrics import RseqCollector  # noqa: E402
from rseqtop.exporter.server import ExporterServer  # noqa: E402
from rseqtop.model.synthetic import SyntheticSource  # noqa: E402


def count_series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def serve(source, labels: str):
    """An exporter on a free loopback port over `source`: (server, metrics url)."""
    reg = CollectorRegistry()
    reg.register(RseqCollector(source, labels=labels, max_series=100000, identity=None))
    srv = ExporterServer(("127.0.0.1", 0), reg)
    srv.ready_event.set()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.port}/metrics"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=410, help="synthetic processes (default 410: ~10,000 series)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--labels", default="pid", choices=("comm", "pid", "tid"))
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--soak", type=float, default=20.0, help="RSS soak duration in seconds (600 = 10 minutes)")
    args = ap.parse_args(argv)

    synthetic = SyntheticSource(args.processes, args.threads)
    snap = synthetic.poll()
    t0 = time.perf_counter()
    for _ in range(5):
        synthetic.poll()
    poll_ms = (time.perf_counter() - t0) / 5 * 1e3

    class Frozen:
        """The same snapshot every time: measures the exporter, not the data generator."""

        def poll(self):
            return snap

        def reap(self):
            return 0

    figures = {}
    for label, source in (("exporter (pre-built snapshot)", Frozen()),
                          ("end to end (SyntheticSource.poll at scrape time)", synthetic)):
        srv, url = serve(source, args.labels)
        _, body = timed_get(url)
        cpu0 = time.process_time()
        lat = sorted(timed_get(url)[0] for _ in range(args.scrapes))
        cpu = (time.process_time() - cpu0) / args.scrapes * 1e3  # server, source and client: one process
        p50 = statistics.median(lat) * 1e3
        p99 = lat[min(len(lat) - 1, int(round(0.99 * len(lat))) - 1)] * 1e3
        figures[label] = p99
        print(f"{label}: series {count_series(body.decode())}, body {len(body) / 1024:.0f} KiB; latency p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms, max {lat[-1] * 1e3:.1f} ms over {len(lat)} scrapes (target p99 < 100 ms); "
              f"CPU {cpu:.1f} ms a scrape (this process: server, source and client)")
        srv.shutdown()
        srv.server_close()
    print(f"SyntheticSource.poll alone: {poll_ms:.1f} ms per call (data generation, not exporter work)")
    p99 = figures["exporter (pre-built snapshot)"]

    srv, url = serve(synthetic, args.labels)

    proc = psutil.Process()
    warm = min(30.0, args.soak / 4)
    start = time.monotonic()
    rss0 = None
    samples = []
    while time.monotonic() - start < args.soak:
        t0 = time.monotonic()
        timed_get(url)
        if rss0 is None and t0 - start >= warm:
            rss0 = proc.memory_info().rss
        if rss0 is not None:
            samples.append(proc.memory_info().rss)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    srv.shutdown()
    if not samples:
        samples = [proc.memory_info().rss]
        rss0 = samples[0]
    rss1 = samples[-1]
    drift = (max(samples) - rss0) / rss0 * 100
    print(f"RSS over {args.soak:.0f} s soak (1 scrape/s, after {warm:.0f} s warm-up): "
          f"start {rss0 / 2**20:.1f} MiB, end {rss1 / 2**20:.1f} MiB, max {max(samples) / 2**20:.1f} MiB, "
          f"growth {drift:+.1f} % (target within 5 %)")
    end_to_end = figures["end to end (SyntheticSource.poll at scrape time)"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    # each target on its own: the end-to-end p99 is the one users see
    print(f"targets: exporter p99 {verdict(p99 < 100)}, end-to-end p99 {verdict(end_to_end < 100)}, "
          f"RSS growth {verdict(drift <= 5)}")
    ok = p99 < 100 and end_to_end < 100 and drift <= 5
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
