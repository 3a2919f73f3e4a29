"""Python's cyclic garbage collector held off while a scrape is built.

A scrape of 10,000 series makes some 100,000 short-lived containers
(snapshot records, rows, dicts) that reference counting frees. Each 700
of them start a collection that walks every young survivor, and every
few scrapes one of those is a full collection over the exporter's whole
heap: about 12 ms of CPU a scrape on average and pauses of 30-50 ms in
the slowest ones. Held off for the scrape, the collector runs once after
it, over what the scrape kept. Cycles made meanwhile are collected then,
so memory stays bounded.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # scrapes in progress (threads of the in-process server may overlap)
_was_enabled = False


@contextmanager
def paused():
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
