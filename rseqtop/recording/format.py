"""The recording file format (docs/recording.md): JSON Lines, ASCII only.

Line 1 is a header object {"format": "rseqtop-recording", "version": 1,
...}; every later line is an object with a "kind". Kind "sample" is one
interval of `rseqtop --json` (rseqtop.present.textout.json_record) plus the
kind. Kind "stacks" (`record --stacks`) is every (process, section, call
stack) with its aborts since the start, written after a sample whenever it
changed: the last one is the recording's. Readers skip kinds they do not
know, so optional data can be added within a version; a change an older
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
STACKS = "stacks"  # `record --stacks`: abort call stacks, totals since the start


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


def stacks(table: list, dropped: int, t: float) -> dict:
    """A stacks line: StackCount (rseqtop.collect.stacks) rows, frames root
    first; a lost stack has no frames and names why (e.g. "EEXIST")."""
    return {"kind": STACKS, "time": t, "dropped": dropped,
            "stacks": [{"pid": s.pid, "comm": s.comm, "section": s.section, "start_ip": s.start_ip,
                        "frames": list(s.frames), "count": s.count, "lost": s.lost} for s in table]}
