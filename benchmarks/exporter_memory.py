"""Memory of `rseqtop export`: both processes' RSS after attach and over a
scraping run, next to issue 14's target (both together at most 64 MB RSS,
and flat over 10 minutes of scraping).

    python benchmarks/exporter_memory.py                        # 2 minutes, scraped every second
    python benchmarks/exporter_memory.py --idle-threads 10000   # 10,000 idle threads on the machine
    python benchmarks/exporter_memory.py --duration 600 --compare /work/main   # side by side with another checkout
    python benchmarks/exporter_memory.py --churn-processes 200  # 200 short-lived processes a second instead

Runs as root: the real exporter on loopback while the bundled workload runs
(2 workers with signal-induced aborts, plus --idle-threads sleepers; or,
with --churn-processes, 2 slots forking short-lived children that abort
by preemption, which the exporter keeps and then reaps). With
--compare DIR, the exporter of the rseqtop checkout DIR runs at the same
time on another port (its files are only read: no byte-code is written
there). RSS is the kernel's (shared pages count in both processes, as RSS
does); PSS is shown next to it. Prints figures; exits 1 when a target is
missed by this checkout's exporter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import psutil  # noqa: E402
from common import free_port, wait_ready  # noqa: E402

from rseqtop import workload  # noqa: E402

TARGET_MB = 64.0
FLAT_PCT = 5.0  # growth after the first scrapes that still counts as flat
MB = 2 ** 20
LLVM_MARKS = ("libbcc", "libLLVM", "libclang")


class Exporter:
    def __init__(self, name: str, tree: Path, labels: str):
        self.name, self.port = name, free_port()
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "rseqtop", "export", "--labels", labels,
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level", "warn"],
                                     cwd=str(tree), env=env, stdout=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        self.samples: list = []  # (seconds, collector rss, http rss, collector pss, http pss)
        self.scraped: list = []  # (series, {map: entries}) of the first and the latest scrape

    def processes(self) -> tuple:
        collector = psutil.Process(self.proc.pid)
        kids = collector.children()
        if len(kids) != 1:
            raise RuntimeError(f"{self.name}: expected one HTTP process, found {[k.pid for k in kids]}")
        return collector, kids[0]

    def sample(self, t: float) -> None:
        row = [t]
        procs = self.processes()
        row += [p.memory_info().rss for p in procs]
        row += [p.memory_full_info().pss for p in procs]
        self.samples.append(tuple(row))

    def llvm_mapped(self) -> bool:
        text = Path(f"/proc/{self.proc.pid}/maps").read_text()
        return any(m in text for m in LLVM_MARKS)

    def scrape(self) -> int:
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as r:
            body = r.read()
        # what grows, if anything does: series and the BPF maps' entries
        lines = body.decode().splitlines()
        maps = {}
        for line in lines:
            if line.startswith('rseqtop_map_entries{map="'):
                name, value = line[len('rseqtop_map_entries{map="'):].split('"} ')
                maps[name] = float(value)
        series = sum(1 for line in lines if line and not line.startswith("#"))
        if not self.scraped:
            self.scraped.append((series, maps))
        self.scraped[1:] = [(series, maps)]
        return len(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def report(e: Exporter, warm: int) -> bool:
    s = e.samples
    first, base, last = s[0], s[min(warm, len(s) - 1)], s[-1]
    peak = max(s, key=lambda r: r[1] + r[2])
    total = lambda r: (r[1] + r[2]) / MB  # noqa: E731
    growth = (total(last) - total(base)) / total(base) * 100
    print(f"\n{e.name}: LLVM/libbcc mapped in the collector: {'yes' if e.llvm_mapped() else 'no'}")
    print(f"  {'':24} {'collector':>10} {'http':>8} {'both':>8}   (MiB RSS; PSS both)")
    for label, r in (("after attach", first), (f"after {warm} scrapes", base), ("peak", peak), ("end", last)):
        print(f"  {label:24} {r[1] / MB:10.1f} {r[2] / MB:8.1f} {total(r):8.1f}   ({(r[3] + r[4]) / MB:.1f})")
    marks = [r for i, r in enumerate(s) if i == 0 or int(r[0] // 60) > int(s[i - 1][0] // 60)] + [last]
    print("  both, by minute:        " + " ".join(f"{total(r):.1f}" for r in marks))
    if e.scraped:
        (series0, maps0), (series1, maps1) = e.scraped[0], e.scraped[-1]
        grew = [f"{m} {maps0.get(m, 0):.0f} -> {n:.0f}" for m, n in sorted(maps1.items()) if n != maps0.get(m, 0)]
        print(f"  first -> last scrape:   {series0} -> {series1} series; map entries: {', '.join(grew) or 'unchanged'}")
    met_size = total(peak) <= TARGET_MB
    met_flat = growth <= FLAT_PCT
    print(f"  target both <= {TARGET_MB:.0f} MiB RSS: {'met' if met_size else 'MISSED'} (peak {total(peak):.1f}); "
          f"flat (growth <= {FLAT_PCT:.0f}% after warm-up): {'met' if met_flat else 'MISSED'} "
          f"({growth:+.1f}%, {total(last) - total(base):+.1f} MiB)")
    return met_size and met_flat


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of scraping (600 = 10 minutes)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (default 1)")
    ap.add_argument("--idle-threads", type=int, default=0, help="idle threads the workload adds (e.g. 10000)")
    ap.add_argument("--idle-period", type=int, default=200, help="their wake-up period in ms (default 200)")
    ap.add_argument("--churn-processes", type=float, default=0, metavar="HZ",
                    help="short-lived child processes a second instead of the signal workload (e.g. 200)")
    ap.add_argument("--labels", default="comm", choices=("comm", "pid", "tid"))
    ap.add_argument("--compare", type=Path, default=None, metavar="DIR",
                    help="also run the exporter of this rseqtop checkout, side by side (e.g. /work/main)")
    ap.add_argument("--warm", type=int, default=10, help="scrapes before the flatness baseline (default 10)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("exporter_memory: run as root (the exporter attaches BPF probes)", file=sys.stderr)
        return 2

    load = ["--threads", "2", "--duration", str(args.duration + 300)]
    if args.churn_processes:
        load += ["--churn-processes", "--churn-rate", str(args.churn_processes), "--in-cs-delay", "5000"]
    else:
        load += ["--signal-rate", "200"]
    if args.idle_threads:
        load += ["--idle-threads", str(args.idle_threads), "--idle-period", str(args.idle_period)]
    wl = workload.start(load, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exporters = [Exporter("this checkout", ROOT, args.labels)]
    if args.compare:
        exporters.append(Exporter(f"{args.compare}", args.compare.resolve(), args.labels))
    try:
        for e in exporters:
            wait_ready(e.base, e.proc, timeout=300)
        print(f"workload: pid {wl.pid}, {len(os.listdir(f'/proc/{wl.pid}/task'))} threads; "
              f"scraping every {args.interval:g} s for {args.duration:g} s ({args.labels} labels)")
        start = time.monotonic()
        for e in exporters:
            e.sample(0.0)
        n = 0
        while time.monotonic() - start < args.duration:
            t0 = time.monotonic()
            for e in exporters:
                e.scrape()
                e.sample(t0 - start)
            n += 1
            time.sleep(max(0.0, args.interval - (time.monotonic() - t0)))
        print(f"{n} scrapes each")
        ok = [report(e, args.warm) for e in exporters]
    finally:
        for e in exporters:
            e.stop()
        wl.terminate()
        wl.wait()
    return 0 if ok[0] else 1


if __name__ == "__main__":
    sys.exit(main())
