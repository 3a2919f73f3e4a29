"""Faults: kill -9, SIGTERM/SIGINT, two instances, tiny maps."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rseqtop import workload
from rseqtop.collect import Collector

REPO = Path(__file__).resolve().parent.parent


def bpftool_ids(kind: str) -> dict:
    """id -> name of rseqtop's BPF programs (kind "prog") or of all links."""
    if not shutil.which("bpftool"):
        pytest.fail("bpftool is needed (scripts/setup test installs it)")
    out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, check=True).stdout
    items = json.loads(out or "[]")
    if kind == "prog":
        return {p["id"]: p.get("name", "") for p in items if p.get("name", "").startswith("on_")}
    return {p["id"]: p.get("type", "") for p in items}


def released(ids: set, kind: str = "prog", timeout: float = 10.0) -> bool:
    """The kernel frees programs and links with the last reference; raw
    tracepoint links are released asynchronously, so allow it a moment."""
    deadline = time.monotonic() + timeout
    while ids & set(bpftool_ids(kind)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _as_a_background_job():
    # A shell without job control starts background jobs with SIGINT
    # ignored; rseqtop must still stop on an explicit SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_and_wait(args: list, ready: str, stream: str = "stdout", timeout: float = 60):
    proc = subprocess.Popen([sys.executable, "-m", "rseqtop", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=_as_a_background_job)
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = pipe.readline()
        if ready in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"rseqtop {' '.join(args)} never printed {ready!r}: {proc.stderr.read()[-2000:]}")


def test_kill_9_leaves_no_programs_or_links(bpf_ok):
    progs_before, links_before = bpftool_ids("prog"), bpftool_ids("link")
    proc = start_and_wait(["-b", "-d", "0.5"], "rseqtop")
    ours = set(bpftool_ids("prog")) - set(progs_before)
    our_links = set(bpftool_ids("link")) - set(links_before)
    assert len(ours) >= 2, "rseqtop's programs not found while it runs"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()
    assert released(ours, "prog") and released(our_links, "link")


MODES = {
    "batch": (["-b", "-d", "0.5"], "rseqtop", "stdout"),
    "json": (["--json", "-d", "0.5"], "schema_version", "stdout"),
    "trace": (["trace"], "Tracing", "stderr"),
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("mode", list(MODES))
def test_signals_detach_and_exit_promptly(bpf_ok, mode, sig):
    args, ready, stream = MODES[mode]
    before = set(bpftool_ids("prog"))
    proc = start_and_wait(args, ready, stream)
    ours = set(bpftool_ids("prog")) - before
    assert ours
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    print(f"{mode} {sig.name}: exited {proc.returncode} after {took:.2f} s")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert released(ours)


def test_two_instances_side_by_side_both_exact(bpf_ok):
    workload.build()
    with Collector() as a, Collector() as b:
        summary = workload.run(["--threads", "4", "--cpus", "0", "--in-cs-delay", "3000", "--op", "delay",
                                "--duration", "0.5"])
        pa, pb = a.poll().process(summary["pid"]), b.poll().process(summary["pid"])
    assert pa.counts.aborts == pb.counts.aborts == summary["totals"]["aborts"] > 0


def test_tiny_maps_count_drops_instead_of_wrong_numbers(bpf_ok):
    """A sites map of one entry and two processes with aborting sections:
    the second process's site is dropped and counted; what is shown is exact."""
    workload.build()
    args = ["--threads", "4", "--cpus", "0", "--in-cs-delay", "3000", "--op", "delay", "--duration", "0.5"]
    with Collector(sizes={"RSEQTOP_MAX_SITES": 1, "RSEQTOP_MAX_OFFSETS": 1}) as c:
        runs = [workload.run(args), workload.run(args)]
        snap = c.poll()
    maps = {m.name: m for m in snap.self_stats.maps}
    assert all(r["totals"]["aborts"] > 0 for r in runs)
    assert maps["sites"].used <= 1 and maps["sites"].dropped > 0 and maps["offsets"].dropped > 0
    shown = [s for r in runs for s in snap.sites_of(r["pid"])]
    assert len(shown) <= 1
    for r in runs:
        truth = {int(op["start_ip"], 16): op["aborts"] for op in r["ops"].values()}
        for s in snap.sites_of(r["pid"]):
            assert s.aborts == truth[s.start_ip]
        # process totals do not depend on the sites map
        assert snap.process(r["pid"]).counts.aborts == r["totals"]["aborts"]
