"""rseqtop's own text encoder (rseqtop.exporter.exposition, for scrape
latency at 10,000 series) against prometheus_client's generate_latest on the
same registry: the same families, HELP and TYPE, samples and values.
Intended difference: no `_created` samples (counters' creation times carry
nothing here and double the series count)."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from rseqtop.exporter.exposition import FastCounter, FastGauge, FastHistogram, LabelText, encode
from rseqtop.exporter.metrics import RseqCollector
from rseqtop.model.synthetic import SyntheticSource


class Frozen:
    """Families collected once, so that both encoders see the same data."""

    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return self.fams


def edge_families():
    c = CounterMetricFamily("edge_events", 'help with \\ backslash and\nnewline', labels=["v"])
    c.add_metric(['quote " backslash \\ newline \n end'], 3)
    c.add_metric(["unicode é ✓"], 1e21, created=1700000000.0)
    g = GaugeMetricFamily("edge_values", "special values", labels=["k"])
    for k, v in (("inf", math.inf), ("ninf", -math.inf), ("nan", math.nan), ("small", 1.5e-9), ("neg", -2)):
        g.add_metric([k], v)
    h = HistogramMetricFamily("edge_seconds", "a histogram", labels=["cmd"])
    h.add_metric(["x"], buckets=[("0.001", 1), ("1.0", 3), ("+Inf", 4)], sum_value=2.5)
    i = InfoMetricFamily("edge_build", "info goes through generate_latest")
    i.add_metric([], {"version": "1"})
    # the row-keeping families rseqtop's big families use, with the same edges
    fc = FastCounter("edge_fast_events", "fast counter", labels=["v", "w"])
    fc.add_metric(['quote " backslash \\ newline \n end', "x"], 3)
    fc.add_metric(["unicode é ✓", 'quote " backslash \\ newline \n end'], 1e21)
    fg = FastGauge("edge_fast_values", "fast gauge", labels=["k"])
    for k, v in (("inf", math.inf), ("ninf", -math.inf), ("nan", math.nan), ("small", 1.5e-9), ("neg", -2)):
        fg.add_metric([k], v)
    fh = FastHistogram("edge_fast_seconds", "fast histogram", labels=["cmd"])
    fh.add_metric(['a"b'], [("0.001", 1), ("1.0", 3), ("+Inf", 4)], 2.5)
    fh.add_metric(["y"], [("0.001", 0), ("+Inf", 0)], 0.0)
    return [c, g, h, i, fc, fg, fh]


def frozen_registry():
    live = CollectorRegistry()
    live.register(RseqCollector(SyntheticSource(processes=30, threads_per_process=3), labels="pid"))
    fams = list(live.collect()) + edge_families()
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Frozen(fams))
    return reg


def parsed(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.endswith("_created"):  # the 0.0.4 parser makes them families of their own
            continue
        samples = set()
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            v = "nan" if s.value != s.value else s.value
            samples.add((s.name, tuple(sorted(s.labels.items())), v))
        out[fam.name] = (fam.type, fam.documentation, samples)
    return out


def test_same_exposition_as_prometheus_client():
    reg = frozen_registry()
    ours, theirs = encode(reg).decode(), generate_latest(reg).decode()
    a, b = parsed(ours), parsed(theirs)
    assert set(a) == set(b)
    for name in b:
        assert a[name] == b[name], name
    assert len(a) > 20 and sum(len(v[2]) for v in a.values()) > 500  # a real registry, not a toy
    assert "_created" not in ours and "_created" in theirs  # the one intended difference


def test_label_text_cache_stays_bounded():
    """Label sets come and go (pids, comms): the text kept between scrapes
    must not grow with every set ever seen."""
    text = LabelText()
    for scrape in range(50):
        for i in range(1000):
            text(("pid",), (f"{scrape}-{i}",))
        text.lines("m_total", ("pid",), [((f"{scrape}-{i}",), i) for i in range(1000)])
        text.bucket_prefixes("h_bucket", ("pid",), (str(scrape),), ("1.0", "+Inf"))
        text.end_scrape()
        kept = sum(len(t) if isinstance(t, dict) else 1 for t in text._text.values())
        assert kept <= 2 * 2001 + 1024


def test_text_kept_between_scrapes_is_the_same_text():
    """The second scrape writes from the kept text: it must be the first's."""
    reg = frozen_registry()
    text = LabelText()
    first = encode(reg, text)
    assert text._size > 500
    assert encode(reg, text) == first
    assert encode(reg, LabelText()) == first
