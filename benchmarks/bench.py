"""Measure rseqtop's overhead, loss, start-up and front-end cost.

Repetitions are interleaved (every mode once per round, in a rotating
order) so that machine noise hits every mode alike; figures are medians with
min..max. Prints a Markdown table and writes the same as JSON under
benchmarks/results/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import free_port, wait_ready  # noqa: E402

from rseqtop import workload  # noqa: E402

PY = sys.executable
NCPU = os.cpu_count() or 1
CONFIGS = {
    "fast path": ["--threads", str(NCPU), "--op", "counter"],
    "preemption-heavy": ["--threads", str(8 * NCPU), "--yield", "--op", "counter"],
    "abort-heavy": ["--threads", str(NCPU), "--op", "delay", "--in-cs-delay", "2000", "--signal-rate", "2000"],
}
BPFTRACE_PROG = 'BEGIN { printf("ATTACHED\\n"); } tracepoint:rseq:rseq_ip_fixup { @[tid] = count(); }'


def wait_line(proc, pattern: str, timeout: float = 30.0) -> tuple[str, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited before '{pattern}'")
            continue
        if re.search(pattern, line):
            return line, time.monotonic() - t0
    raise RuntimeError(f"timed out waiting for '{pattern}'")


class Tracer:
    """One observer running beside the workload."""

    name = "none"

    def start(self) -> None:
        self.proc = None

    def rss_mb(self) -> float:
        if not getattr(self, "proc", None):
            return 0.0
        try:
            p = psutil.Process(self.proc.pid)
            return sum(x.memory_info().rss for x in [p, *p.children(recursive=True)]) / 2**20
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if getattr(self, "proc", None) and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Perf(Tracer):
    name = "perf stat"

    def start(self):
        # No command: perf counts system-wide until SIGINT (a "sleep" child
        # would outlive it).
        self.proc = subprocess.Popen(["perf", "stat", "-e", "rseq:*", "-a"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # perf attaches in ~0.05 s


def start_bpftrace():
    """bpftrace with its output in a file: it prints its maps at exit and
    must not block on a pipe nobody reads."""
    import tempfile

    out = tempfile.NamedTemporaryFile(prefix="rseqtop-bench-bt-", suffix=".out", delete=False)
    proc = subprocess.Popen(["bpftrace", "-e", BPFTRACE_PROG], stdout=out, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while b"ATTACHED" not in Path(out.name).read_bytes():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("bpftrace did not attach")
        time.sleep(0.005)
    return proc, out.name


class Bpftrace(Tracer):
    name = "bpftrace"

    def start(self):
        self.proc, self.out = start_bpftrace()

    def stop(self):
        super().stop()
        os.unlink(self.out)


class CollectorMode(Tracer):
    name = "rseqtop collector"
    tree = REPO  # the checkout whose rseqtop runs (--compare adds another's)

    def start(self):
        self.proc = subprocess.Popen([PY, str(self.tree / "benchmarks/collector_probe.py")], stdout=subprocess.PIPE,
                                     text=True, cwd=self.tree)
        wait_line(self.proc, "FIRST")


class CollectorNoPreemptersMode(Tracer):
    """The collector without the who-preempted bookkeeping in sched_switch:
    the baseline of what that costs (see also --switch-cost)."""

    name = "rseqtop collector (no preempters)"

    def start(self):
        self.proc = subprocess.Popen([PY, str(REPO / "benchmarks/collector_probe.py"), "--no-preempters"],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)
        wait_line(self.proc, "FIRST")


class CollectorSyscallsMode(Tracer):
    """The opt-in syscall accounting: what it adds to every system call."""

    name = "rseqtop collector --syscalls"

    def start(self):
        self.proc = subprocess.Popen([PY, str(REPO / "benchmarks/collector_probe.py"), "--syscalls"],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)
        wait_line(self.proc, "FIRST")


class Json(Tracer):
    """`rseqtop --json`: shows threads, so it asks for mm_cid (sampled for
    50 ms after each refresh)."""

    name = "rseqtop --json"
    args: list = []
    tree = REPO

    def start(self):
        self.proc = subprocess.Popen([PY, "-m", "rseqtop", "--json", "-d", "1", *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=self.tree)
        wait_line(self.proc, "schema_version")
        # keep reading: a full pipe would stop it
        threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True).start()


class JsonMmCidAlways(Json):
    """The same with mm_cid recorded on every switch (the previous default)."""

    name = "rseqtop --json (mm_cid always)"
    args = ["--mm-cid-window", "0"]


class Export(Tracer):
    name = "rseqtop export (scraped 1/s)"

    def start(self):
        port = free_port()
        self.proc = subprocess.Popen([PY, "-m", "rseqtop", "export", f"--web.listen-address=127.0.0.1:{port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, self.proc)
        self.stop_scrape = threading.Event()

        def scrape():
            while not self.stop_scrape.wait(1.0):
                try:
                    urllib.request.urlopen(base + "/metrics", timeout=5).read()
                except OSError:
                    pass

        self.scraper = threading.Thread(target=scrape, daemon=True)
        self.scraper.start()

    def stop(self):
        self.stop_scrape.set()
        super().stop()


class Tui(Tracer):
    name = "rseqtop TUI (tmux)"

    def start(self):
        self.session = f"rseqtop-bench-{os.getpid()}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.session, "-x", "200", "-y", "50",
                        f"cd {REPO} && {PY} -m rseqtop -d 1"], check=True)
        pid = subprocess.run(["tmux", "list-panes", "-t", self.session, "-F", "#{pane_pid}"],
                             capture_output=True, text=True, check=True).stdout.strip()
        self.proc = None
        self.pane_pid = int(pid)
        time.sleep(2)

    def rss_mb(self):
        try:
            p = psutil.Process(self.pane_pid)
            return sum(x.memory_info().rss for x in [p, *p.children(recursive=True)]) / 2**20
        except psutil.Error:
            return 0.0

    def stop(self):
        subprocess.run(["tmux", "send-keys", "-t", self.session, "q"], check=False)
        for _ in range(20):
            if not psutil.pid_exists(self.pane_pid):
                break
            time.sleep(0.05)
        subprocess.run(["tmux", "kill-session", "-t", self.session], check=False, stderr=subprocess.DEVNULL)


MODES = [Tracer, Perf, Bpftrace, CollectorMode, CollectorNoPreemptersMode, CollectorSyscallsMode, Json,
         JsonMmCidAlways, Export, Tui]


def compared(modes: list, tree: Path) -> list:
    """modes, each mode that runs a checkout's rseqtop followed by the same
    mode running tree's (named "... [tree]"), interleaved in every round."""
    out = []
    for m in modes:
        out.append(m)
        if hasattr(m, "tree"):
            out.append(type(m.__name__ + "Compared", (m,), {"name": f"{m.name} [{tree}]", "tree": tree}))
    return out


def run_workload(args: list[str], seconds: float) -> dict:
    return workload.run(args + ["--duration", str(seconds)], timeout=seconds + 60)


def fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values) * scale
    return f"{med:.{digits}f} ({min(values) * scale:.{digits}f}..{max(values) * scale:.{digits}f})"


def overhead(reps: int, seconds: float, modes: list, configs: dict) -> dict:
    results = {c: {m.name: [] for m in modes} for c in configs}
    rss = {m.name: [] for m in modes}
    for rep in range(reps):
        order = modes[rep % len(modes):] + modes[: rep % len(modes)]
        for cname, args in configs.items():
            for mode in order:
                tracer = mode()
                tracer.start()
                try:
                    summary = run_workload(args, seconds)
                    rss[mode.name].append(tracer.rss_mb())
                finally:
                    tracer.stop()
                results[cname][mode.name].append(summary["ops_per_second"])
                print(f"  round {rep + 1} {cname:17s} {mode.name:28s} {summary['ops_per_second']:.3e} ops/s",
                      file=sys.stderr)
    return {"throughput": results, "rss_mb": rss}


def loss(seconds: float, quick: bool) -> dict:
    """Counted vs self-reported aborts at a high abort rate, and the trace
    stream's delivered vs lost events for shrinking ring buffers."""
    from rseqtop.collect import Collector

    args = ["--threads", str(2 * NCPU), "--op", "delay", "--in-cs-delay", "300", "--signal-rate", "20000",
            "--membarrier-rate", "2000", "--duration", str(seconds)]
    out = []
    for pages in ([64, 1] if quick else [64, 16, 4, 1]):
        delivered = [0]
        with Collector(sizes={"RSEQTOP_RINGBUF_PAGES": pages}) as c:
            c.open_events(lambda e: delivered.__setitem__(0, delivered[0] + 1))
            proc = workload.start(args)
            while proc.poll() is None:
                c.poll_events(50)
            for _ in range(20):
                c.poll_events(10)
            summary = workload.parse_summary(proc.communicate()[0])
            snap = c.poll()
            counted = snap.process(summary["pid"]).counts.aborts
            out.append({"ringbuf_pages": pages, "abort_rate_per_s": summary["totals"]["aborts"] / summary["duration_s"],
                        "self_reported": summary["totals"]["aborts"], "counted": counted,
                        "events_sent": snap.self_stats.events_sent, "events_delivered": delivered[0],
                        "events_lost": snap.self_stats.events_lost})
        print(f"  loss: {out[-1]}", file=sys.stderr)
    return {"runs": out}


def startup(reps: int) -> dict:
    res = {"rseqtop attached": [], "rseqtop first snapshot": [], "bpftrace attached": []}
    for _ in range(reps):
        t0 = time.monotonic()
        p = subprocess.Popen([PY, str(REPO / "benchmarks/collector_probe.py")], stdout=subprocess.PIPE, text=True,
                             cwd=REPO)
        wait_line(p, "ATTACHED")
        res["rseqtop attached"].append(time.monotonic() - t0)
        wait_line(p, "FIRST")
        res["rseqtop first snapshot"].append(time.monotonic() - t0)
        p.send_signal(signal.SIGINT)
        p.wait(10)
        t0 = time.monotonic()
        bt = Bpftrace()
        bt.start()
        res["bpftrace attached"].append(time.monotonic() - t0)
        bt.stop()
    return res


def front_ends(quick: bool) -> dict:
    """The front ends' own benchmarks (synthetic data, no BPF): their
    figure lines, as they print them."""
    out = {}
    for name, script, args in (
            ("TUI CPU, 2,000 threads in 200 processes, 1 s refresh", "tui_cpu.py",
             ["--seconds", "3" if quick else "30"]),
            ("exporter scrape latency, ~10,000 series", "scrape_latency.py",
             ["--scrapes", "10" if quick else "200", "--soak", "2" if quick else "60"])):
        r = subprocess.run([PY, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                           cwd=REPO, timeout=1800)
        lines = [l.strip() for l in r.stdout.splitlines() if re.search(r"cpu |p99|RSS|poll alone", l)]
        out[name] = lines or [(r.stderr.strip().splitlines() or ["no output"])[-1]]
    return out


SWITCH_COST_CONFIGS = ("preemption-heavy", "one antagonist")


def switch_cost(reps: int, seconds: float, configs) -> dict:
    """What the who-preempted bookkeeping adds per context switch: the
    sched_switch program's own run time per run (kernel.bpf_stats_enabled),
    with it and without it (RSEQTOP_NO_PREEMPTERS), interleaved, for
    benchmarks/probe_cost.py's configurations."""
    from probe_cost import measure

    out: dict = {}
    for config in configs:
        runs = out[config] = {"with": [], "without": []}
        for rep in range(reps):
            for variant in (("with", "without") if rep % 2 == 0 else ("without", "with")):
                rows = measure(config, seconds, {"RSEQTOP_NO_PREEMPTERS": 1} if variant == "without" else None,
                               quiet=True)
                ns = next((r[3] for r in rows if r[0] == "on_sched_switch"), None)
                if ns is not None:
                    runs[variant].append(ns)
                print(f"  switch cost {config} round {rep + 1} {variant:8s} preempters: {ns} ns per sched_switch",
                      file=sys.stderr)
    return out


def switch_cost_text(doc: dict) -> str:
    lines = ["**Who preempted, per context switch**: the sched_switch program's run time per run "
             "(kernel.bpf_stats_enabled) with the preempter bookkeeping and without (RSEQTOP_NO_PREEMPTERS)", "",
             "| configuration | with (ns) | without (ns) | added per context switch (ns) |", "|---|---|---|---|"]
    for config, runs in doc["switch_cost"].items():
        w, wo = runs["with"], runs["without"]
        if not w or not wo:
            lines.append(f"| {config} | n/a | n/a | n/a (no sched_switch program on this kernel) |")
            continue
        added = [a - b for a, b in zip(w, wo)]
        lines.append(f"| {config} | {fmt(w, digits=1)} | {fmt(wo, digits=1)} | {fmt(added, digits=1)} |")
    return "\n".join(lines)


def tp_configs(doc: dict) -> list:
    return list(doc["overhead"]["throughput"])


def markdown(doc: dict) -> str:
    lines = [f"Measured on {doc['machine']}, {doc['date']}, {doc['reps']} interleaved rounds of "
             f"{doc['seconds']} s per run; medians (min..max).", "",
             "**Overhead**: workload throughput relative to the untraced run of the same round "
             "(1.000 = no cost; the spread is this shared VM's noise)", "",
             "| mode | " + " | ".join(tp_configs(doc)) + " |", "|---|" + "---|" * len(tp_configs(doc))]
    tp = doc["overhead"]["throughput"]
    configs = tp_configs(doc)
    for mode in tp[configs[0]]:
        cells = []
        for cname in configs:
            # paired: each round's run against the same round's untraced run
            cells.append(fmt([v / base for v, base in zip(tp[cname][mode], tp[cname]["none"])]))
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += ["", "| untraced ops/s | " + " | ".join(f"{statistics.median(tp[c]['none']):.3e}" for c in configs) + " |",
              "", "**RSS after the run** (MB): " + ", ".join(
                  f"{m} {fmt(v, digits=0)}" for m, v in doc["overhead"]["rss_mb"].items() if m != "none"), ""]
    if "loss" not in doc:  # --overhead-only
        return "\n".join(lines)
    lines += ["**Loss** at the highest abort rate", "",
              "| ring buffer pages | aborts/s | self-reported | counted | events sent | delivered | lost |",
              "|---|---|---|---|---|---|---|"]
    for r in doc["loss"]["runs"]:
        lines.append(f"| {r['ringbuf_pages']} | {r['abort_rate_per_s']:.0f} | {r['self_reported']} | {r['counted']} | "
                     f"{r['events_sent']} | {r['events_delivered']} | {r['events_lost']} |")
    lines += ["", "**Start-up** (s from launch)", "", "| | median (min..max) |", "|---|---|"]
    for k, v in doc["startup"].items():
        lines.append(f"| {k} | {fmt(v)} |")
    lines += ["", "**Front ends**", ""]
    for k, v in doc["front_ends"].items():
        lines.append(f"- {k}:")
        lines += [f"  - {line}" for line in v]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smoke run: one round, short runs (< 60 s)")
    ap.add_argument("--reps", type=int, help="interleaved rounds (default 7, 1 with --quick)")
    ap.add_argument("--seconds", type=float, help="workload run length in seconds (default 2, 0.3 with --quick)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"), help="directory for the JSON results")
    ap.add_argument("--modes", help="comma-separated mode names to run (default all; untraced always runs)")
    ap.add_argument("--configs", help="comma-separated workload configurations (default all)")
    ap.add_argument("--overhead-only", action="store_true", help="skip the loss, start-up and front-end parts")
    ap.add_argument("--switch-cost", action="store_true",
                    help="only what the who-preempted bookkeeping adds per context switch (sched_switch program "
                         "run time with and without it; --configs from benchmarks/probe_cost.py, default: "
                         + ", ".join(SWITCH_COST_CONFIGS) + ")")
    ap.add_argument("--compare", metavar="DIR",
                    help="also run the rseqtop of checkout DIR (e.g. an older commit's git archive) in each "
                         "collector and --json mode, interleaved with this one's")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/run: run as root (sudo benchmarks/run): it loads BPF programs", file=sys.stderr)
        return 1
    reps = a.reps or (1 if a.quick else 7)
    seconds = a.seconds or (0.3 if a.quick else 2.0)
    for tool in ("perf", "bpftrace", "tmux"):
        if not shutil.which(tool):
            print(f"benchmarks/run: {tool} is missing; run scripts/setup test", file=sys.stderr)
            return 1
    workload.build()
    modes = MODES if not a.modes else [m for m in MODES if m is Tracer or m.name in a.modes.split(",")]
    if a.compare:
        modes = compared(modes, Path(a.compare).resolve())
    configs = CONFIGS if not a.configs else {k: v for k, v in CONFIGS.items() if k in a.configs.split(",")}
    doc = {"machine": f"{platform.node()} {platform.release()} {NCPU} CPUs", "date": time.strftime("%Y-%m-%d %H:%M"),
           "reps": reps, "seconds": seconds, "quick": a.quick}
    if a.switch_cost:
        doc["switch_cost"] = switch_cost(reps, seconds, a.configs.split(",") if a.configs else SWITCH_COST_CONFIGS)
        print(switch_cost_text(doc))
        return 0
    print("overhead ...", file=sys.stderr)
    doc["overhead"] = overhead(reps, seconds, modes, configs)
    if not a.overhead_only:
        print("loss ...", file=sys.stderr)
        doc["loss"] = loss(0.5 if a.quick else 3.0, a.quick)
        print("start-up ...", file=sys.stderr)
        doc["startup"] = startup(1 if a.quick else 5)
        print("front ends ...", file=sys.stderr)
        doc["front_ends"] = front_ends(a.quick)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(markdown(doc))
    print(f"\n(JSON: {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
