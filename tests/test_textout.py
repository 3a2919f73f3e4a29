"""Batch tables and JSON lines from SyntheticSource data (exact numbers)."""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import subprocess
from types import SimpleNamespace

import pytest

from rseqtop.commands.top import run_batch
from rseqtop.model.synthetic import SyntheticSource
from rseqtop.present import textout
from rseqtop.present.columns import THREAD_COLUMNS, signal_name
from rseqtop.present.rows import LiveModel, cause_split, row_filter, sparkline

HOSTILE = "[bold red]x\x1b[31m\x9b2J"


def model_after(polls: int, **kw) -> LiveModel:
    src = SyntheticSource(**kw)
    m = LiveModel()
    for _ in range(polls):
        m.update(src.poll())
    return m


def test_batch_table_rows_and_numbers():
    text = textout.batch_text(model_after(3, processes=3, threads_per_process=2))
    lines = text.splitlines()
    assert lines[0].startswith("rseqtop ") and "aborts/s 180" in lines[0] and "era classic" in lines[0]
    assert lines[1].split()[:4] == ["PID", "COMM", "THR", "ABORTS/s"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1002", "1001", "1000"]  # by aborts/s, biggest first
    # pid 1002: (2 % 7 + 1) * (1 + 2) * 10 = 90/s, 3 polls of 1 s -> 270 in total
    assert rows[0][1:5] == ["rseq-workload", "2", "90.0", "270"]


def test_batch_threads_and_sort():
    text = textout.batch_text(model_after(2, processes=2, threads_per_process=2), threads=True)
    rows = [line.split() for line in text.splitlines()[2:]]
    assert [r[0] for r in rows] == ["201001", "1001", "201000", "1000"]
    text = textout.batch_text(model_after(2, processes=3, threads_per_process=1), sort="pid")
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["1000", "1001", "1002"]


def test_batch_empty_says_how_to_get_data():
    text = textout.batch_text(model_after(2, processes=0, threads_per_process=0))
    assert "rseqtop demo" in text


def test_json_record_schema_and_values():
    rec = json.loads(textout.json_line(model_after(2, processes=2, threads_per_process=2)))
    assert rec["schema_version"] == textout.SCHEMA_VERSION == 1
    assert rec["interval_s"] == 1.0 and rec["era"] == "classic"
    assert rec["system"]["rates"]["aborts"] == 30 + 60
    p = {p["pid"]: p for p in rec["processes"]}[1001]
    assert p["comm"] == "envoy" and p["threads_live"] == 2
    assert p["totals"]["aborts"] == 120 and p["rates"]["aborts"] == 60.0
    assert p["rates"]["aborts_per_100_preempts"] == 50.0
    assert p["totals"]["causes"] == {"preempt": 100, "signal": 20}
    assert [t["tid"] for t in p["threads"]] == [1001, 201001]
    assert p["sections"][0]["symbol"] == "envoy!rseq_op_counter+0x0"
    assert p["sections"][0]["interrupted_offsets"] == {"16": 30, "24": 30}
    assert set(rec["self"]) >= {"probes_attached", "events_lost", "cpu_percent"}


def with_thread_details(snap):
    """The snapshot with hand-set nodes and last signals: tid == pid got
    SIGUSR1 on node 1, tid pid+200000 none on node 0, and tid pid+300000 a
    real-time signal before its CPU (and so its node) was known."""
    extra = {0: dict(node=1, last_signal=int(signal.SIGUSR1)), 2: dict(node=0, last_signal=0),
             3: dict(cpu=-1, node=-1, last_signal=int(signal.SIGRTMIN) + 1)}
    return dataclasses.replace(snap, threads=tuple(dataclasses.replace(t, **extra[(t.tid - t.pid) // 100000])
                                                   for t in snap.threads))


def test_json_threads_carry_node_and_last_signal():
    for unavailable, names in (((), ["SIGUSR1", None, "SIGRTMIN+1"]), (("signal",), [None, None, None])):
        src, m = SyntheticSource(1, 3, unavailable_causes=unavailable), LiveModel()
        for _ in range(2):
            m.update(with_thread_details(src.poll()))
        threads = json.loads(textout.json_line(m))["processes"][0]["threads"]
        by_tid = {t["tid"]: t for t in threads}
        assert [by_tid[tid]["node"] for tid in (1000, 201000, 301000)] == [1, 0, None]
        assert [by_tid[tid]["last_signal"] for tid in (1000, 201000, 301000)] == names
        assert by_tid[301000]["cpu"] == -1


def test_signal_names():
    assert signal_name(0) is None
    assert signal_name(int(signal.SIGUSR1)) == "SIGUSR1"
    assert signal_name(int(signal.SIGABRT)) == "SIGABRT"  # not its alias SIGIOT
    assert signal_name(int(signal.SIGRTMIN)) == "SIGRTMIN"
    assert signal_name(int(signal.SIGRTMIN) + 3) == "SIGRTMIN+3"
    assert signal_name(int(signal.SIGRTMAX)) == "SIGRTMAX"
    assert signal_name(32) == "SIG32"  # the kernel's first real-time signal, glibc's internal SIGCANCEL


def test_batch_threads_keep_the_view_columns():
    """-b -H mirrors the thread view (H): NODE and LAST SIG are only in a
    process's details and in --json."""
    m = LiveModel()
    m.update(with_thread_details(SyntheticSource(1, 3).poll()))
    header = textout.batch_text(m, threads=True).splitlines()[1]
    assert header.split() == [w for c in THREAD_COLUMNS for w in c.title.split()]
    assert "NODE" not in header and "SIGUSR1" not in textout.batch_text(m, threads=True)


def test_hostile_names_are_inert_in_text_and_exact_in_json():
    m = model_after(2, processes=1, threads_per_process=1, comms=[HOSTILE])
    text = textout.batch_text(m)
    assert "[bold red]x\\x1b[31m\\x9b2J" in text
    assert "\x1b" not in text and "\x9b" not in text
    line = textout.json_line(m)
    assert "\x1b" not in line and "\x9b" not in line and line.isascii()
    assert json.loads(line)["processes"][0]["comm"] == HOSTILE


def test_run_batch_counts_and_closes_the_source():
    src = SyntheticSource(2, 1)
    out = io.StringIO()
    args = SimpleNamespace(json=True, threads=False, sort="aborts_s", all=False)
    assert run_batch(src, args, delay=0.001, count=3, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # COUNT frames, the first right after attaching (as top -b -n)
    assert [json.loads(x)["interval_s"] for x in lines] == [0.0, 1.0, 1.0]
    assert src.closed


def test_batch_n_2_prints_exactly_two_frames():
    out = io.StringIO()
    args = SimpleNamespace(json=False, threads=False, sort="aborts_s", all=False)
    assert run_batch(SyntheticSource(2, 1), args, delay=0.001, count=2, out=out) == 0
    assert sum(1 for line in out.getvalue().splitlines() if line.startswith("rseqtop ")) == 2


def test_helpers():
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert cause_split((("preempt", 3), ("signal", 1))) == "preempt 75% signal 25%"
    keep = row_filter("^env")
    assert keep(SimpleNamespace(pid=1, comm="envoy")) and not keep(SimpleNamespace(pid=1, comm="xenv"))
    assert row_filter("42")(SimpleNamespace(pid=42, comm="a"))
    assert row_filter("[")(SimpleNamespace(pid=1, comm="a[b"))  # not a regex: a substring


@pytest.mark.parametrize("argv, words", [
    (["-p", "999999999"], "no process with pid 999999999"),
    (["--comm", "("], "bad --comm regular expression"),
    (["-d", "0"], "positive number"),
    (["-d", "nan"], "positive number"),
    (["0.5", "0"], "at least 1"),
    (["-p", "12x"], "not a process id"),
    (["trace", "-p", "999999999"], "no process with pid 999999999"),
    (["trace", "--comm", "a("], "bad --comm regular expression"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, rseqtop_cmd):
    res = subprocess.run(rseqtop_cmd + argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_live_view_without_terminal_points_to_batch(rseqtop_cmd):
    res = subprocess.run(rseqtop_cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
