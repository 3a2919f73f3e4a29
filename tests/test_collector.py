"""The collector against the real kernel and the bundled workload's ground truth.

Every count compared here comes from the workload's own summary: kernel
aborts counted in its abort handlers, which only abort_ip reaches.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support import (
    ISOLATED_PRIORITY, STORM_RULE, STORM_RUN, assert_exact, fdinfo_stats, run_realtime, storm_problem,
)

from rseqtop import workload
from rseqtop.collect import Collector
from rseqtop.kernel import bpfsys
from rseqtop.kernel import facts as kernel

# Every test here faces the kernel: scripts/kernels runs them in a VM of
# each kernel in the matrix, and its table shows each one's "figure".
pytestmark = pytest.mark.kernel

NCPU = os.cpu_count() or 1
EXIT_CLEARS = kernel.kernel_version() >= kernel.EXIT_CLEARS_SINCE

OWN = dict(os.environ, GLIBC_TUNABLES="glibc.pthread.rseq=0")  # the workload registers its own areas
extended_rseq = kernel.extended_rseq


def observe(collector, args, env=None, realtime=False, priority=1):
    """Run the workload to its end, then read the collector. realtime: run it
    SCHED_FIFO, so that other tasks on a busy machine cannot preempt its
    workers (cause-attribution tests want only their own inducer)."""
    args = [str(a) for a in args]
    if realtime:
        summary = run_realtime(args, env, priority=priority)
    else:
        summary = workload.run(args, timeout=120, env=env)
    return summary, collector.poll()




INDUCERS = {
    "oversubscribed": ["--threads", 4 * NCPU, "--in-cs-delay", 3000, "--op", "delay"],
    "signals": ["--threads", NCPU, "--signal-rate", 2000, "--in-cs-delay", 3000],
    "migration": ["--threads", NCPU, "--migrate-rate", 200, "--in-cs-delay", 3000],
    "membarrier": ["--threads", NCPU, "--membarrier-rate", 500, "--in-cs-delay", 3000],
}


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
@pytest.mark.parametrize("inducer", list(INDUCERS))
def test_exact_per_thread_and_per_site(collector, inducer, pinned, record_property):
    args = INDUCERS[inducer] + ["--duration", 1.0]
    if pinned:
        if inducer == "migration":
            args += ["--cpus", f"0-{NCPU - 1}"]  # migration needs somewhere to go
        else:
            args += ["--cpus", 0]
    summary, snap = observe(collector, args)
    assert summary["totals"]["aborts"] > 0, "the inducer produced no aborts; the test proves nothing"
    proc = assert_exact(summary, snap)
    record_exact(record_property, summary, proc)


def record_exact(record_property, summary, proc):
    sites = sum(1 for op in summary["ops"].values() if op["aborts"])
    record_property("figure", f"{proc.counts.aborts}={summary['totals']['aborts']} aborts, "
                              f"{len(summary['threads'])} threads, {sites} sites")


def shares(proc):
    total = proc.counts.aborts
    return {name: n / total for name, n in proc.counts.causes}


def share_of(s: dict, cause: str) -> float:
    """The share of aborts whose (fresh) cause includes `cause`."""
    return sum(v for k, v in s.items() if cause in k.split("+") and not k.startswith("stale"))


def stale_share(s: dict) -> float:
    return sum(v for k, v in s.items() if k.startswith("stale"))


def check_shares(record_property, proc, cause: str, least: float):
    """cause's share at least `least`, unknown under 1%, no stale cause on
    kernels that clear the rseq event on every return to user space."""
    s = shares(proc)
    got = share_of(s, cause)
    unknown = s.get("unknown", 0.0)
    stale = stale_share(s)
    record_property("figure", f"{cause} {100 * got:.1f}% of {proc.counts.aborts}, unknown {100 * unknown:.1f}%"
                              + (f", stale {100 * stale:.1f}%" if stale else ""))
    assert got >= least, s
    assert unknown < 0.01, s
    if EXIT_CLEARS:
        assert stale == 0, s


def abi_args(abi: str, record_property):
    """(extra workload arguments, env) for a registration: "glibc" (glibc's
    32-byte area), "legacy" (the workload's own 32-byte area) or "v2" (its
    own longer area; None before 6.3, where the kernel takes 32-byte areas
    only: the figure says so)."""
    if abi == "glibc":
        return [], None
    if abi == "v2" and not extended_rseq():
        record_property("figure", "n/a: no areas longer than 32 bytes before 6.3")
        return None
    return ["--rseq-abi", abi], OWN


@pytest.mark.parametrize("abi", ["glibc", "v2"])
def test_signal_only_run_is_attributed_to_signals(collector, record_property, abi):
    extra = abi_args(abi, record_property)
    if extra is None:
        return
    summary, snap = observe(collector, ["--threads", 1, "--cpus", NCPU - 1, "--signal-rate", 10000,
                                        "--in-cs-delay", 5000, "--op", "delay", "--duration", 1.5, "--inducer-cpus", 0]
                            + extra[0], env=extra[1], realtime=True)
    proc = assert_exact(summary, snap)
    print(f"signal-only run: aborts={proc.counts.aborts} shares={shares(proc)}")
    check_shares(record_property, proc, "signal", 0.99)


def test_membarrier_only_run_is_attributed_to_membarrier(collector, record_property):
    summary, snap = observe(collector, ["--threads", 1, "--cpus", NCPU - 1, "--membarrier-rate", 5000,
                                        "--in-cs-delay", 5000, "--op", "delay", "--duration", 1.5, "--inducer-cpus", 0],
                            realtime=True)
    proc = assert_exact(summary, snap)
    print(f"membarrier-only run: aborts={proc.counts.aborts} shares={shares(proc)}")
    if "membarrier" in collector.plan.unavailable_causes:
        # 6.1 has no csd events: the IPIs' aborts are counted exactly, the
        # cause is unavailable (front ends say n/a, never 0)
        assert summary["totals"]["aborts"] > 0 and not any("membarrier" in k for k, _ in proc.counts.causes)
        assert "csd:csd_function_entry" in " ".join(collector.plan.missing)
        record_property("figure", f"cause n/a (no csd events), {proc.counts.aborts} aborts exact")
        return
    check_shares(record_property, proc, "membarrier", 0.95)
    assert proc.counts.membarrier_ipis > 0


def test_migration_run_shows_migrate(collector, record_property):
    summary, snap = observe(collector, ["--threads", 1, "--migrate-rate", 300, "--in-cs-delay", 5000,
                                        "--op", "delay", "--duration", 1.5])
    proc = assert_exact(summary, snap)
    print(f"migration run: aborts={proc.counts.aborts} causes={dict(proc.counts.causes)}")
    s = shares(proc)
    record_property("figure", f"migrate {100 * share_of(s, 'migrate'):.1f}% of {proc.counts.aborts}, "
                              f"{proc.counts.migrations} migrations")
    assert any("migrate" in k for k, _ in proc.counts.causes), proc.counts.causes
    assert proc.counts.migrations > 0 and s.get("unknown", 0) < 0.01, s
    if EXIT_CLEARS:
        assert stale_share(s) == 0, s


@pytest.mark.parametrize("abi", ["glibc", "v2"])
def test_oversubscribed_run_is_dominated_by_preemption(collector, record_property, abi):
    extra = abi_args(abi, record_property)
    if extra is None:
        return
    summary, snap = observe(collector, ["--threads", 8, "--cpus", 0, "--in-cs-delay", 5000,
                                        "--op", "delay", "--duration", 1.5] + extra[0], env=extra[1])
    proc = assert_exact(summary, snap)
    print(f"oversubscribed run: aborts={proc.counts.aborts} shares={shares(proc)}")
    check_shares(record_property, proc, "preempt", 0.95)
    assert proc.counts.preempts > 0


@pytest.fixture(scope="module")
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


@pytest.mark.parametrize("abi", ["legacy", "v2"])
def test_own_registrations_counted_by_abi(sys_collector, abi, record_property):
    collector = sys_collector
    args = ["--threads", 3, "--duration", 0.3, "--op", "counter", "--rseq-abi", abi]
    if abi == "v2" and not extended_rseq():
        with pytest.raises(workload.WorkloadError) as err:
            workload.run([str(a) for a in args], env=OWN)
        assert err.value.exit_code == 1 and "6.3" in err.value.stderr
        record_property("figure", "n/a: no areas longer than 32 bytes before 6.3")
        return
    summary, snap = observe(collector, args, env=OWN)
    reg = summary["registration"]
    assert reg["mode"] == "own" and reg["abi"] == abi and (reg["rseq_len"] == 32) == (abi == "legacy")
    proc = snap.process(summary["pid"])
    assert reg["own_registrations"] == 3
    want = reg["own_registrations"] + reg["probe_registrations"]
    assert proc.registrations == want
    assert dict(proc.registrations_by_abi) == {abi: want}
    assert proc.unregistrations == reg["own_unregistrations"] + reg["probe_registrations"]
    record_property("figure", f"{abi} {want}={dict(proc.registrations_by_abi)[abi]} ({reg['rseq_len']} bytes)")


@pytest.mark.parametrize("abi", ["glibc", "legacy", "v2"])
def test_yield_heavy_run_exact_and_stale_only_before_6_19(collector, abi, record_property):
    """Switch-outs and signals outside sections (sched_yield between
    operations) leave the 6.18 kernel's event mask set: some later aborts are
    "stale" (17-73% of a few dozen here on 6.18). From 6.19 the kernel clears it on every
    return to user space, for legacy and V2 registrations alike: no stale
    abort, and exact counts either way."""
    args = ["--threads", 4, "--cpus", 0, "--yield", "--in-cs-delay", 20000, "--op", "delay", "--duration", 1.0,
            "--signal-rate", 500]  # signals make sure there are aborts (under emulation too)
    extra = abi_args(abi, record_property)
    if extra is None:
        return
    summary, snap = observe(collector, args + extra[0], env=extra[1])
    assert summary["totals"]["aborts"] > 0
    proc = assert_exact(summary, snap)
    s = shares(proc)
    stale = stale_share(s)
    record_property("figure", f"{proc.counts.aborts} exact, stale {100 * stale:.1f}%, "
                              f"unknown {100 * s.get('unknown', 0):.1f}%")
    print(f"yield-heavy run ({abi}): aborts={proc.counts.aborts} shares={s}")
    assert s.get("unknown", 0) < 0.01, s
    if EXIT_CLEARS:
        assert stale == 0, s


@pytest.mark.parametrize("abi", ["legacy", "v2"])
def test_updates_follow_the_registration_abi(collector, abi, record_property):
    """Up to 6.18 the kernel rewrites a thread's IDs (rseq_update) after
    every context switch; from 7.1 (7.0.10) only for legacy (32-byte)
    registrations, while V2 ones get them written only when they change.
    Two threads taking turns on one CPU: updates against preemptions."""
    extra = abi_args(abi, record_property)
    if extra is None:
        return
    summary, snap = observe(collector, ["--threads", 2, "--cpus", 0, "--yield", "--op", "counter", "--duration", 0.5]
                            + extra[0], env=extra[1])
    threads = [t for t in snap.threads_of(summary["pid"]) if str(t.tid) in summary["threads"]]
    updates, preempts = sum(t.counts.updates for t in threads), sum(t.counts.preempts for t in threads)
    record_property("figure", f"{updates} updates / {preempts} preemptions")
    assert preempts > 100
    if kernel.ids_written_lazily(abi=abi):
        assert updates <= len(threads) * 3 + preempts // 100, (updates, preempts)
    else:
        assert updates >= preempts * 0.9, (updates, preempts)


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
    if "HAVE_RSEQ_UPDATE_MM_CID" not in collector.plan.defines:
        # rseq_update has no mm_cid before 6.3: shown as unknown (-1), never 0
        collector.want_mm_cid(True)
        try:
            assert _sleep_thread(collector).mm_cid == -1
        finally:
            collector.want_mm_cid(False)
        return
    collector.want_mm_cid(True)
    try:
        collector.poll()
        if collector.plan.mm_cid_on_demand:
            # sampled: attached for mm_cid_window seconds after each read
            assert collector.loader.mm_cid_attached
            time.sleep(collector.mm_cid_window + 0.3)
            assert not collector.loader.mm_cid_attached, "mm_cid probe still attached after its window"
        # From here a window as long as each whole run: starting a process
        # alone can take longer than the 0.2 s default under QEMU TCG, which
        # then sampled none of its switches (the window is checked above).
        window, collector.mm_cid_window = collector.mm_cid_window, 120.0
        try:
            collector.poll()
            assert _sleep_thread(collector).mm_cid == 0
            summary, snap = observe(collector, ["--threads", 2, "--duration", 0.3, "--op", "counter"])
        finally:
            collector.mm_cid_window = window
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


def no_task_storage_here(collector) -> bool:
    """Whether this kernel keeps the hot state in the threads hash anyway
    (before 6.9, or without BTF): known from the shared collector's plan,
    so that the tests below compile no program of their own for nothing
    (a compile takes 16 s in a kernel VM)."""
    if collector.plan.hot_storage:
        return False
    assert kernel.kernel_version() < (6, 9) or not Path("/sys/kernel/btf/vmlinux").exists()
    return True


@contextlib.contextmanager
def fallback_collector(collector, monkeypatch):
    """A collector that keeps the hot state in the threads hash: the shared
    one where the kernel gives no choice, else one with task storage
    refused."""
    from rseqtop.collect import loader

    if no_task_storage_here(collector):
        yield collector
        return
    monkeypatch.setattr(loader, "hot_storage_usable", lambda: False)
    with Collector() as c:
        yield c


def test_hot_state_fallback_without_task_storage(collector, monkeypatch):
    """Kernels without thread pidfds keep the hot state in the threads
    hash; same counts."""
    with fallback_collector(collector, monkeypatch) as c:
        assert not c.plan.hot_storage and "HOT_TASK_STORAGE" not in c.plan.defines
        summary, snap = observe(c, INDUCERS["oversubscribed"] + ["--duration", 0.5])
        assert_exact(summary, snap)
        for tid, rec in summary["threads"].items():
            t = next(t for t in snap.threads_of(summary["pid"]) if t.tid == int(tid))
            assert abs(t.counts.preempts - rec["nivcsw"]) <= 3 + rec["nivcsw"] // 100
            assert t.counts.updates > 0


def test_slots_and_pidfds_where_the_task_iterator_is_refused(collector, monkeypatch):
    """Task storage without the task iterator: process totals from the
    slots, threads through a pidfd each; same counts whatever threads are
    asked for."""
    from rseqtop.collect import loader

    if no_task_storage_here(collector):
        return
    monkeypatch.setattr(loader, "attach_task_iterator", lambda bcc, bpf: None)
    with Collector() as c:
        assert c.plan.hot_storage
        assert c.loader.hot_iter_link is None
        summary = workload.run([str(a) for a in INDUCERS["oversubscribed"] + ["--duration", 0.5]], timeout=120)
        for mode in ("all", "aborting", "none"):
            c.want_threads(mode)
            snap = c.poll()
            if mode == "none":
                assert snap.process(summary["pid"]).counts.aborts == summary["totals"]["aborts"]
            else:
                assert_exact(summary, snap)


def test_hot_state_in_task_storage_is_read_while_threads_live(collector):
    """Live threads' updates and preemptions come from task storage (through
    pidfds) on kernels that have it: they grow while the workload runs."""
    from rseqtop.kernel import facts as kernel

    if kernel.kernel_version() >= (6, 9) and Path("/sys/kernel/btf/vmlinux").exists():
        assert collector.plan.hot_storage, "6.9+ with BTF: task storage expected"
    proc = workload.start(["--threads", "2", "--cpus", "0", "--yield", "--op", "counter", "--duration", "30"])
    try:
        time.sleep(0.5)
        a = collector.poll().process(proc.pid)
        time.sleep(0.4)
        b = collector.poll().process(proc.pid)
    finally:
        proc.terminate()
        proc.communicate()
    assert a is not None and b is not None and b.threads_live >= 2
    assert b.counts.updates >= a.counts.updates > 0  # 6.19+: only when the IDs change
    assert b.counts.preempts > a.counts.preempts > 0


def test_pid_filter_in_the_kernel_and_changed_at_run_time(collector):
    """Threads of processes the filter excludes are not tracked (and are
    remembered as excluded); changing the filter starts tracking them."""
    c = collector
    c.set_filter(pids=[os.getpid()])
    try:
        proc = workload.start(["--threads", "2", "--yield", "--op", "counter", "--duration", "30"])
        try:
            time.sleep(0.4)
            assert c.poll().process(proc.pid) is None
            c.set_filter(pids=[proc.pid])
            time.sleep(0.4)
            first = c.poll().process(proc.pid)
            time.sleep(0.3)
            second = c.poll().process(proc.pid)
            assert first is not None and first.threads_live >= 2
            # preemptions mean the same on every kernel (updates do not: 6.19+
            # writes the IDs only when they change)
            assert second.counts.preempts > first.counts.preempts > 0
            # in the kernel: a process started now is not tracked at all
            other = subprocess.Popen(["sleep", "0.1"])
            other.wait()
            tracked = {k.value for k in c.bpf["threads"].keys()} | {k.value for k in c.bpf["dead_threads"].keys()}
            assert other.pid not in tracked and proc.pid in tracked
        finally:
            proc.terminate()
            out, _ = proc.communicate()
    finally:
        c.set_filter()
    assert workload.parse_summary(out)["self_check"]["ok"]


def test_hot_state_iterator_agrees_with_per_thread_reads(collector):
    """The task iterator (one read for every thread) gives each thread the
    values its pidfd lookup gives, read while the threads are stopped."""
    from rseqtop.collect.reader import iterator_threads
    from rseqtop.kernel import taskstorage

    if no_task_storage_here(collector):  # no thread pidfds before 6.9: the state is in the hash
        return
    assert collector.loader.hot_iter_link is not None, "the task iterator did not attach"
    proc = workload.start(["--threads", "2", "--idle-threads", "50", "--idle-period", "20", "--duration", "30"])
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        data = collector.loader.iterate(collector.loader.constants["RSEQTOP_ITER_THREADS_ALL"])
        _, it = iterator_threads(data, ctypes.sizeof(collector.bpf["threads"].Leaf))
        value = collector.loader.hot_value
        direct = {}
        for tid in tids:
            h = taskstorage.lookup(collector.loader.hot_fd, tid, value)
            if h is not None:
                direct[tid] = (h.updates, h.preempts, h.cpu_id)
        proc.send_signal(signal.SIGCONT)
    finally:
        proc.terminate()
        proc.communicate()
    assert len(direct) >= 52
    assert {tid: it.get(tid) for tid in direct} == direct
    assert any(upd > 0 for upd, _, _ in direct.values())


def test_process_totals_exact_whatever_threads_are_asked_for(collector, record_property):
    """Front ends ask only for the threads they show; process totals stay
    exact (summed in the kernel, in process slots, where there is task
    storage), and the threads listed are the ones asked for, exact too."""
    record_property("figure", totals_whatever_threads_are_asked_for(collector))


def test_processes_without_a_slot_are_summed_by_the_task_iterator(collector, record_property):
    """More live processes than process slots: the ones without a slot are
    summed by the task iterator at every poll, exactly."""
    if no_task_storage_here(collector):
        return
    with Collector(sizes={"RSEQTOP_MAX_SLOTS": 1}) as c:
        assert c.plan.hot_storage
        figure = totals_whatever_threads_are_asked_for(c)
        fill = {m.name: m for m in c.poll().self_stats.maps}["proc_slot"]
    # this test's own process, at least, was tracked before the workload started
    assert fill.dropped > 0, "every process had a slot: the iterator's share was not tested"
    assert fill.capacity == 1 and fill.used in (0, 1), fill  # 0: its holder died and gave it back
    dropped = fill.dropped
    record_property("figure", f"{figure}; {dropped} tracked without a slot")


def test_dead_processes_give_their_slot_back(collector, record_property):
    """A dead process's slot goes back to the kernel a poll after it is seen
    dead, zeroed: the next process that takes it counts from zero."""
    if no_task_storage_here(collector):
        return
    proc_slot = collector.bpf["proc_slot"]
    taken, reused = {}, 0
    for _ in range(6):
        summary, snap = observe(collector, INDUCERS["signals"])
        assert_exact(summary, snap)
        p = snap.process(summary["pid"])
        slot = proc_slot.get(proc_slot.Key(tgid=p.pid, gen=p.gen))
        assert slot is not None, "the process had no slot"
        reused += slot.value in taken.values()
        taken[(p.pid, p.gen)] = slot.value
        for _ in range(2):
            collector.poll()
        assert proc_slot.get(proc_slot.Key(tgid=p.pid, gen=p.gen)) is None, "a dead process kept its slot"
        if reused >= 2:
            break
    # the stack gives the slot freed last first: only another process
    # starting in between takes it instead
    assert reused >= 2, f"slots taken {taken}: none given back was taken again"
    record_property("figure", f"{len(taken)} runs, {reused} in a slot used before")


def totals_whatever_threads_are_asked_for(collector) -> str:
    # 150 threads: "all" writes ~60 KB, more than the iterator's 32 KiB
    # buffer, so the kernel runs the program again for a thread at a buffer
    # boundary (it must be summed once)
    proc = workload.start(["--threads", "2", "--idle-threads", "150", "--idle-period", "20", "--signal-rate", "2000",
                           "--in-cs-delay", "3000", "--duration", "30"])
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGSTOP)  # frozen: every mode must see the same counts
        time.sleep(0.2)
        seen = {}
        for mode in ("none", "aborting", "all"):
            collector.want_threads(mode)
            seen[mode] = collector.poll()
        proc.send_signal(signal.SIGCONT)
    finally:
        collector.want_threads("all")
        proc.terminate()
        out, _ = proc.communicate()
    summary = workload.parse_summary(out)
    totals = {m: s.process(proc.pid).counts for m, s in seen.items()}
    assert totals["none"] == totals["aborting"] == totals["all"], totals
    nlive = {s.process(proc.pid).threads_live for s in seen.values()}
    listed = {m: [t for t in s.threads_of(proc.pid) if t.alive] for m, s in seen.items()}
    assert nlive == {len(listed["all"])} and len(listed["all"]) >= 152  # 2 workers + 150 idle, main, inducer
    retired = seen["all"].process(proc.pid).counts.updates - sum(t.counts.updates for t in listed["all"])
    assert retired == 0, "process updates are not the sum of its threads'"
    aborting = {t.tid for t in listed["all"] if t.counts.aborts}
    assert sum(t.counts.aborts for t in listed["aborting"]) == totals["all"].aborts > 0
    if collector.loader.hot_iter_link is not None:
        assert {t.tid for t in listed["aborting"]} == aborting
        assert listed["none"] == [], "threads listed though none were asked for"
    else:  # no task iterator (before 6.9): every thread is read, and listed
        assert kernel.kernel_version() < (6, 9) or not collector.plan.hot_storage
        assert {t.tid for t in listed["aborting"]} >= aborting
    # and the run's own count once it is over
    final = collector.poll().process(proc.pid)
    assert final.counts.aborts == summary["totals"]["aborts"]
    return (f"{totals['all'].aborts} aborts; threads listed none/aborting/all: "
            f"{len(listed['none'])}/{len(listed['aborting'])}/{len(listed['all'])}")


# -- who preempted (issue 15, item 1) ------------------------------------
ANTAGONIST = "hog-15"


def antagonist_run(collector, threads, *extra) -> tuple:
    """One worker in a long section on the last CPU, preempted there by
    `threads` antagonists named ANTAGONIST, SCHED_FIFO above other tests'
    workloads: (its summary, the snapshot after it)."""
    return observe(collector, ["--threads", 1, "--cpus", NCPU - 1, "--op", "delay", "--in-cs-delay", 5000,
                               "--antagonist", ANTAGONIST, "--antagonist-threads", threads, *extra,
                               "--antagonist-rate", 2000, "--duration", 1.5],
                   realtime=True, priority=ISOLATED_PRIORITY)


@pytest.mark.parametrize("threads", [1, 8])
def test_antagonist_is_named_as_the_top_preempter(collector, record_property, threads):
    """Named threads pinned to the worker's CPU, one realtime priority
    above it, preempt it at each wake-up: rseqtop must name them (process,
    comm and a thread of theirs from the workload's summary) as the
    preempter of at least 95% of the run's aborts (all of which are
    preemptions here: no other inducer, other tasks kept off by SCHED_FIFO
    at a priority above other tests' workloads), for the process and for
    the section, and never more than the antagonists ran. 8 threads of one
    name are one preempter, one map entry per section."""
    summary, snap = antagonist_run(collector, threads)
    ant = summary["antagonist"]
    assert ant["comm"] == ANTAGONIST and ant["realtime"] and ant["runs"] > 0
    proc = assert_exact(summary, snap)
    total = summary["totals"]["aborts"]
    assert total > 50, "the antagonist preempted no section; the test proves nothing"
    pre = proc.preempters
    assert sum(e.count for e in pre) == sum(n for cause, n in proc.counts.causes if "preempt" in cause)
    top = pre[0]
    record_property("figure", f"{top.comm} {100 * top.count / total:.1f}% of {total} aborts "
                              f"({ant['runs']} antagonist runs)")
    assert (top.tgid, top.comm) == (summary["pid"], ANTAGONIST) and top.pid in ant["tids"], pre[:3]
    assert top.count >= 0.95 * total, pre[:3]
    assert top.count <= ant["runs"]  # one preemption aborts at most one section
    assert top.kthread is not True
    site = {s.start_ip: s for s in snap.sites_of(summary["pid"])}[int(summary["ops"]["delay"]["start_ip"], 16)]
    assert site.preempters[0].pid in ant["tids"] and site.preempters[0].count == top.count
    entries = [r for r in collector.read().preempters if r.pid == summary["pid"] and r.comm == ANTAGONIST]
    assert len(entries) == 1, entries


def test_a_preempter_that_names_itself_late_is_named_rightly(collector, record_property):
    """Antagonists that take their name only after their first 20 wake-ups
    (as threads that call pthread_setname_np once running): what preempted
    under any other name of theirs is at most those wake-ups plus the
    name cache's refresh (RSEQTOP_NAME_REFRESH uses per thread and CPU),
    not the whole run, as when a cached name stayed until another task
    took its slot; the 5% are the main test's margin above."""
    from rseqtop.kernel.bpfgen import header_constants

    threads, early = 2, 20
    summary, snap = antagonist_run(collector, threads, "--antagonist-named-after", early)
    ant = summary["antagonist"]
    assert ant["realtime"] and ant["unnamed_runs"] == threads * early
    proc = assert_exact(summary, snap)
    total = summary["totals"]["aborts"]
    assert total > 200, "the antagonist preempted too few sections; the test proves nothing"
    named = sum(e.count for e in proc.preempters if e.tgid == summary["pid"] and e.comm == ANTAGONIST)
    other = sum(e.count for e in proc.preempters if e.tgid == summary["pid"] and e.comm != ANTAGONIST)
    refresh = header_constants()["RSEQTOP_NAME_REFRESH"]
    record_property("figure", f"{named} of {total} aborts under {ANTAGONIST}, {other} under the earlier name "
                              f"({ant['unnamed_runs']} wake-ups before it)")
    assert other <= ant["unnamed_runs"] + refresh * threads + 0.05 * total, proc.preempters[:4]
    assert named >= 0.95 * total - ant["unnamed_runs"] - refresh * threads, proc.preempters[:4]


# -- abort storms (issue 15, item 4) -------------------------------------
def test_signal_storms_match_the_workloads_own_count(collector, record_property):
    """Bursts of signals at one thread in a long section: every burst is a
    run of consecutive aborts, and the storm count (runs reaching K, each
    abort less than T after the one before) must equal what the workload
    computed from its own abort times by the same rule (support.STORM_RUN:
    gaps far from T on either side, also in a slow VM)."""
    collector.set_storm(STORM_RULE)
    try:
        summary, snap = observe(collector, STORM_RUN, realtime=True)
    finally:
        collector.set_storm(None)
    proc = assert_exact(summary, snap)
    want = summary["totals"]["storms"]
    record_property("figure", f"{proc.storms}={want} storms, {proc.counts.aborts} aborts, "
                              f"longest run {summary['totals']['max_abort_run']}")
    assert not storm_problem(summary), storm_problem(summary)
    assert proc.storms == want
    sites = {s.start_ip: s for s in snap.sites_of(summary["pid"])}
    for name, op in summary["ops"].items():
        ip = int(op["start_ip"], 16)
        assert (sites[ip].storms if ip in sites else 0) == op["storms"], name


def test_no_storm_below_the_rule(collector, record_property):
    """The same bursts with K above the burst length: a burst alone never
    reaches it (preemptions during the pauses may chain a longer run), and
    rseqtop counts exactly the runs the workload counted (a run counts once
    when it reaches K, never before)."""
    k = 64
    collector.set_storm((k, STORM_RULE[1]))
    try:
        summary, snap = observe(collector, STORM_RUN + ["--storm-k", k, "--signal-bursts", 2], realtime=True)
    finally:
        collector.set_storm(None)
    proc = assert_exact(summary, snap)
    record_property("figure", f"{proc.storms}={summary['totals']['storms']} storms at K={k}, "
                              f"longest run {summary['totals']['max_abort_run']}")
    assert proc.counts.aborts > 16
    assert proc.storms == summary["totals"]["storms"]


def test_program_run_statistics_match_what_fdinfo_shows(collector):
    """The reader takes each program's run time, runs and skipped runs
    from bpf_prog_info (one system call): the same figures as fdinfo's."""
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = stats.read_text().strip()
    stats.write_text("1")
    try:
        # the task iterator's program runs only when asked: still between the two reads
        collector.poll()
    finally:
        stats.write_text(before)
    checked = 0
    for name, fd in collector.loader.programs():
        want = fdinfo_stats(fd)
        got = bpfsys.prog_stats(fd)
        if name == "bpf_iter__task":
            assert got == want and got[1] > 0, (got, want)
            checked += 1
        elif before == "1":  # running meanwhile, and stats stay on: read second, never behind
            assert all(g >= w for g, w in zip(got, want)), (name, got, want)
        else:  # running meanwhile (stats off now: only skipped runs still move)
            assert got[:2] == want[:2] and got[2] >= want[2], (name, got, want)
    assert checked == int(collector.loader.hot_iter_link is not None)
