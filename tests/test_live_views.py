"""The live views against the real collector and the bundled workload (root).

Each test attaches rseqtop first, then runs the workload, and reads the last
interval after the workload has exited: the totals rseqtop prints for the
workload's pid must equal the workload's own count of kernel aborts.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rseqtop import workload
from rseqtop.present.textsafe import printable

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

HOSTILE = "[b]x\x1b[31m\x07"  # markup, an escape sequence and a bell: 10 bytes, fits in comm
PINNED = ["--threads", "3", "--cpus", "0", "--in-cs-delay", "200", "--signal-rate", "100", "--duration", "1.2"]


class Lines:
    """A subprocess whose stdout lines arrive on a queue (read by a thread)."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     encoding="utf-8", errors="strict")
        self.q: queue.Queue = queue.Queue()
        self.raw: list = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.raw.append(line)
            self.q.put(line)
        self.q.put(None)

    def next(self, timeout=300.0):  # compiling under emulation (kernel VMs) is slow
        line = self.q.get(timeout=timeout)
        if line is None:
            raise AssertionError(f"rseqtop exited: {self.proc.wait()} {self.proc.stderr.read()}")
        return line

    def wait_for(self, pred, timeout=300.0):
        end = time.monotonic() + timeout
        while True:
            line = self.next(max(0.1, end - time.monotonic()))
            if pred(line):
                return line

    def more(self, pred, n=2, timeout=120.0):
        """Wait until n more lines matching pred arrive than have arrived so far
        (lines already queued do not count: they may predate an event)."""
        target = sum(1 for line in list(self.raw) if pred(line)) + n
        end = time.monotonic() + timeout
        while sum(1 for line in list(self.raw) if pred(line)) < target:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"rseqtop stopped or stalled: {self.proc.poll()} {self.proc.stderr.read() if self.proc.poll() is not None else ''}")
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=20)
        return rc


def run_workload(args):
    return workload.run(args, timeout=60)


@pytest.mark.kernel
def test_batch_totals_equal_the_workload_count(bpf_ok, rseqtop_cmd, record_property):
    top = Lines(rseqtop_cmd + ["-b", "-d", "0.3"])
    try:
        top.wait_for(lambda line: line.startswith("rseqtop "))  # attached
        summary = run_workload(PINNED)
        pid = summary["pid"]
        # two more intervals after the exit: the last one holds the final totals
        top.more(lambda line: line.startswith("rseqtop "))
    finally:
        rc = top.stop()
    assert rc == 0
    text = "".join(top.raw)
    last = text.rsplit("\nrseqtop ", 1)[1]
    rows = [line.split() for line in last.splitlines()[2:]]
    row = next(r for r in rows if r and r[0] == str(pid))
    header = text.splitlines()[1].split()
    shown = int(row[header.index("ABORTS")])
    record_property("figure", f"{shown}={summary['totals']['aborts']} aborts")
    assert shown == summary["totals"]["aborts"] > 0


def mm_cid_reported() -> bool:
    """rseq_update carries mm_cid from 6.3 on."""
    from rseqtop.kernel import tracefs

    fmt = tracefs.TraceFS(tracefs.ensure_root()).format("rseq", "rseq_update")
    return fmt is not None and fmt.has("mm_cid")


@pytest.fixture(scope="module")
def json_top(bpf_ok, rseqtop_cmd):
    """One `rseqtop --json --syscalls` (with a storm rule,
    support.STORM_CLI), attached, for the tests that read its lines: each
    start compiles (16 s in a kernel VM). Each test waits for lines that
    follow its own workload."""
    from support import STORM_CLI

    top = Lines(rseqtop_cmd + ["--json", "--syscalls", "-d", "0.3", *STORM_CLI])
    try:
        top.next()
        yield top
    finally:
        assert top.stop() == 0


@pytest.mark.kernel
def test_json_totals_and_hostile_names(json_top, record_property):
    top = json_top
    summary = run_workload(PINNED + ["--name", HOSTILE])
    top.more(lambda line: True)
    assert all(line.isascii() and "\x1b" not in line and "\x07" not in line for line in top.raw)
    rec = json.loads(top.raw[-1])
    assert rec["schema_version"] == 1
    proc = next(p for p in rec["processes"] if p["pid"] == summary["pid"])
    record_property("figure", f"{proc['totals']['aborts']}={summary['totals']['aborts']} aborts")
    assert proc["totals"]["aborts"] == summary["totals"]["aborts"] > 0
    workers = [t for t in proc["threads"] if t["tid"] != summary["pid"]]
    assert workers and all(t["comm"] == HOSTILE for t in workers)
    if mm_cid_reported():
        # --json shows threads, so it asks for mm_cid (2 CPUs: cids 0 or 1)
        assert all(0 <= t["mm_cid"] < (os.cpu_count() or 1) for t in workers), workers
    else:
        assert all(t["mm_cid"] == -1 for t in workers), workers
    by_tid = {int(tid): t["aborts"] for tid, t in summary["threads"].items()} \
        if isinstance(summary.get("threads"), dict) else {}
    for t in proc["threads"]:
        if t["tid"] in by_tid:
            assert t["totals"]["aborts"] == by_tid[t["tid"]]


def test_batch_threads_show_hostile_names_literally(bpf_ok, rseqtop_cmd):
    top = Lines(rseqtop_cmd + ["-b", "-H", "-d", "0.3"])
    try:
        top.next()
        summary = run_workload(PINNED + ["--name", HOSTILE])
        top.more(lambda line: line.startswith("rseqtop "))
    finally:
        assert top.stop() == 0
    text = "".join(top.raw)
    assert "\x1b" not in text and "\x07" not in text
    assert re.search(rf"\b{summary['pid']}\s+{re.escape(printable(HOSTILE))}\s", text)


def test_ebpf_prints_the_program(bpf_ok, rseqtop_cmd):
    for argv in ([], ["trace"], ["demo"]):
        res = subprocess.run(rseqtop_cmd + argv + ["--ebpf"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "rseq_ip_fixup" in res.stdout


# -- a real terminal ----------------------------------------------------------
def tmux(*args) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10).stdout


@pytest.fixture
def tmux_session(tmp_path):
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed")
    name = f"rseqtop-test-{os.getpid()}"
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def wait_screen(session, pred, timeout=20.0) -> str:
    end = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < end:
        screen = tmux("capture-pane", "-p", "-t", session)
        if pred(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"screen never matched:\n{screen}")


def test_tui_in_tmux_shows_the_workload_and_quits_cleanly(bpf_ok, rseqtop_cmd, tmux_session, tmp_path):
    wl = workload.start(["--threads", "4", "--in-cs-delay", "200", "--signal-rate", "100", "--duration", "30",
                         "--name", HOSTILE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "after"
    try:
        cmd = " ".join(shlex.quote(a) for a in rseqtop_cmd + ["-d", "0.5"])
        shell = f"cd {shlex.quote(str(Path.cwd()))}; {cmd}; echo EXIT=$?; stty -a > {marker}; sleep 60"
        tmux("new-session", "-d", "-s", tmux_session, "-x", "200", "-y", "40", shell)
        row = re.compile(rf"^\s*{wl.pid}\s+\S+\s+\d+\s+([\d.]+)\s+(\d+)", re.M)

        def has_rate(screen):
            m = row.search(screen)
            return bool(m) and float(m.group(1)) > 0
        wait_screen(tmux_session, has_rate)
        tmux("send-keys", "-t", tmux_session, "H")
        screen = wait_screen(tmux_session, lambda s: printable(HOSTILE) in s)
        assert "\x1b" not in screen
        tmux("send-keys", "-t", tmux_session, "q")
        screen = wait_screen(tmux_session, lambda s: "EXIT=" in s)
        assert "EXIT=0" in screen
        assert tmux("display", "-p", "-t", tmux_session, "#{alternate_on}").strip() == "0"
        deadline = time.monotonic() + 10
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        modes = marker.read_text().split()
        assert "icanon" in modes and "echo" in modes  # the terminal is back in cooked mode
    finally:
        wl.terminate()
        wl.wait(timeout=10)


@pytest.mark.parametrize("flag", [True, False], ids=["syscalls", "default"])
def test_syscalls_flag_turns_on_syscall_accounting(bpf_ok, rseqtop_cmd, flag):
    """Syscall tracepoints are opt-in (--syscalls), and --json says which."""
    out = subprocess.run(rseqtop_cmd + ["--json", "-d", "0.2", "-n", "1"] + ["--syscalls"] * flag,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout.splitlines()[-1])
    assert rec["self"]["syscall_accounting"] is flag
    assert ("syscalls:sys_enter_membarrier" in rec["self"]["probes_attached"]) is flag
    assert flag or not any(p.startswith("syscalls:") for p in rec["self"]["probes_attached"])


@pytest.mark.kernel
def test_json_registrations_by_abi(json_top, record_property):
    """With --syscalls, each process's rseq registrations by ABI: the
    workload's own areas, V2 (64 bytes) where the kernel takes longer areas
    (6.3+), else legacy (32 bytes)."""
    from rseqtop.kernel import facts as kernel

    abi = "v2" if kernel.extended_rseq() else "legacy"
    top = json_top
    summary = workload.run(PINNED + ["--rseq-abi", abi], timeout=60,
                           env=dict(os.environ, GLIBC_TUNABLES="glibc.pthread.rseq=0"))
    top.more(lambda line: True)
    proc = next(p for p in json.loads(top.raw[-1])["processes"] if p["pid"] == summary["pid"])
    reg = summary["registration"]
    want = reg["own_registrations"] + reg["probe_registrations"]
    record_property("figure", f"{abi} {proc['registrations']['by_abi'].get(abi)}={want}")
    assert proc["registrations"] == {"total": want, "by_abi": {abi: want},
                                     "unregistrations": reg["own_unregistrations"] + reg["probe_registrations"],
                                     "errors": {}}


@pytest.mark.parametrize("mode", [["-b"], ["--json"]], ids=["batch", "json"])
def test_batch_and_json_load_neither_the_tui_nor_textual(bpf_ok, mode):
    """Batch text and JSON read the view model in rseqtop.present: no module
    of rseqtop.tui and no Textual module is imported (python -X importtime)."""
    import sys

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "rseqtop", *mode, "-n", "1", "-d", "0.2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert "rseqtop.present.rows" in imported and "rseqtop.collect.collector" in imported
    bad = [m for m in imported if m.startswith(("rseqtop.tui", "textual"))]
    assert not bad, bad


ANTAGONIST = "hog-live"
ANTAGONIST_RUN = ["--threads", 1, "--cpus", (os.cpu_count() or 1) - 1, "--op", "delay", "--in-cs-delay", 5000,
                  "--antagonist", ANTAGONIST, "--antagonist-rate", 2000, "--duration", 1.0]


@pytest.mark.kernel
def test_json_and_exporter_show_preempters_and_storms(json_top, collector, record_property):
    """`rseqtop --json` and the exporter's metrics against two workload
    runs: a signal storm (storm counts equal the workload's own, same rule,
    support.STORM_RUN) and a named antagonist (named as the top preempter of
    at least 95% of the workload's aborts). The metrics are the shared
    collector's, given the storm rule and asking for no thread, as the
    exporter does."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from support import ISOLATED_PRIORITY, STORM_RULE, STORM_RUN, run_realtime, storm_problem

    from rseqtop.exporter.metrics import RseqCollector

    top = json_top
    registry = CollectorRegistry()
    collector.set_storm(STORM_RULE)
    collector.want_threads("none")
    try:
        registry.register(RseqCollector(collector, identity=None))
        storm = run_realtime(STORM_RUN + ["--name", "storm-live"])
        ant = run_realtime(ANTAGONIST_RUN + ["--name", "victim-live"], priority=ISOLATED_PRIORITY)
        top.more(lambda line: True)
        text = generate_latest(registry).decode()
    finally:
        collector.set_storm(None)
        collector.want_threads("all")
    rec = json.loads(top.raw[-1])
    procs = {p["pid"]: p for p in rec["processes"]}
    sp, ap = procs[storm["pid"]], procs[ant["pid"]]
    assert not storm_problem(storm), storm_problem(storm)
    assert sp["totals"]["aborts"] == storm["totals"]["aborts"]
    assert sp["storms"] == storm["totals"]["storms"]
    delay = next(s for s in sp["sections"] if s["start_ip"] == int(storm["ops"]["delay"]["start_ip"], 16))
    assert delay["storms"] == storm["ops"]["delay"]["storms"]
    total = ant["totals"]["aborts"]
    assert ap["totals"]["aborts"] == total > 50
    first = ap["preempters"][0]
    assert (first["pid"], first["tgid"], first["comm"]) == (ant["antagonist"]["tid"], ant["pid"], ANTAGONIST)
    assert first["count"] >= 0.95 * total and first["kthread"] is not True, \
        (ap["preempters"], ap["preempters_other"], ap["preempters_unknown"], ap["totals"]["causes"])
    assert ap["sections"][0]["preempters"][0]["pid"] == first["pid"]
    assert sum(e["count"] for e in ap["preempters"]) + ap["preempters_other"] + ap["preempters_unknown"] == \
        sum(n for cause, n in ap["totals"]["causes"].items() if "preempt" in cause)

    got: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            got[(s.name, s.labels.get("comm"), s.labels.get("preempter"))] = s.value
    assert got[("rseqtop_abort_storms_total", "storm-live", None)] == storm["totals"]["storms"]
    assert got[("rseqtop_preempter_aborts_total", "victim-live", ANTAGONIST)] == first["count"]
    record_property("figure", f"storms {sp['storms']}={storm['totals']['storms']}, {ANTAGONIST} "
                              f"{100 * first['count'] / total:.1f}% of {total} aborts")
