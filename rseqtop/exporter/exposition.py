"""A fast Prometheus text-format (0.0.4) encoder for a CollectorRegistry.

prometheus_client's generate_latest re-validates every label name of every
sample; with 10,000 series that alone costs ~100 ms. This writes the same
format, escaping each distinct label value once per scrape. Families of
types it does not know (info, stateset, ...) go through generate_latest.
tests/test_exposition.py holds it to generate_latest's output on the same
registry; the one intended difference: no `_created` samples.
"""

from __future__ import annotations

import math

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped", "unknown"}


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:
        return "NaN"
    return repr(float(v))


def encode(registry: CollectorRegistry) -> bytes:
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
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            if s.labels:
                parts = []
                for k, v in s.labels.items():
                    e = esc.get(v)
                    if e is None:
                        e = esc[v] = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
                    parts.append(f'{k}="{e}"')
                line = f"{s.name}{{{','.join(parts)}}} {_value(s.value)}"
            else:
                line = f"{s.name} {_value(s.value)}"
            if s.timestamp is not None:
                line += f" {int(float(s.timestamp) * 1000)}"
            out.append(line + "\n")
    body = "".join(out).encode("utf-8")
    if leftovers:
        class _Fams:
            def collect(self):
                return leftovers
        other.register(_Fams())
        body += generate_latest(other)
    return body
