"""`rseqtop record` and `rseqtop report`: the recording's numbers against the
synthetic source's known rates and against the bundled workload's own abort
counts; the report's numbers against the recording; hostile recordings and
names refused or made inert."""

from __future__ import annotations

import html.parser
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rseqtop import workload
from rseqtop.commands import record as record_cmd
from rseqtop.model.snapshot import COUNT_FIELDS, Counts
from rseqtop.model.synthetic import SyntheticSource
from rseqtop.recording import format as fmt
from rseqtop.recording import reader
from rseqtop.report import page
from support import wait_for

HOSTILE = "<script>alert(1)</script>"
HOSTILE_SYMBOL = '"><img src=x onerror=alert(2)>'


def make_recording(path, samples=11, comms=None, processes=3, threads=2) -> SyntheticSource:
    src = SyntheticSource(processes=processes, threads_per_process=threads, comms=comms)
    with open(path, "w") as out:
        assert record_cmd.record(src, out, 0.001, samples, fmt.header(1.0, "all processes")) == samples
    assert src.closed
    return src


def synthetic_total(i: int, threads: int, polls: int) -> Counts:
    """Ground truth of SyntheticSource: process i's totals after `polls` polls of 1 s."""
    total = Counts()
    for j in range(threads):
        r = SyntheticSource.thread_rate(i, j)  # per second, and each poll is one second
        total = total + Counts(*(getattr(r, f) * polls for f in COUNT_FIELDS),
                               causes=tuple((name, n * polls) for name, n in r.causes))
    return total


# -- the file ------------------------------------------------------------------

def test_record_writes_a_header_then_a_sample_per_interval(tmp_path):
    path = tmp_path / "rec.jsonl"
    make_recording(path, samples=record_cmd.samples_for(1.0, 0.1))
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 11  # one at the start, one per 0.1 s interval of a 1 s recording
    head = json.loads(lines[0])
    assert head["format"] == "rseqtop-recording" and head["version"] == fmt.VERSION == 1
    assert head["host"] == os.uname().nodename and head["kernel"] == os.uname().release
    assert head["interval_s"] == 1.0 and head["stacks"] is False
    samples = [json.loads(x) for x in lines[1:]]
    assert {s["kind"] for s in samples} == {"sample"}
    assert [s["interval_s"] for s in samples] == [0.0] + [1.0] * 10  # the synthetic clock's 1 s steps
    last = {p["pid"]: p for p in samples[-1]["processes"]}
    assert last[1002]["totals"]["aborts"] == synthetic_total(2, 2, 11).aborts == 990
    assert all(p["threads"] == [] for p in last.values())  # threads are not recorded


def test_samples_for_duration():
    assert record_cmd.samples_for(None, 1.0) is None
    assert record_cmd.samples_for(60, 1.0) == 61
    assert record_cmd.samples_for(0.1, 1.0) == 2


def test_reader_has_the_synthetic_totals_rates_and_offsets(tmp_path):
    path = tmp_path / "rec.jsonl"
    make_recording(path, samples=5)
    rec = reader.read(path)
    assert rec.samples == 5 and rec.last_time - rec.first_time == 4.0
    for i, p in enumerate(sorted(rec.processes, key=lambda p: p.pid)):
        truth = synthetic_total(i, 2, 5)
        assert p.aborts == truth.aborts and p.totals["causes"] == dict(truth.causes)
        # thread j of process i aborts (i % 7 + 1) * (j + 1) * 10 times a second
        assert [r for _, r in p.series.rates()] == [(i % 7 + 1) * 30.0] * 4
        for k, s in enumerate(sorted(p.sections.values(), key=lambda s: s.start_ip)):
            share = truth.aborts // (k + 2)
            assert s.aborts == share and s.offsets == {0x10: share // 2, 0x18: share - share // 2}
            # the synthetic preempters: process i's antagonist 60%, a kernel worker 30%, the rest unseen
            assert s.preempters == [e for e in [(2000 + i, f"hog{i}", share * 6 // 10),
                                                (50, "kworker/1:2", share * 3 // 10)] if e[2]]
    assert rec.total_aborts() == sum(synthetic_total(i, 2, 5).aborts for i in range(3))
    assert not rec.stacks


def test_a_recycled_pid_is_another_process(tmp_path):
    path = tmp_path / "rec.jsonl"
    lines = [fmt.dumps(fmt.header(1.0, "x"))]
    for t, aborts in ((1, 50), (2, 80), (3, 5), (4, 9)):
        lines.append(fmt.dumps({"kind": "sample", "time": t, "processes": [
            {"pid": 7, "comm": "a" if aborts > 10 else "b", "totals": {"aborts": aborts}}]}))
    path.write_text("".join(lines))
    rec = reader.read(path)
    assert [(p.comm, p.incarnation, p.aborts) for p in rec.processes] == [("a", 0, 80), ("b", 1, 9)]
    # the new process starts from 0 at the sample before its first: 5 aborts in (2, 3], 4 in (3, 4]
    assert [r for _, r in rec.processes[1].series.rates()] == [5.0, 4.0]
    assert rec.total_aborts() == 89


def test_record_stops_on_sigterm_after_one_last_sample(tmp_path):
    """SIGTERM (or Ctrl-C) ends an open-ended recording with a final sample."""
    path = tmp_path / "rec.jsonl"
    src = SyntheticSource(2, 1)
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.35, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        with open(path, "w") as out:
            written = record_cmd.record(src, out, 0.1, None, fmt.header(0.1, "x"))
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])
    samples = path.read_text().splitlines()[1:]
    assert written == len(samples) >= 3 and src.polls == written and src.closed
    # the final sample is the source's latest poll (its clock: 1 s per poll)
    last = json.loads(samples[-1])
    assert last["time"] == 1_700_000_000.0 + written
    assert last["system"]["totals"]["aborts"] == sum(synthetic_total(i, 1, written).aborts for i in range(2))


# -- the page ------------------------------------------------------------------

class Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags = []
        self.text = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def values(self) -> list:
        return [int(a["data-value"]) for _, a in self.tags if "data-value" in a]


def report_numbers(text: str) -> tuple:
    """(total aborts, {pid: aborts}, {cause: aborts}) as the page shows them."""
    tags = Tags(text)
    total = [int(a["data-value"]) for t, a in tags.tags if a.get("id") == "total-aborts"]
    rows, causes = {}, {}
    current = None
    for t, a in tags.tags:
        if t == "tr":
            current = a
        elif "data-value" in a and current is not None:
            if "data-pid" in current:
                rows[int(current["data-pid"])] = int(a["data-value"])
            elif "data-cause" in current:
                causes[current["data-cause"]] = int(a["data-value"])
    return total[0], rows, causes


def test_report_numbers_are_the_recordings(tmp_path):
    path = tmp_path / "rec.jsonl"
    make_recording(path, samples=6, processes=4)
    rec = reader.read(path)
    text = page.render(rec)
    total, rows, causes = report_numbers(text)
    truth = [synthetic_total(i, 2, 6) for i in range(4)]
    assert total == sum(t.aborts for t in truth)
    assert rows == {1000 + i: t.aborts for i, t in enumerate(truth)}
    assert causes == dict(sum(truth, Counts()).causes)
    assert page.NO_STACKS in text and "Preempters" in text and "kworker/1:2" in text  # synthetic preempters
    assert text.count("<svg") == 2 + 1 + min(page.TOP, len(rec.sections()))  # rates x2, causes, offsets


def test_hostile_names_are_inert_in_the_page(tmp_path):
    path = tmp_path / "rec.jsonl"
    lines = [fmt.dumps(fmt.header(1.0, HOSTILE))]
    for t in (1, 2, 3):
        lines.append(fmt.dumps({"kind": "sample", "time": t, "era": "<b>", "processes": [
            {"pid": 7, "comm": HOSTILE, "totals": {"aborts": 10 * t, "causes": {HOSTILE: 10 * t}},
             "sections": [{"symbol": HOSTILE_SYMBOL, "start_ip": 4096, "aborts": 10 * t,
                           "causes": {"preempt": 10 * t}, "interrupted_offsets": {"3": 10 * t},
                           "preempters": [{"pid": 9, "comm": HOSTILE + "\x1b[31m", "count": t}]}]}]}))
    path.write_text("".join(lines))
    text = page.render(reader.read(path))
    tags = Tags(text)
    assert {t for t, _ in tags.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p",
                                         "b", "table", "tr", "th", "td", "code", "div", "span", "i", "svg",
                                         "rect", "line", "text", "polyline", "details", "summary",
                                         "circle"}
    assert not any(k.startswith("on") for _, a in tags.tags for k in a)
    assert "<script" not in text and "<img" not in text
    shown = "".join(tags.text)
    assert HOSTILE in shown and HOSTILE_SYMBOL in shown and "\x1b" not in text and "\\x1b[31m" in shown
    assert "Preempters" in text  # present in the data: shown
    assert 3 in tags.values()  # the preempter's count


# -- hostile and broken files --------------------------------------------------

HEADER = fmt.dumps(fmt.header(1.0, "x"))
SAMPLE = fmt.dumps({"kind": "sample", "time": 1.0, "processes": [{"pid": 1, "comm": "a", "totals": {"aborts": 1}}]})


def _bad_sample(**process) -> str:
    p = {"pid": 1, "comm": "a", "totals": {"aborts": 1}, **process}
    return HEADER + json.dumps({"kind": "sample", "time": 1.0, "processes": [p]}) + "\n"


BAD_FILES = {
    "empty": ("", "empty"),
    "not JSON": ("hello world\n", "line 1 is not valid JSON"),
    "binary": ("\x00\xff\xfe garbage\n", "not valid JSON"),
    "not a recording": ('{"schema_version": 1}\n', "not an rseqtop-recording header"),
    "wrong version": (HEADER.replace('"version":1', '"version":2'), "version 2 is newer"),
    "version as text": (HEADER.replace('"version":1', '"version":"1"'), "version must be a whole number"),
    "truncated": ((HEADER + SAMPLE + SAMPLE)[:-40], "line 3 is cut short"),
    "header only": (HEADER, "no samples"),
    "pid as text": (_bad_sample(pid="1"), "line 2: processes[0].pid must be a whole number"),
    "negative aborts": (_bad_sample(totals={"aborts": -1}), "processes[0].totals.aborts must be"),
    "comm not a string": (_bad_sample(comm=["a"]), "processes[0].comm must be a string"),
    "huge comm": (_bad_sample(comm="a" * 100_000), "comm must be a string of at most 256"),
    "sections not a list": (_bad_sample(sections={"a": 1}), "sections must be a list"),
    "bad offset": (_bad_sample(sections=[{"symbol": "s", "start_ip": 1, "aborts": 1,
                                          "interrupted_offsets": {"x1": 1}}]), "decimal offset"),
    "NaN": (HEADER + SAMPLE.replace('"time":1.0', '"time":NaN'), "not valid JSON"),
    "huge number": (HEADER + SAMPLE.replace('"time":1.0', '"time":' + "9" * 5000), "not valid JSON"),
    "deep nesting": (HEADER + "[" * 200_000 + "]" * 200_000 + "\n", "not valid JSON"),
    "sample not an object": (HEADER + "[1, 2]\n", "the line must be an object"),
    "missing kind": (HEADER + '{"time": 1}\n', "kind must be a string"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_recording_is_one_line_and_non_zero(name, tmp_path, rseqtop_cmd):
    content, words = BAD_FILES[name]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(content.encode("utf-8", "surrogateescape") if name != "binary" else content.encode("latin-1"))
    res = subprocess.run(rseqtop_cmd + ["report", str(path), "-o", str(tmp_path / "r.html")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0, res.stderr
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "r.html").exists()


def test_a_huge_line_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 1 << 16)
    path = tmp_path / "rec.jsonl"
    path.write_text(HEADER + '{"kind": "sample", "pad": "' + "x" * (1 << 20) + '"}\n')
    with pytest.raises(reader.RecordingError, match="line 2 is longer than"):
        reader.read(path)


def test_limits_on_what_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "rec.jsonl"
    make_recording(path, samples=20)
    monkeypatch.setattr(reader, "MAX_POINTS", 50)
    with pytest.raises(reader.RecordingError, match="more than 50 series points"):
        reader.read(path)
    monkeypatch.setattr(reader, "MAX_SAMPLES", 10)
    monkeypatch.setattr(reader, "MAX_POINTS", 10**6)
    with pytest.raises(reader.RecordingError, match="more than 10 samples"):
        reader.read(path)


def test_unknown_kinds_are_skipped_and_said(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text(HEADER + SAMPLE + '{"kind": "future", "whatever": [1]}\n' + '{"kind": "future"}\n')
    rec = reader.read(path)
    assert rec.samples == 1 and rec.skipped_kinds == {"future": 2} and not rec.stacks
    text = page.render(rec)
    assert page.NO_STACKS in text and "kind &#x27;future&#x27;" in text  # (stacks lines: tests/test_stacks.py)


# -- the command line ----------------------------------------------------------

def test_help_lists_record_and_report(rseqtop_cmd):
    out = subprocess.run(rseqtop_cmd + ["--help"], capture_output=True, text=True, timeout=60).stdout
    assert "record " in out and "report " in out


@pytest.mark.parametrize("argv, words", [
    (["record"], "required: -o/--output"),
    (["record", "-o", "x", "--stacks", "-p", "999999999"], "no process with pid 999999999"),
    (["record", "-o", "x", "-d", "0"], "positive number"),
    (["record", "-o", "x", "--duration", "-1"], "positive number"),
    (["record", "-o", "x", "-p", "999999999"], "no process with pid 999999999"),
    (["record", "-o", "/nonexistent-dir/x.jsonl"], "cannot write /nonexistent-dir/x.jsonl"),
    (["report", "x.jsonl"], "give one of -o HTML (the page) or --folded"),
    (["report", "/nonexistent-dir/x.jsonl", "-o", "r.html"], "cannot read /nonexistent-dir/x.jsonl"),
])
def test_bad_arguments_are_one_line(argv, words, rseqtop_cmd, tmp_path):
    res = subprocess.run(rseqtop_cmd + argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode in (1, 2), res.stderr
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "x").exists()


def test_record_without_privileges_is_one_line_and_leaves_no_file(rseqtop_cmd):
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory() as d:  # not under pytest's tmp_path: user nobody cannot reach that
        os.chmod(d, 0o777)
        out = Path(d) / "x.jsonl"
        res = subprocess.run(drop + rseqtop_cmd + ["record", "-o", str(out), "--duration", "1"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode != 0 and "not privileged" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_report_command_writes_the_page(tmp_path, rseqtop_cmd):
    make_recording(tmp_path / "rec.jsonl", samples=4)
    res = subprocess.run(rseqtop_cmd + ["report", "rec.jsonl", "-o", "out.html"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "out.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and f"({len(text.encode()):,} bytes)" in res.stderr
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.tmp*"))


# -- against the kernel and the workload's own counts --------------------------

# Not in the kernel matrix: a recorded sample is the collector's snapshot,
# whose numbers test_collector checks on every kernel, while this test's
# `rseqtop record` compiles the BPF programs again (3.7 min under TCG on 6.1).
@pytest.mark.bpf
def test_recording_of_the_workload_has_its_exact_counts(bpf_ok, rseqtop_cmd, tmp_path, record_property):
    """Record while the bundled workload runs; the file's totals per process
    and per section are the workload's own abort counts, and the report
    shows them."""
    workload.build()
    name = f"rtrec{os.getpid() % 100000}"
    path = tmp_path / "rec.jsonl"
    rec_proc = subprocess.Popen(rseqtop_cmd + ["record", "-o", str(path), "-d", "0.5", "--comm", f"^{name}$"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: path.exists() and path.read_text().count("\n") >= 2, 300, "the first sample", rec_proc)
        ncpu = os.cpu_count() or 1
        summary = workload.run(["--threads", 2 * ncpu, "--in-cs-delay", 3000, "--signal-rate", 300,
                                "--duration", 2.0, "--name", name], timeout=120)
        time.sleep(1.2)  # a sample or two after the workload's end
    finally:
        rec_proc.send_signal(signal.SIGTERM)
        _, err = rec_proc.communicate(timeout=60)
    assert rec_proc.returncode == 0, err
    assert summary["totals"]["aborts"] > 0, "the workload made no aborts: the test proves nothing"
    rec = reader.read(path)
    procs = [p for p in rec.processes if p.pid == summary["pid"]]
    assert len(procs) == 1, [(p.pid, p.comm) for p in rec.processes]
    proc = procs[0]
    assert proc.aborts == summary["totals"]["aborts"]
    assert sum(proc.totals["causes"].values()) == proc.aborts
    for op_name, op in summary["ops"].items():
        if not op.get("enabled", True):
            continue
        sec = proc.sections.get(int(op["start_ip"], 16))
        assert (sec.aborts if sec else 0) == op["aborts"], op_name
        if op["aborts"]:
            assert op["symbol"] in sec.symbol and sum(sec.offsets.values()) == op["aborts"]
    assert len(proc.series.times) >= 4  # sampled over time, not once
    # it started after the first sample: the rates over time add up to its aborts
    times = list(proc.series.times)
    assert round(sum(r * (t - times[times.index(t) - 1]) for t, r in proc.series.rates())) == proc.aborts
    # the page shows the file's numbers, which are the workload's
    total, rows, causes = report_numbers(page.render(rec))
    assert rows == {summary["pid"]: summary["totals"]["aborts"]}
    assert total == summary["totals"]["aborts"] == sum(causes.values())
    assert causes == proc.totals["causes"]
    record_property("figure", f"{proc.aborts}={summary['totals']['aborts']} aborts in {rec.samples} samples")


def test_chart_helpers():
    from rseqtop.report import svg

    assert svg.nice_ticks(0) == [0.0, 1.0]
    assert svg.nice_ticks(540) == [0, 200, 400, 600]
    assert svg.nice_ticks(10) == [0, 2, 4, 6, 8, 10]
    assert svg.num(1234567) == "1.23M" and svg.num(0.5) == "0.5"
    assert svg.esc('<a b="c">\x1b') == "&lt;a b=&quot;c&quot;&gt;\\x1b"
    chart = svg.line_chart([("x", [(1.0, 5.0), (3.0, 7.0)])], "s", "aborts/s")
    assert ">0</text>" in chart and ">3</text>" in chart  # the time axis starts at the recording's start
    assert "aborts/s" in chart and chart.count("<polyline") == 1
