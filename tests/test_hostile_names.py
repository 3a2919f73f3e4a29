"""A process named with invalid UTF-8, an escape sequence and markup is
inert in every output: snapshot, text, JSON, exposition."""

import json
import subprocess

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rseqtop import workload
from rseqtop.collect import Collector
from rseqtop.exporter.metrics import RseqCollector
from rseqtop.present import textout
from rseqtop.present.rows import LiveModel

NAME = b"[b]\xff\xfe\x1b[31m\"q\n"  # 14 bytes: the kernel keeps them all


class Fixed:
    def __init__(self, snaps):
        self.snaps = list(snaps)

    def poll(self):
        return self.snaps.pop(0) if len(self.snaps) > 1 else self.snaps[0]

    def reap(self):
        return 0


def test_invalid_utf8_and_escapes_are_inert_everywhere(bpf_ok):
    binary = workload.build()
    with Collector() as c:
        first = c.poll()
        out = subprocess.run([bytes(binary), b"--threads", b"4", b"--cpus", b"0", b"--in-cs-delay", b"3000",
                              b"--op", b"delay", b"--duration", b"0.5", b"--name", NAME],
                             capture_output=True, check=True, timeout=60)
        last = c.poll()
    summary = workload.parse_summary(out.stdout)
    proc = last.process(summary["pid"])
    assert proc.counts.aborts == summary["totals"]["aborts"] > 0
    # bytes that are not UTF-8 arrive as backslash escapes, never as raw bytes
    assert proc.comm == NAME.decode("utf-8", errors="backslashreplace")

    model = LiveModel()
    model.update(first)
    model.update(last)
    text = textout.batch_text(model)
    assert "\x1b" not in text and "\ufffd" not in text
    row = next(line for line in text.splitlines() if str(summary["pid"]) in line)
    assert "[b]\\xff\\xfe\\x1b[31m\"q\\x0a" in row
    doc = json.loads(textout.json_line(model))
    shown = next(p for p in doc["processes"] if p["pid"] == summary["pid"])
    assert shown["comm"] == proc.comm
    assert "\x1b" not in textout.json_line(model)

    reg = CollectorRegistry()
    reg.register(RseqCollector(Fixed([first, last]), identity=None))
    generate_latest(reg)  # the scrape of `first`
    exposition = generate_latest(reg).decode()
    comms = {s.labels.get("comm") for fam in text_string_to_metric_families(exposition) for s in fam.samples}
    assert proc.comm in comms
