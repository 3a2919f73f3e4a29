"""`rseqtop trace --events ...`: the per-thread timeline of aborts,
preemptions, migrations, signals and membarrier IPIs. Formatting and bad
input without BPF; the real stream against the bundled workload's own
counts of the signals it sent and the migrations it requested (root)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from rseqtop import workload
from support import Trace
from rseqtop.commands import trace
from rseqtop.kernel import tracefs
from rseqtop.kernel.bpfgen import header_constants

K = header_constants()
SITE = "rseq-workload!rseq_op_delay+0x14"
ALL = "abort,preempt,migrate,signal,membarrier"


def event(kind: str, **fields):
    base = dict(ts_ns=5_000_000_000, start_ip=0x401000, abort_ip=0x401100, tgid=100, tid=101, cpu=1, cause=1,
                offset=0x12, gen=0, comm=b"wl\0", run=1, kind=K[f"RSEQTOP_EV_{kind.upper()}"], from_cpu=0,
                to_cpu=0, signo=0, next_tid=0, next_tgid=0, next_comm=b"\0")
    base.update(fields)
    return SimpleNamespace(**base)


def tracer(kinds, as_json=False, pids=frozenset()):
    collector = SimpleNamespace(symbolize=lambda pid, ip: SITE)
    out = io.StringIO()
    return trace.Tracer(collector, out, as_json, set(pids), None, 16, frozenset(kinds)), out


def body(line: str) -> str:
    """A text line without its time stamp (local time)."""
    return line[16:]


def test_each_kind_as_a_text_line():
    tr, out = tracer(ALL.split(","))
    tr.show(event("abort", ts_ns=1))
    tr.show(event("preempt", ts_ns=2, next_tid=7, next_tgid=6, next_comm=b"stress-ng\0"))
    tr.show(event("migrate", ts_ns=3, from_cpu=0, to_cpu=1))
    tr.show(event("signal", ts_ns=4, signo=10))
    tr.show(event("membarrier", ts_ns=5))
    tr.release()
    lines = out.getvalue().splitlines()
    assert tr.header().split() == ["TIME", "COMM", "PID", "TID", "CPU", "EVENT", "DETAIL"]
    assert [body(ln) for ln in lines] == [
        f"wl                   100     101   1  abort      preempt                {SITE:<40} +0x12",
        "wl                   100     101   1  preempt    by stress-ng pid 6 tid 7",
        "wl                   100     101   1  migrate    cpu 0 -> 1",
        "wl                   100     101   1  signal     10 (SIGUSR1)",
        "wl                   100     101   1  membarrier rseq IPI",
    ]
    assert tr.printed == 5


def test_each_kind_as_json():
    tr, out = tracer(ALL.split(","), as_json=True)
    tr.show(event("abort", ts_ns=1, run=20))
    tr.show(event("preempt", ts_ns=2, next_tid=7, next_tgid=6, next_comm=b"stress-ng\0"))
    tr.show(event("migrate", ts_ns=3, from_cpu=3, to_cpu=2))
    tr.show(event("signal", ts_ns=4, signo=10))
    tr.show(event("membarrier", ts_ns=5))
    tr.release()
    recs = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [r["event"] for r in recs] == ["abort", "preempt", "migrate", "signal", "membarrier"]
    assert all(r["pid"] == 100 and r["tid"] == 101 and r["cpu"] == 1 and r["comm"] == "wl" for r in recs)
    assert [r["ts_ns"] for r in recs] == [1, 2, 3, 4, 5]
    abort, pre, mig, sig, mb = recs
    assert (abort["cause"], abort["site"], abort["offset"], abort["run"], abort["storm"]) == \
        ("preempt", SITE, 0x12, 20, True)
    assert (pre["next_pid"], pre["next_tid"], pre["next_comm"]) == (6, 7, "stress-ng")
    assert (mig["from_cpu"], mig["to_cpu"]) == (3, 2)
    assert (sig["signo"], sig["signal"]) == (10, "SIGUSR1")
    assert mb["ipi"] == "rseq"


def test_the_default_stream_is_todays_abort_lines():
    """--events abort (the default): no EVENT column, no "event" key, no
    holding back, and other kinds never printed."""
    tr, out = tracer({"abort"})
    assert tr.header() == trace.HEADER
    tr.show(event("migrate", from_cpu=0, to_cpu=1))
    tr.show(event("abort", cause=4, offset=0x1c))
    assert [body(ln) for ln in out.getvalue().splitlines()] == \
        [f"wl                   100     101   1  {'signal':<22} {SITE:<40} +0x1c"]
    tr, out = tracer({"abort"}, as_json=True)
    tr.show(event("abort"))
    assert "event" not in json.loads(out.getvalue())


def test_the_timeline_prints_in_time_order_after_the_hold():
    """A preemption arrives when its preempter leaves the CPU, possibly after
    later events of the thread: held HOLD_NS, then printed in time order."""
    tr, out = tracer(ALL.split(","))
    now = 10 * trace.HOLD_NS
    tr.show(event("signal", ts_ns=now - trace.HOLD_NS // 2, signo=12))  # too young to print
    tr.show(event("migrate", ts_ns=now - 2 * trace.HOLD_NS, from_cpu=1, to_cpu=0))
    tr.show(event("preempt", ts_ns=now - 3 * trace.HOLD_NS, next_comm=b"x\0"))
    tr.release(now)
    assert [body(ln).split()[4] for ln in out.getvalue().splitlines()] == ["preempt", "migrate"]
    tr.release()
    assert body(out.getvalue().splitlines()[-1]).split()[4:] == ["signal", "12", "(SIGUSR2)"]


def test_a_preempter_not_seen():
    unknown = K["RSEQTOP_PREEMPTER_UNKNOWN"]
    tr, out = tracer({"preempt"})
    tr.show(event("preempt", next_tid=unknown, next_tgid=unknown))
    tr.release()
    assert body(out.getvalue()).endswith("preempt    by ? (not seen)\n")
    tr, out = tracer({"preempt"}, as_json=True)
    tr.show(event("preempt", next_tid=unknown, next_tgid=unknown))
    tr.release()
    r = json.loads(out.getvalue())
    assert (r["next_pid"], r["next_tid"], r["next_comm"]) == (None, None, None)


def test_pid_filter_and_kind_selection():
    tr, out = tracer({"signal"}, pids={100})
    tr.show(event("signal", tgid=200, signo=10))
    tr.show(event("abort"))
    tr.show(event("signal", signo=10))
    tr.release()
    assert len(out.getvalue().splitlines()) == 1 and tr.printed == 1


def test_kind_bits_are_the_headers_codes():
    assert trace.kind_bits({"abort"}) == 0
    assert trace.kind_bits({"migrate", "signal"}) == (1 << K["RSEQTOP_EV_MIGRATE"]) | (1 << K["RSEQTOP_EV_SIGNAL"])
    assert trace.kind_bits(ALL.split(",")) == sum(1 << K[f"RSEQTOP_EV_{n.upper()}"] for n in ALL.split(",")[1:])


def test_pids_by_comm_reads_proc(tmp_path):
    for pid, comm in ((10, b"envoy\n"), (11, b"envoy-worker\n"), (12, b"nginx\n")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_bytes(comm)
    (tmp_path / "self").mkdir()
    (tmp_path / "13").mkdir()  # gone meanwhile: no comm
    assert trace.pids_by_comm("^envoy", str(tmp_path)) == [10, 11]
    assert trace.pids_by_comm("^envoy$", str(tmp_path)) == [10]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rseqtop", "trace", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("argv, says", [
    (["--events", "abort,migrate"], "needs -p PID or --comm"),
    (["--events", "preempt", "--comm", "^no-such-process-name-x$"], "no running process matches"),
    (["--events", "abort,bogus"], "unknown event 'bogus'"),
])
def test_bad_events_are_one_line_errors(argv, says):
    out = run_cli(*argv)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], out.stderr
    assert "Traceback" not in out.stderr


# -- against the kernel and the workload -------------------------------------


def start_held(tmp_path, args) -> tuple:
    """The workload with args, waiting for a line before it becomes the
    workload (same pid), so that a trace can be attached from its start:
    (the process, its summary file)."""
    summary_path = tmp_path / "summary.json"
    wl = subprocess.Popen(["sh", "-c", 'read go && exec "$0" "$@"', str(workload.build()), *args,
                           "--json-out", str(summary_path)],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return wl, summary_path


def release_held(wl, wait=True) -> None:
    wl.stdin.write("go\n")
    wl.stdin.close()
    if wait:
        assert wl.wait(timeout=120) == 0, wl.stderr.read()


# the collector's filter between runs: above the largest pid_max (2**22), so
# no process is tracked and the ring holds no other process's events
NO_PID = 2 ** 22 + 1


@pytest.fixture(scope="module")
def timeline_collector(bpf_ok):
    """One collector sending every kind of event, for both traced runs
    (each compile takes 16 s in a kernel VM): (the collector, a list whose
    one item is the Tracer the events go to)."""
    from rseqtop.collect import Collector

    kinds = trace.event_list(ALL)
    collector = Collector(pids=[NO_PID], emit_events=True, threads="none", event_kinds=trace.kind_bits(kinds))
    current = [None]
    with collector:
        collector.open_events(lambda ev: current[0] and current[0].on_event(ev))
        yield collector, current


def traced_run(timeline_collector, tmp_path, args) -> tuple:
    """The workload with args, traced by pid with every kind of event from
    its start, by trace's own Tracer in this process (the command line's
    loop is trace.run, tested on the host below): (its summary, the JSON
    records, the events lost during the run)."""
    collector, current = timeline_collector
    kinds = trace.event_list(ALL)
    wl, summary_path = start_held(tmp_path, args)
    out = io.StringIO()
    current[0] = tracer = trace.Tracer(collector, out, True, {wl.pid}, None, 16, kinds)
    try:
        collector.set_filter(pids=[wl.pid])
        lost_before = collector.poll().self_stats.events_lost
        release_held(wl, wait=False)
        deadline = time.monotonic() + 120
        while wl.poll() is None and time.monotonic() < deadline:
            collector.poll_events(100)  # as trace.run does
        assert wl.wait(timeout=1) == 0, wl.stderr.read()
        collector.poll_events(0)
        tracer.release()
        lost = collector.poll().self_stats.events_lost - lost_before
    finally:
        collector.set_filter(pids=[NO_PID])
        if wl.poll() is None:
            wl.kill()
            wl.wait()
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert recs and all(r["pid"] == wl.pid for r in recs)
    return json.loads(summary_path.read_text()), recs, lost


def two_cpus() -> tuple:
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "needs two CPUs"
    return cpus[0], cpus[1]


@pytest.mark.bpf
@pytest.mark.kernel
def test_timeline_shows_the_workloads_signals_and_migrations_in_order(timeline_collector, tmp_path, record_property):
    """One worker pinned to c0, moved c0 -> c1 -> c0 ... by the workload's
    migration thread, signalled with SIGUSR1: the trace of its pid shows
    exactly the migrations it requested, in that round robin, the signals
    its handler received, and its aborts; and between two migrations every
    event of the worker's own comes from the CPU it was moved to."""
    c0, c1 = two_cpus()
    summary, recs, lost = traced_run(timeline_collector, tmp_path, [
        "--threads", "1", "--cpus", f"{c0},{c1}", "--inducer-cpus", str(c1), "--in-cs-delay", "200",
        "--migrate-rate", "20", "--signal-rate", "30", "--duration", "1"])
    assert lost == 0
    (worker,) = map(int, summary["threads"])
    mine = [r for r in recs if r["tid"] == worker]
    kinds = {k: [r for r in mine if r["event"] == k] for k in ("abort", "preempt", "migrate", "signal")}

    # the workload's own counts
    assert len(kinds["signal"]) == summary["totals"]["signals"] > 0
    assert [r for r in kinds["signal"] if r["signo"] != signal.SIGUSR1] == []
    assert len([r for r in recs if r["event"] == "signal"]) == len(kinds["signal"])  # only the worker's
    assert len(kinds["abort"]) == summary["totals"]["aborts"] > 0
    assert len([r for r in recs if r["event"] == "abort"]) == summary["totals"]["aborts"]
    # what moved the worker before the first request: its start (the kernel
    # placing the new thread) and its own pin, which leaves it on c0
    start = summary["migrations_from_ns"]
    early = [(r["from_cpu"], r["to_cpu"]) for r in kinds["migrate"] if r["ts_ns"] < start]
    if early:
        assert early[-1][1] == c0, early
    moves = [(r["from_cpu"], r["to_cpu"]) for r in kinds["migrate"] if r["ts_ns"] >= start]
    assert len(moves) == summary["migrations_requested"] > 0
    assert moves == [(c0, c1) if i % 2 == 0 else (c1, c0) for i in range(len(moves))]

    # time order, and each of the worker's own events on the CPU it was moved to
    assert [r["ts_ns"] for r in mine] == sorted(r["ts_ns"] for r in mine)
    assert [r["ts_ns"] for r in recs] == sorted(r["ts_ns"] for r in recs)
    on = None
    for r in mine:
        if r["event"] == "migrate":
            on = r["to_cpu"]
        elif on is not None:
            assert r["cpu"] == on, (r, on)

    # preemptions name the task that ran next
    assert kinds["preempt"], "no preemption events"
    # (None: the switch to the successor was not seen, rare)
    bad = [r for r in kinds["preempt"] if r["next_tid"] == worker or (r["next_tid"] and not r["next_comm"])]
    assert not bad, json.dumps([worker, bad])
    record_property("figure", f"{len(kinds['migrate'])} migrate={summary['migrations_requested']} requested(+pin), "
                              f"{len(kinds['signal'])}={summary['totals']['signals']} signals, "
                              f"{len(kinds['abort'])}={summary['totals']['aborts']} aborts, "
                              f"{len(kinds['preempt'])} preemptions")


@pytest.mark.bpf
@pytest.mark.kernel
def test_timeline_shows_membarrier_ipis_of_the_worker(timeline_collector, tmp_path, record_property):
    """The worker spins on c0 while the workload's membarrier thread on c1
    calls MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ: each successful call IPIs
    the worker's CPU at most once (none when it is not running there), so
    the worker sees at most one IPI per call, each on c0."""
    c0, c1 = two_cpus()
    summary, recs, lost = traced_run(timeline_collector, tmp_path, [
        "--threads", "1", "--cpus", str(c0), "--inducer-cpus", str(c1), "--in-cs-delay", "200",
        "--membarrier-rate", "200", "--duration", "1"])
    assert lost == 0
    (worker,) = map(int, summary["threads"])
    # (an IPI also hits the main thread when it runs on c0, at the start or the end)
    ipis = [r for r in recs if r["event"] == "membarrier" and r["tid"] == worker]
    ok = summary["membarrier"]["ok"]
    record_property("figure", f"{len(ipis)} IPI events <= {ok} calls")
    if not (tracefs.ensure_root() / "events" / "csd" / "csd_function_entry").is_dir():
        assert not ipis  # before 6.3: no csd events, the IPIs are not seen
        return
    assert 0 < len(ipis) <= ok
    bad = [r for r in ipis if (r["cpu"], r["ipi"]) != (c0, "rseq")]
    assert not bad, json.dumps([worker, bad])


@pytest.mark.bpf
@pytest.mark.slow
def test_trace_command_streams_the_timeline(bpf_ok, rseqtop_cmd, tmp_path):
    """`rseqtop trace -p PID --events ... --json` itself (host only: a
    compile per run): every signal the workload received, no loss."""
    wl, summary_path = start_held(tmp_path, ["--threads", "1", "--in-cs-delay", "200", "--signal-rate", "30",
                                              "--duration", "1"])
    try:
        tr = Trace(rseqtop_cmd + ["trace", "-p", str(wl.pid), "--events", ALL, "--json"])
        release_held(wl)
        time.sleep((trace.HOLD_NS / 1e9) + 0.3)  # its last events printed (it drains everything on exit too)
        assert tr.stop() == 0
    finally:
        if wl.poll() is None:
            wl.kill()
            wl.wait()
    summary = json.loads(summary_path.read_text())
    recs = [json.loads(line) for line in tr.out]
    err = "".join(tr.err)
    assert "lost" not in err, err
    assert all(r["pid"] == wl.pid for r in recs)
    assert len([r for r in recs if r["event"] == "signal"]) == summary["totals"]["signals"] > 0
    assert len([r for r in recs if r["event"] == "abort"]) == summary["totals"]["aborts"] > 0
