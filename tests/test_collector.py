"""The collector against the real kernel and the bundled workload's ground truth.

Every count compared here comes from the workload's own summary: kernel
aborts counted in its abort handlers, which only abort_ip reaches.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rseqtop import workload
from rseqtop.collector import Collector

NCPU = os.cpu_count() or 1


@pytest.fixture(scope="module")
def collector(bpf_ok):
    workload.build()
    with Collector() as c:
        yield c


def observe(collector, args, env=None, realtime=False):
    """Run the workload to its end, then read the collector. realtime: run it
    SCHED_FIFO, so that other tasks on a busy machine cannot preempt its
    workers (cause-attribution tests want only their own inducer)."""
    args = [str(a) for a in args]
    if realtime:
        out = subprocess.run(["chrt", "-f", "1", str(workload.build()), *args], capture_output=True, text=True,
                             timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        summary = workload.parse_summary(out.stdout)
    else:
        summary = workload.run(args, timeout=120, env=env)
    return summary, collector.poll()


def assert_exact(summary, snap):
    pid = summary["pid"]
    proc = snap.process(pid)
    assert proc is not None, f"workload pid {pid} not seen"
    threads = {t.tid: t for t in snap.threads_of(pid)}
    for tid, rec in summary["threads"].items():
        t = threads.get(int(tid))
        assert t is not None, f"thread {tid} not seen"
        assert t.counts.aborts == rec["aborts"], (tid, t.counts.aborts, rec["aborts"])
    sites = {s.start_ip: s for s in snap.sites_of(pid)}
    for name, op in summary["ops"].items():
        if not op.get("enabled", True):
            continue
        got = sites[int(op["start_ip"], 16)].aborts if int(op["start_ip"], 16) in sites else 0
        assert got == op["aborts"], (name, got, op["aborts"])
        if op["aborts"]:
            assert op["symbol"] in sites[int(op["start_ip"], 16)].symbol
    assert proc.counts.aborts == summary["totals"]["aborts"]
    assert sum(n for _, n in proc.counts.causes) == proc.counts.aborts
    return proc


INDUCERS = {
    "oversubscribed": ["--threads", 4 * NCPU, "--in-cs-delay", 3000, "--op", "delay"],
    "signals": ["--threads", NCPU, "--signal-rate", 2000, "--in-cs-delay", 3000],
    "migration": ["--threads", NCPU, "--migrate-rate", 200, "--in-cs-delay", 3000],
    "membarrier": ["--threads", NCPU, "--membarrier-rate", 500, "--in-cs-delay", 3000],
}


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
@pytest.mark.parametrize("inducer", list(INDUCERS))
def test_exact_per_thread_and_per_site(collector, inducer, pinned):
    args = INDUCERS[inducer] + ["--duration", 1.0]
    if pinned:
        if inducer == "migration":
            args += ["--cpus", f"0-{NCPU - 1}"]  # migration needs somewhere to go
        else:
            args += ["--cpus", 0]
    summary, snap = observe(collector, args)
    assert summary["totals"]["aborts"] > 0, "the inducer produced no aborts; the test proves nothing"
    assert_exact(summary, snap)


def shares(proc):
    total = proc.counts.aborts
    return {name: n / total for name, n in proc.counts.causes}


def test_signal_only_run_is_attributed_to_signals(collector):
    summary, snap = observe(collector, ["--threads", 1, "--cpus", NCPU - 1, "--signal-rate", 10000,
                                        "--in-cs-delay", 5000, "--op", "delay", "--duration", 1.5, "--inducer-cpus", 0],
                            realtime=True)
    proc = assert_exact(summary, snap)
    s = shares(proc)
    signal_share = sum(v for k, v in s.items() if "signal" in k and not k.startswith("stale"))
    print(f"signal-only run: aborts={proc.counts.aborts} shares={s}")
    assert signal_share >= 0.99, s


def test_membarrier_only_run_is_attributed_to_membarrier(collector):
    summary, snap = observe(collector, ["--threads", 1, "--cpus", NCPU - 1, "--membarrier-rate", 5000,
                                        "--in-cs-delay", 5000, "--op", "delay", "--duration", 1.5, "--inducer-cpus", 0],
                            realtime=True)
    proc = assert_exact(summary, snap)
    s = shares(proc)
    mb = sum(v for k, v in s.items() if "membarrier" in k and not k.startswith("stale"))
    print(f"membarrier-only run: aborts={proc.counts.aborts} shares={s}")
    assert mb >= 0.95, s
    assert proc.counts.membarrier_ipis > 0


def test_migration_run_shows_migrate(collector):
    summary, snap = observe(collector, ["--threads", 1, "--migrate-rate", 300, "--in-cs-delay", 5000,
                                        "--op", "delay", "--duration", 1.5])
    proc = assert_exact(summary, snap)
    print(f"migration run: aborts={proc.counts.aborts} causes={dict(proc.counts.causes)}")
    assert any("migrate" in k for k, _ in proc.counts.causes), proc.counts.causes
    assert proc.counts.migrations > 0


def test_oversubscribed_run_is_dominated_by_preemption(collector):
    summary, snap = observe(collector, ["--threads", 8, "--cpus", 0, "--in-cs-delay", 5000,
                                        "--op", "delay", "--duration", 1.5])
    proc = assert_exact(summary, snap)
    s = shares(proc)
    pre = sum(v for k, v in s.items() if k == "preempt")
    print(f"oversubscribed run: aborts={proc.counts.aborts} shares={s}")
    assert pre > 0.5, s
    assert proc.counts.preempts > 0


@pytest.fixture
def sys_collector(bpf_ok):
    """A collector with the opt-in syscall accounting (--syscalls)."""
    workload.build()
    with Collector(syscalls=True) as c:
        assert "syscalls:sys_enter_membarrier" in c.probes and c.poll().self_stats.syscall_accounting
        yield c


def test_syscalls_are_opt_in(collector):
    """By default no syscall tracepoint is enabled (each would tax every
    system call on the machine) and snapshots say so."""
    assert not any(p.startswith("syscalls:") for p in collector.probes)
    summary, snap = observe(collector, ["--threads", 1, "--membarrier-rate", 500, "--duration", 0.3])
    assert summary["membarrier"]["calls"] > 0
    assert not snap.self_stats.syscall_accounting
    assert snap.process(summary["pid"]).membarrier == ()


def test_membarrier_accounting(sys_collector):
    collector = sys_collector
    summary, snap = observe(collector, ["--threads", 1, "--membarrier-rate", 500, "--membarrier-unregistered",
                                        "--duration", 0.5])
    proc = snap.process(summary["pid"])
    calls = summary["membarrier"]["calls"]
    assert calls > 0 and summary["membarrier"]["errors"].get("EPERM") == calls
    rseq_cmd = [m for m in proc.membarrier if m.cmd == "PRIVATE_EXPEDITED_RSEQ"]
    assert rseq_cmd and rseq_cmd[0].calls == calls
    assert dict(rseq_cmd[0].errors) == {"EPERM": calls}
    assert sum(n for _, n in rseq_cmd[0].latency_log2_ns) == calls

    summary, snap = observe(collector, ["--threads", 1, "--membarrier-rate", 500, "--duration", 0.5])
    proc = snap.process(summary["pid"])
    by_cmd = {m.cmd: m for m in proc.membarrier}
    assert by_cmd["PRIVATE_EXPEDITED_RSEQ"].calls == summary["membarrier"]["calls"] > 0
    assert not by_cmd["PRIVATE_EXPEDITED_RSEQ"].errors
    assert by_cmd["REGISTER_PRIVATE_EXPEDITED_RSEQ"].calls == 1


def test_own_registrations_counted(sys_collector):
    collector = sys_collector
    env = dict(os.environ, GLIBC_TUNABLES="glibc.pthread.rseq=0")
    summary, snap = observe(collector, ["--threads", 3, "--duration", 0.3, "--op", "counter"], env=env)
    assert summary["registration"]["mode"] == "own"
    proc = snap.process(summary["pid"])
    reg = summary["registration"]
    assert reg["own_registrations"] == 3
    assert proc.registrations == reg["own_registrations"] + reg["probe_registrations"]
    assert proc.unregistrations == reg["own_unregistrations"] + reg["probe_registrations"]


def test_negative_control_sleep_has_updates_and_no_aborts(collector):
    p = subprocess.run(["sleep", "0.3"])
    assert p.returncode == 0
    # find the sleep by comm among processes that exited: it registered via glibc
    snap = collector.poll()
    sleeps = [x for x in snap.processes if x.comm == "sleep"]
    assert sleeps, "sleep not seen"
    assert all(x.counts.aborts == 0 for x in sleeps)
    assert any(x.counts.updates > 0 for x in sleeps)


def test_exited_threads_keep_totals_and_counters_are_monotonic(collector):
    proc = workload.start(["--threads", "4", "--cpus", "0", "--in-cs-delay", "3000", "--op", "delay",
                           "--duration", "1.5"])
    seen = []
    while proc.poll() is None:
        snap = collector.poll()
        p = snap.process(proc.pid)
        if p:
            seen.append((p.counts.aborts, p.counts.updates, p.counts.preempts))
        time.sleep(0.05)
    out, _ = proc.communicate()
    summary = workload.parse_summary(out)
    final = collector.poll().process(proc.pid)
    seen.append((final.counts.aborts, final.counts.updates, final.counts.preempts))
    for a, b in zip(seen, seen[1:]):
        assert all(y >= x for x, y in zip(a, b)), (a, b)
    assert final.counts.aborts == summary["totals"]["aborts"] > 0
    assert not final.alive and final.threads_exited >= 4


def test_perf_still_counts_while_attached(collector):
    perf = shutil.which("perf")
    if perf is None:
        pytest.fail("perf is needed (scripts/setup test installs linux-perf)")
    binary = workload.build()
    args = ["--threads", "4", "--cpus", "0", "--in-cs-delay", "3000", "--op", "delay", "--duration", "1"]
    out = subprocess.run([perf, "stat", "-x,", "-e", "rseq:rseq_ip_fixup", "--", str(binary), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    summary = workload.parse_summary(out.stdout)
    counted = [int(line.split(",")[0]) for line in out.stderr.splitlines() if "rseq:rseq_ip_fixup" in line]
    assert counted and counted[0] == summary["totals"]["aborts"] > 0
    assert_exact(summary, collector.poll())


def start_with_pid(pid: int, args: list):
    """Start the workload as `pid` (ns_last_pid = pid - 1); None if another
    task took that pid first."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    proc = workload.start(args)
    if proc.pid != pid:
        proc.kill()
        proc.communicate()
        return None
    return proc


def test_recycled_pid_starts_from_zero(collector):
    args = ["--threads", "2", "--cpus", "0", "--in-cs-delay", "3000", "--op", "delay", "--duration", "0.5"]
    first, snap = observe(collector, args + ["--name", "first-life"])
    pid = first["pid"]
    assert snap.process(pid).counts.aborts == first["totals"]["aborts"] > 0
    for _ in range(20):
        proc = start_with_pid(pid, args + ["--name", "second-life"])
        if proc is not None:
            break
    else:
        pytest.fail(f"could not get pid {pid} again")
    out, _ = proc.communicate(timeout=60)
    second = workload.parse_summary(out)
    p = collector.poll().process(pid)
    assert p.gen == 1 or p.gen > 0
    assert p.comm == "second-life"
    assert p.counts.aborts == second["totals"]["aborts"], (p.counts.aborts, first["totals"]["aborts"],
                                                           second["totals"]["aborts"])
    sites = {s.start_ip: s.aborts for s in collector.poll().sites_of(pid)}
    for op in second["ops"].values():
        if op["aborts"]:
            assert sites[int(op["start_ip"], 16)] == op["aborts"]


def _sleep_thread(collector):
    p = subprocess.Popen(["sleep", "0.3"])
    p.wait()
    threads = [t for t in collector.poll().threads if t.pid == p.pid]
    assert len(threads) == 1, f"sleep {p.pid} not seen"
    return threads[0]


def _node_of(cpu: int) -> int:
    nodes = list(Path(f"/sys/devices/system/cpu/cpu{cpu}").glob("node[0-9]*"))
    return int(nodes[0].name[4:]) if nodes else 0


def test_thread_ids_and_mm_cid_on_demand(collector):
    """cpu/node come with every update; mm_cid (only in the regular
    tracepoint's record) while a front end asks. Ground truth: a
    single-threaded process always has mm_cid 0, and a thread's node is its
    CPU's node in sysfs."""
    t = _sleep_thread(collector)
    assert 0 <= t.cpu < NCPU and t.node == _node_of(t.cpu)
    if collector.plan.mm_cid_on_demand:
        assert t.mm_cid == -1, "mm_cid reported without being asked for"
    collector.want_mm_cid(True)
    try:
        collector.poll()
        assert _sleep_thread(collector).mm_cid == 0
        summary, snap = observe(collector, ["--threads", 2, "--duration", 0.3, "--op", "counter"])
        cids = [t.mm_cid for t in snap.threads_of(summary["pid"]) if t.counts.updates]
        assert cids and all(0 <= c < NCPU for c in cids), cids
    finally:
        collector.want_mm_cid(False)
        collector.poll()
    if collector.plan.mm_cid_on_demand:
        assert _sleep_thread(collector).mm_cid == -1


def test_preemptions_match_the_kernels_own_count(collector):
    """Per-thread preemptions (runnable switch-outs) against the thread's
    own getrusage ru_nivcsw, read as it finishes. The few switches between
    that read and the thread's exit, or before rseqtop first saw it, are the
    tolerance."""
    summary, snap = observe(collector, ["--threads", 4, "--cpus", 0, "--in-cs-delay", 2000, "--op", "delay",
                                        "--duration", 0.5])
    threads = {t.tid: t for t in snap.threads_of(summary["pid"])}
    total = 0
    for tid, rec in summary["threads"].items():
        got, want = threads[int(tid)].counts.preempts, rec["nivcsw"]
        total += want
        assert abs(got - want) <= 3 + want // 100, (tid, got, want)
    assert total > 50, "the oversubscribed run should have preempted its workers"


def test_hot_state_fallback_without_task_storage(bpf_ok, monkeypatch):
    """Kernels without thread pidfds keep the hot state in the threads
    hash; same counts."""
    from rseqtop import collector as collector_mod

    monkeypatch.setattr(collector_mod, "hot_storage_usable", lambda: False)
    with Collector() as c:
        assert not c.plan.hot_storage and "HOT_TASK_STORAGE" not in c.plan.defines
        summary, snap = observe(c, INDUCERS["oversubscribed"] + ["--duration", 0.5])
        assert_exact(summary, snap)
        for tid, rec in summary["threads"].items():
            t = next(t for t in snap.threads_of(summary["pid"]) if t.tid == int(tid))
            assert abs(t.counts.preempts - rec["nivcsw"]) <= 3 + rec["nivcsw"] // 100
            assert t.counts.updates > 0


def test_hot_state_in_task_storage_is_read_while_threads_live(collector):
    """Live threads' updates and preemptions come from task storage (through
    pidfds) on kernels that have it: they grow while the workload runs."""
    from rseqtop import kernel

    if kernel.kernel_version() >= (6, 9) and Path("/sys/kernel/btf/vmlinux").exists():
        assert collector.plan.hot_storage, "6.9+ with BTF: task storage expected"
    proc = workload.start(["--threads", "2", "--cpus", "0", "--yield", "--op", "counter", "--duration", "1.5"])
    try:
        time.sleep(0.5)
        a = collector.poll().process(proc.pid)
        time.sleep(0.4)
        b = collector.poll().process(proc.pid)
    finally:
        proc.communicate()
    assert a is not None and b is not None and b.threads_live >= 2
    assert b.counts.updates > a.counts.updates > 0
    assert b.counts.preempts > a.counts.preempts > 0


def test_pid_filter_in_the_kernel_and_changed_at_run_time(bpf_ok):
    """Threads of processes the filter excludes are not tracked (and are
    remembered as excluded); changing the filter starts tracking them."""
    workload.build()
    proc = workload.start(["--threads", "2", "--yield", "--op", "counter", "--duration", "2.5"])
    try:
        with Collector(pids=[os.getpid()]) as c:
            time.sleep(0.4)
            assert c.poll().process(proc.pid) is None
            c.set_filter(pids=[proc.pid])
            time.sleep(0.4)
            first = c.poll().process(proc.pid)
            time.sleep(0.3)
            second = c.poll().process(proc.pid)
            assert first is not None and first.threads_live >= 2
            assert second.counts.updates > first.counts.updates > 0
            # in the kernel: a process started now is not tracked at all
            other = subprocess.Popen(["sleep", "0.1"])
            other.wait()
            tracked = {k.value for k in c.bpf["threads"].keys()} | {k.value for k in c.bpf["dead_threads"].keys()}
            assert other.pid not in tracked and proc.pid in tracked
    finally:
        out, _ = proc.communicate()
    assert workload.parse_summary(out)["self_check"]["ok"]
