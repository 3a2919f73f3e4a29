"""Soak: the workload + `rseqtop export` scraped every second + the TUI, for
a while; prints RSS and open file descriptors of every rseqtop process at the
end of warm-up and at the end, and checks that the counts are still exact.

    benchmarks/soak.py --seconds 600        # the 10-minute figure
The test suite runs a one-minute version (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import free_port, wait_ready  # noqa: E402

from rseqtop import workload  # noqa: E402

PY = sys.executable


def tree(pid: int) -> list:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def usage(procs: list) -> dict:
    out = {}
    for p in procs:
        try:
            out[f"{p.name()}[{p.pid}]"] = {"rss_mb": p.memory_info().rss / 2**20, "fds": p.num_fds()}
        except psutil.Error:
            pass
    return out


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def metric_sum(text: str, name: str, comm: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'comm="{comm}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def soak(seconds: float, warmup_fraction: float = 0.25) -> dict:
    workload.build()
    name = "soak" + uuid.uuid4().hex[:8]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exporter = subprocess.Popen([PY, "-m", "rseqtop", "export", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    session = f"rseqtop-soak-{os.getpid()}"
    tui_pid = None
    work = None
    try:
        wait_ready(base, exporter)
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                        f"cd {REPO} && {PY} -m rseqtop -d 1 --comm '^{name}$'"], check=True)
        tui_pid = int(subprocess.run(["tmux", "list-panes", "-t", session, "-F", "#{pane_pid}"],
                                     capture_output=True, text=True, check=True).stdout.strip())
        time.sleep(2)
        work = workload.start(["--threads", "4", "--in-cs-delay", "1000", "--signal-rate", "200",
                               "--duration", str(seconds), "--name", name])
        t0 = time.monotonic()
        warm_at = t0 + seconds * warmup_fraction
        samples = []
        warm = None
        while work.poll() is None:
            tick = time.monotonic()
            scrape(base + "/metrics")
            if tick >= warm_at and warm is None:
                warm = usage(tree(exporter.pid) + tree(tui_pid))
            if int(tick - t0) % 10 == 0:
                samples.append(usage(tree(exporter.pid) + tree(tui_pid)))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        out, _ = work.communicate()
        summary = workload.parse_summary(out)
        end = usage(tree(exporter.pid) + tree(tui_pid))
        time.sleep(2.5)  # a TUI refresh and a scrape after the end
        exported = metric_sum(scrape(base + "/metrics"), "rseqtop_aborts_total", name)
        # the TUI's 1 s refresh can lag on a loaded machine: read its screen
        # until the final count shows, for at most 15 s
        deadline = time.monotonic() + 15
        while True:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
            row = next((line for line in screen.splitlines() if re.search(rf"\b{summary['pid']}\b", line)), "")
            if str(summary["totals"]["aborts"]) in row.split() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {"seconds": seconds, "name": name, "truth": summary["totals"]["aborts"],
                "exported": exported, "tui_row": row.strip(), "warm": warm or {}, "end": end,
                "samples": samples}
    finally:
        if work is not None and work.poll() is None:
            work.kill()
        subprocess.run(["tmux", "kill-session", "-t", session], stderr=subprocess.DEVNULL, check=False)
        if exporter.poll() is None:
            exporter.terminate()
            try:
                exporter.wait(20)
            except subprocess.TimeoutExpired:
                exporter.kill()


def report(res: dict) -> str:
    lines = [f"soak {res['seconds']:.0f} s: workload aborts {res['truth']}, exported {res['exported']:.0f}, "
             f"TUI row: {res['tui_row']}"]
    for proc, end in res["end"].items():
        warm = res["warm"].get(proc)
        if warm:
            growth = 100.0 * (end["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"]
            lines.append(f"  {proc}: RSS {warm['rss_mb']:.1f} -> {end['rss_mb']:.1f} MiB ({growth:+.1f}%), "
                         f"fds {warm['fds']} -> {end['fds']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("soak.py: run as root", file=sys.stderr)
        return 1
    res = soak(a.seconds)
    print(json.dumps(res, indent=1) if a.json else report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
