"""The recording file format (docs/recording.md): JSON Lines, ASCII only.

Line 1 is a header object {"format": "rseqtop-recording", "version": 1,
...}; every later line is an object with a "kind". Kind "sample" is one
interval of `rseqtop --json` (rseqtop.present.textout.json_record) plus the
kind. Readers skip kinds they do not know, so optional data (stack samples,
per-section preempters) can be added within a version; a change an older
reader would misread increments VERSION.
"""

from __future__ import annotations

import json
import os
import time

from rseqtop import __version__
from rseqtop.present import textout

FORMAT = "rseqtop-recording"
VERSION = 1
SAMPLE = "sample"
STACKS = "stacks"  # reserved for `record --stacks` (not written yet)


def dumps(obj: dict) -> str:
    """One line: compact, ASCII only (a hostile name stays escaped)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n"


def header(interval: float, watching: str, stacks: bool = False, started: float = None) -> dict:
    uts = os.uname()
    return {"format": FORMAT, "version": VERSION, "host": uts.nodename, "kernel": uts.release,
            "started": time.time() if started is None else started, "interval_s": interval,
            "rseqtop": __version__, "watching": watching, "stacks": stacks}


def sample(model) -> dict:
    """One interval: the --json view of the model's latest snapshot, without
    threads (a service's thousands of threads in every sample would make
    recordings large; the recorder does not ask the collector for them)."""
    rec = textout.json_record(model)
    for p in rec["processes"]:
        p["threads"] = []
    return {"kind": SAMPLE, **rec}
