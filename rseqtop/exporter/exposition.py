"""A fast Prometheus text-format (0.0.4) encoder for a CollectorRegistry.

prometheus_client's generate_latest re-validates every label name of every
sample; with 10,000 series that alone costs ~100 ms. This writes the same
format, escaping each distinct label value once per scrape. Families of
types it does not know (info, stateset, ...) go through generate_latest.
The big families are FastCounter / FastGauge: they keep plain (labels,
value) rows instead of one Sample (and its labels dict) per series, and the
text of each label set is kept between scrapes (at 10,000 series, building
Samples and their text was most of a scrape).
tests/test_exposition.py holds it to generate_latest's output on the same
registry; the one intended difference: no `_created` samples.
"""

from __future__ import annotations

import math

from prometheus_client import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped", "unknown"}


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if v.__class__ is int:  # most values: counts (never inf or NaN)
        return repr(float(v))
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:
        return "NaN"
    return repr(float(v))


class _Rows:
    """add_metric keeps (label values, value); `samples` builds the Sample
    list only for the encoders that want it (OpenMetrics, tests)."""

    _suffix = ""

    def add_metric(self, labels, value, timestamp=None) -> None:
        self.rows.append((tuple(labels), value))

    @property
    def samples(self):
        names = self._labelnames
        name = self.name + self._suffix
        return [Sample(name, dict(zip(names, labels)), value, None) for labels, value in self.rows]

    @samples.setter
    def samples(self, value) -> None:  # Metric.__init__ sets [], and nothing else may
        if value:
            raise ValueError("add rows with add_metric")


class FastCounter(_Rows, CounterMetricFamily):
    _suffix = "_total"

    def __init__(self, name: str, documentation: str, labels) -> None:
        self.rows: list = []
        super().__init__(name, documentation, labels=labels)


class FastGauge(_Rows, GaugeMetricFamily):
    def __init__(self, name: str, documentation: str, labels) -> None:
        self.rows: list = []
        super().__init__(name, documentation, labels=labels)


class FastHistogram(HistogramMetricFamily):
    """Rows of (label values, cumulative buckets [(le text, count)], sum);
    `samples` as HistogramMetricFamily.add_metric would make them."""

    def __init__(self, name: str, documentation: str, labels) -> None:
        self.rows: list = []
        super().__init__(name, documentation, labels=labels)

    def add_metric(self, labels, buckets, sum_value, timestamp=None) -> None:
        self.rows.append((tuple(labels), buckets, sum_value))

    @property
    def samples(self):
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)
        for labels, buckets, sum_value in self.rows:
            HistogramMetricFamily.add_metric(fam, labels, buckets, sum_value)
        return fam.samples

    @samples.setter
    def samples(self, value) -> None:
        if value:
            raise ValueError("add rows with add_metric")


class LabelText:
    """`{k="v",...}` for label-value tuples, and the text of samples before
    their values, kept across scrapes. Bounded: emptied when it outgrows
    twice what the last scrape used."""

    def __init__(self) -> None:
        self._text: dict = {}  # also (sample, names) -> {label values: text}: see lines()
        self._size = 0  # texts kept
        self._used = 0

    def __call__(self, names: tuple, values: tuple) -> str:
        key = (names, values)
        t = self._text.get(key)
        if t is None:
            t = self._text[key] = _labels(names, values)
            self._size += 1
        self._used += 1
        return t

    def lines(self, sample: str, names: tuple, rows) -> list:
        """The lines of (label values, value) rows of `sample`; the text up
        to each value is kept (one loop here: a scrape is mostly this)."""
        family = self._text.get((sample, names))
        if family is None:
            family = self._text[(sample, names)] = {}
        out = []
        add = out.append
        for values, v in rows:
            t = family.get(values)
            if t is None:
                t = family[values] = f"{sample}{_labels(names, values)} "
                self._size += 1
            add(f"{t}{repr(float(v)) if v.__class__ is int else _value(v)}\n")
        self._used += len(out)
        return out

    def bucket_prefixes(self, sample: str, names: tuple, values: tuple, les: tuple) -> tuple:
        """prefix() of a histogram's `sample` for each bucket bound in `les`."""
        key = (sample, names, values, les)
        t = self._text.get(key)
        if t is None:
            with_le = names + ("le",)
            t = self._text[key] = tuple(f"{sample}{_labels(with_le, values + (le,))} " for le in les)
            self._size += 1
        self._used += 1
        return t

    def end_scrape(self) -> None:
        if self._size > 2 * self._used + 1024:
            self._text.clear()
            self._size = 0
        self._used = 0


def _labels(names: tuple, values: tuple) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in zip(names, values)) + "}" if values else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_LABEL_TEXT = LabelText()


def _histogram_lines(fam: FastHistogram, label_text: LabelText, out: list) -> None:
    names = tuple(fam._labelnames)
    sample = fam.name + "_bucket"
    for labels, buckets, sum_value in fam.rows:
        prefixes = label_text.bucket_prefixes(sample, names, labels, tuple([le for le, _ in buckets]))
        out.extend([f"{p}{_value(n)}\n" for p, (_, n) in zip(prefixes, buckets)])
        if sum_value is not None and float(buckets[0][0]) >= 0:  # as HistogramMetricFamily: +Inf is the count
            text = label_text(names, labels)
            out.append(f"{fam.name}_count{text} {_value(buckets[-1][1])}\n{fam.name}_sum{text} {_value(sum_value)}\n")


def encode(registry: CollectorRegistry, label_text: LabelText = _LABEL_TEXT) -> bytes:
    out = []
    esc: dict = {}
    other = CollectorRegistry(auto_describe=False)
    leftovers = []
    for fam in registry.collect():
        typ = fam.type
        if typ not in _TYPES:
            leftovers.append(fam)
            continue
        name = fam.name + "_total" if typ == "counter" else fam.name
        out.append(f"# HELP {name} {_help(fam.documentation)}\n# TYPE {name} {'untyped' if typ == 'unknown' else typ}\n")
        if isinstance(fam, _Rows):
            names = tuple(fam._labelnames)
            sample = fam.name + fam._suffix
            out += label_text.lines(sample, names, fam.rows)
            continue
        if isinstance(fam, FastHistogram):
            _histogram_lines(fam, label_text, out)
            continue
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            if s.labels:
                parts = []
                for k, v in s.labels.items():
                    e = esc.get(v)
                    if e is None:
                        e = esc[v] = _escape(v)
                    parts.append(f'{k}="{e}"')
                line = f"{s.name}{{{','.join(parts)}}} {_value(s.value)}"
            else:
                line = f"{s.name} {_value(s.value)}"
            if s.timestamp is not None:
                line += f" {int(float(s.timestamp) * 1000)}"
            out.append(line + "\n")
    label_text.end_scrape()
    body = "".join(out).encode("utf-8")
    if leftovers:
        class _Fams:
            def collect(self):
                return leftovers
        other.register(_Fams())
        body += generate_latest(other)
    return body
