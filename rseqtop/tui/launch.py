"""Run the live view on a snapshot source until the user quits: what the
`top` and `demo` commands call (Textual is imported only here and below)."""

from __future__ import annotations

from rseqtop.model.source import SnapshotSource


def run_tui(source: SnapshotSource, delay: float, what: str, threads: bool = False, include_idle: bool = False) -> int:
    from rseqtop.tui.app import make_app

    source.attach()
    try:
        app = make_app(source, delay=delay, watching=what)
        app.threads_mode = threads
        app.include_idle = include_idle
        app.run()
    finally:
        source.close()
    return 0
