"""The poll loop the interval-driven commands share (`rseqtop -b`/`--json`,
`rseqtop record`): a snapshot every DELAY seconds on a fixed schedule,
SIGTERM and SIGINT to stop, a transient map read error skipped."""

from __future__ import annotations

import signal
import sys
import time
from typing import Callable, Optional

from rseqtop.errors import UserError
from rseqtop.model.source import SnapshotSource, poll_and_reap
from rseqtop.present.rows import LiveModel


class Terminated(Exception):
    """SIGTERM arrived: detach and exit."""


def install_sigterm() -> None:
    """SIGTERM and SIGINT detach and exit, as in trace and export. SIGINT gets
    its handler explicitly: a parent that started rseqtop in the background
    leaves SIGINT ignored, and Python then raises no KeyboardInterrupt."""
    def on_term(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)


def poll_loop(source: SnapshotSource, delay: float, count: Optional[int], emit: Callable[[LiveModel], None],
              final: bool = False) -> int:
    """Update a LiveModel from the (attached) source and call emit(model),
    right away and then every `delay` seconds, `count` times (None: until
    SIGTERM or SIGINT). final: a stop by signal takes and emits one more
    snapshot, so that what was counted up to the stop is not lost.
    Returns how many times emit was called."""
    model = LiveModel()
    emitted = 0
    next_at = time.monotonic()
    failures = 0
    try:
        while count is None or emitted < count:
            try:
                snap = poll_and_reap(source)
                failures = 0
            except (KeyboardInterrupt, Terminated):
                raise
            except Exception as err:  # a transient map read error: report it, skip the interval
                failures += 1
                sys.stderr.write(f"rseqtop: reading the maps failed ({type(err).__name__}: {err})\n")
                if failures >= 3:
                    raise UserError("reading the BPF maps failed 3 times in a row; see 'rseqtop doctor'") from None
                next_at += delay
                time.sleep(max(0.0, next_at - time.monotonic()))
                continue
            model.update(snap)
            emit(model)
            emitted += 1
            if count is not None and emitted >= count:
                break
            next_at += delay
            time.sleep(max(0.0, next_at - time.monotonic()))
    except (KeyboardInterrupt, Terminated):
        if final:
            # a second signal during this last read just ends it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                model.update(poll_and_reap(source))
            except Exception as err:  # what was emitted stands; say why the last is missing
                sys.stderr.write(f"rseqtop: the last read of the maps failed ({type(err).__name__}: {err})\n")
            else:
                emit(model)
                emitted += 1
    return emitted
