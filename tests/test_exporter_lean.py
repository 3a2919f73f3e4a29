"""The exporter's lean collector (rseqtop.collect.handoff): a loader process
compiles and attaches with bcc, hands the maps, programs and attachments
over as file descriptors and exits; the collector process never maps libbcc
or LLVM. Its counts are checked against the bundled workload's own, through
the Collector and through a real `rseqtop export` scraped over HTTP."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import time
from pathlib import Path

import pytest
import support
from prometheus_client.parser import text_string_to_metric_families
from support import assert_exact, free_port, wait_for

from rseqtop import workload
from rseqtop.collect import Collector
from rseqtop.kernel import facts as kernel

# Kernel-facing: scripts/kernels runs these in a VM of each kernel in the matrix.
pytestmark = pytest.mark.kernel

LLVM_MARKS = ("libbcc", "libLLVM", "libclang")
SIGNALS = ["--threads", "2", "--signal-rate", "2000", "--in-cs-delay", "3000", "--duration", "1"]


@pytest.fixture(scope="module")
def lean(bpf_ok):
    workload.build()
    with Collector(lean=True) as c:
        yield c


def llvm_mappings(pid) -> list:
    return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if any(m in line for m in LLVM_MARKS)]


def children(pid: int) -> set:
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        out |= {int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()}
    return out


def prog_ids(pid: int) -> set:
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        ids |= {int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")}
    return ids


def test_lean_collector_is_exact_per_thread_site_and_process(lean, record_property):
    """Aborts per thread, per critical section (named by the new-site perf
    rings this process reads itself, while the workload lived) and per
    process equal the workload's own counts."""
    summary = workload.run(SIGNALS, timeout=120)
    snap = lean.poll()
    proc = assert_exact(summary, snap)
    assert proc.counts.aborts > 0
    # causes come through the handed maps too (unpinned, the signal sender
    # often preempts the worker as well: "preempt+signal")
    assert sum(n for cause, n in proc.counts.causes if "signal" in cause) > 0, proc.counts.causes
    assert lean.loader._rings.lost == 0
    record_property("figure", f"{proc.counts.aborts} aborts, causes {dict(proc.counts.causes)}")


def test_lean_process_totals_do_not_depend_on_the_threads_asked_for(lean):
    """The exporter asks for no threads: totals come from the task iterator
    where there is one (6.9+), from every thread's record elsewhere."""
    summary = workload.run(SIGNALS, timeout=120)
    try:
        lean.want_threads("none")
        none = lean.poll().process(summary["pid"])
    finally:
        lean.want_threads("all")
    assert none is not None and none.counts.aborts == summary["totals"]["aborts"]
    if kernel.kernel_version() < (6, 9):
        assert lean.loader.hot_iter_link is None


def test_lean_and_bcc_decode_the_maps_alike(lean, collector):
    """The key and value types the lean collector decodes from the loader's
    descriptions have bcc's sizes and field offsets (those of a collector
    that compiled the same program with bcc in this process)."""
    assert collector.generate() == lean.generate()
    full = collector
    for name, table in lean.bpf.items():
        if name == "hot":  # task storage, a table type bcc's Python has no class for: the record's copy
            theirs = (ctypes.c_int, dict(full.bpf["threads"].Leaf._fields_)["h"])
        elif name == "free_slots":  # a stack: values only
            theirs = (table.Key, full.bpf[name].Leaf)
        else:
            theirs = (full.bpf[name].Key, full.bpf[name].Leaf)
        for ours, bccs in zip((table.Key, table.Leaf), theirs):
            assert ctypes.sizeof(ours) == ctypes.sizeof(bccs), name
            for field, *_ in getattr(bccs, "_fields_", ()):
                assert getattr(ours, field).offset == getattr(bccs, field).offset, (name, field)


def test_lean_filter_and_reaping_write_through_the_handed_fds(lean):
    """set_filter writes the config maps, reap() deletes map entries: both
    through file descriptors the loader handed over."""
    lean.set_filter(pids=[os.getpid()])
    try:
        summary = workload.run(SIGNALS, timeout=120)
        assert lean.poll().process(summary["pid"]) is None, "the pid filter did not reach the kernel"
    finally:
        lean.set_filter()
    summary = workload.run(SIGNALS, timeout=120)
    pid = summary["pid"]
    keep = lean.reaper.keep_seconds
    lean.reaper.keep_seconds = 0.0
    try:
        assert lean.poll().process(pid).counts.aborts == summary["totals"]["aborts"]
        lean.reap()  # first seen dead now
        time.sleep(0.05)
        lean.poll()
        assert lean.reap() >= 1
        rec = lean.read()
        assert pid not in {p.pid for p in rec.procs} and pid not in {t.pid for t in rec.threads}
    finally:
        lean.reaper.keep_seconds = keep


def scrape(port: int) -> list:
    status, body = support.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert status == 200
    return [s for fam in text_string_to_metric_families(body.decode()) for s in fam.samples]


@contextlib.contextmanager
def exporter_running(rseqtop_cmd, *args):
    """A real `rseqtop export` on a free loopback port, ready: (process, port)."""
    port = free_port()
    exporter = subprocess.Popen(rseqtop_cmd + ["export", f"--web.listen-address=127.0.0.1:{port}", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: support.get(f"http://127.0.0.1:{port}/-/ready", timeout=5, down_ok=True)[0] == 200, 300,
                 "exporter ready", exporter, interval=0.3)
        yield exporter, port
    finally:
        exporter.terminate()
        try:
            exporter.wait(30)
        except subprocess.TimeoutExpired:
            exporter.kill()
            exporter.wait()


@pytest.fixture(scope="module")
def scraped_exporter(bpf_ok, rseqtop_cmd):
    """`rseqtop export` that reads the maps only when scraped
    (--poll-interval 0), shared: each start compiles (16 s in a kernel VM).
    Its series are per comm: each test names its workload."""
    with exporter_running(rseqtop_cmd, "--poll-interval", "0") as running:
        yield running


def test_exporter_collector_never_maps_llvm_and_scrapes_exact_counts(scraped_exporter, record_property):
    """`rseqtop export`: after attach the collector process has no libbcc or
    LLVM mapping and no loader child left, holds the programs through its
    fds, and a scrape after the workload's run shows its own counts: aborts
    by cause and by critical section (symbol)."""
    exporter, port = scraped_exporter
    pid = exporter.pid
    assert llvm_mappings(pid) == []
    assert len(children(pid)) == 1, "a process besides the HTTP process is left (the loader?)"
    assert prog_ids(pid), "the collector holds no BPF program"
    name = "xexp-scraped"
    summary = workload.run(SIGNALS + ["--name", name], timeout=120)
    samples = scrape(port)
    aborts = {s.labels["cause"]: s.value for s in samples
              if s.name == "rseqtop_aborts_total" and s.labels["comm"] == name}
    assert sum(aborts.values()) == summary["totals"]["aborts"] > 0, aborts
    assert aborts.get("signal", 0) > 0, aborts
    sites = {s.labels["symbol"]: s.value for s in samples
             if s.name == "rseqtop_site_aborts_total" and s.labels["comm"] == name}
    for op_name, op in summary["ops"].items():
        if op["aborts"]:
            got = [v for sym, v in sites.items() if op["symbol"] in sym]
            assert got == [op["aborts"]], (op_name, op["symbol"], sites)
    assert llvm_mappings(pid) == []
    record_property("figure", f"{summary['totals']['aborts']} aborts scraped exactly; "
                              f"collector RSS {rss_kib(pid) // 1024} MiB")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def exporter_for(reads, request, rseqtop_cmd):
    if reads == "scrapes":
        yield request.getfixturevalue("scraped_exporter")
    else:
        with exporter_running(rseqtop_cmd, "--poll-interval", "0.3s") as running:
            yield running


@pytest.mark.parametrize("reads", ["scrapes", "ticks"])
def test_exporter_counts_stay_exact_while_dead_processes_are_reaped(bpf_ok, rseqtop_cmd, tmp_path, record_property,
                                                                    request, reads):
    """`rseqtop export` reaps a dead process from the maps at the read
    after the one that saw it dead (keep_dead_seconds=0), its final counts
    kept in its label set. Reads are scrapes every 0.3 s (scrapes, with
    --poll-interval 0) or only the exporter's own between scrapes (ticks,
    --poll-interval 0.3s, no scrape during the run). Over a run of
    short-lived child processes, the comm's aborts equal the workload's own
    sum over every child, no scrape shows fewer than the one before, and
    the children have left the maps."""
    name = f"xchurn-{reads}"
    with exporter_for(reads, request, rseqtop_cmd) as (_, port):
        def aborts() -> float:
            return sum(s.value for s in scrape(port) if s.name == "rseqtop_aborts_total" and s.labels["comm"] == name)

        out = tmp_path / "summary.json"
        wl = workload.start(["--churn-processes", "--threads", "4", "--in-cs-delay", "5000", "--duration", "2",
                             "--name", name, "--json-out", str(out)], stdout=subprocess.DEVNULL)
        seen = [aborts()]
        while wl.poll() is None:
            time.sleep(0.3)
            if reads == "scrapes":
                seen.append(aborts())
        assert wl.wait() == 0
        for _ in range(3):  # the last children: seen dead, then reaped
            if reads == "ticks":
                time.sleep(0.5)
            seen.append(aborts())
        procs = [s.value for s in scrape(port) if s.name == "rseqtop_map_entries" and s.labels["map"] == "procs"]
        summary = workload.parse_summary(out.read_text())
        want = summary["children_totals"]["aborts"]
        children = summary["children_totals"]["processes"]
        assert children > 10 and want > 0, summary["children_totals"]
        assert seen == sorted(seen), seen
        assert seen[-1] == want, (seen[-4:], want)
        # the children left the maps: kept, each would hold a procs entry
        # (its exited thread's totals; the collector keeps at most 4,096
        # dead processes); live processes need none where they have slots
        assert procs and procs[0] < min(children, 4096) / 2, (procs, children)
        record_property("figure", f"{children} children, {want} aborts, {len(seen)} scrapes, "
                                  f"{procs[0]:.0f} procs entries left")
