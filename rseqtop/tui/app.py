"""The live view application.

Collection runs in a thread worker that calls `source.poll()` and posts a
SnapshotReady message; the next poll is scheduled only when that message has
been handled, so a slow poll never piles up. The source is anything with the
Collector's poll()/probes interface (tests pass a SyntheticSource):
`make_app(source, ...)` builds the app.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import Optional

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Input, Static

from rseqtop.model.source import poll_and_reap
from rseqtop.present.columns import PROCESS_COLUMNS, THREAD_COLUMNS, sort_rows, system_rates_text
from rseqtop.present.rows import LiveModel, row_filter
from rseqtop.present.textsafe import printable
from rseqtop.tui import keys as key_table
from rseqtop.tui.annotate_screen import AnnotateScreen
from rseqtop.tui.help_screen import HelpScreen
from rseqtop.tui.keyed_table import KeyedTable
from rseqtop.tui.messages import PollFailed, SnapshotReady
from rseqtop.tui.process_screen import ProcessScreen

DELAYS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
FIRST_RATE_AFTER = 0.25  # seconds between the first two polls: rates show up at once
HINT = ("run 'rseqtop demo', or in another terminal 'rseqtop workload --threads 8 --in-cs-delay 200', "
        "and its aborts show up here")


def show_text(widget: Static, text: Text) -> None:
    """Static.update, skipped when the widget shows this text already, and
    without a relayout of the screen unless the text's height (wrapped at
    the widget's width) changes: the summary changes at every refresh."""
    shown = getattr(widget, "_rseqtop_text", None)
    if shown is not None and shown.plain == text.plain and shown.spans == text.spans and shown.style == text.style:
        return
    widget._rseqtop_text = text
    size = widget.content_size
    widget.update(text, layout=not size.width)
    if size.width and widget.get_content_height(size, size, size.width) != size.height:
        widget.refresh(layout=True)


def frozen_copy(model: LiveModel) -> LiveModel:
    return LiveModel(model.prev, model.cur, {pid: tuple(h) for pid, h in model.history.items()}, model.polls,
                     model.rates_kept)


class RseqtopApp(App):
    TITLE = "rseqtop"
    CSS = """
    #summary { height: auto; padding: 0 1; background: $boost; }
    #table { height: 1fr; }
    #empty { height: 1fr; padding: 1 2; content-align: center middle; }
    #filter { dock: bottom; display: none; }
    #keys { height: 1; dock: bottom; background: $boost; }
    """
    BINDINGS = list(key_table.BINDINGS)  # every key is in rseqtop/tui/keys.py

    def __init__(self, source, delay: float = 1.0, watching: str = "all processes", close_source: bool = False,
                 first_rate_after: float = FIRST_RATE_AFTER, annotator=None) -> None:
        super().__init__()
        # (pid, start_ip, post_commit_offset, abort_ip) -> Listing: the
        # section drill-down's reader (tests pass their own)
        self._annotator = annotator
        self.source = source
        self.delay = delay
        self.watching = watching
        self.close_source = close_source
        self.first_rate_after = first_rate_after
        self.model = LiveModel()
        self.shown = LiveModel()
        self.paused = False
        self.threads_mode = False
        self.include_idle = False
        self.sort_key = {False: "aborts_s", True: "aborts_s"}
        self.reverse = False
        self.filter_text = ""
        self.error: Optional[str] = None
        self._timer = None
        self._polling = False
        self._ordered = False  # rows were shown in rate order: keep the selected row from now on

    # -- layout ---------------------------------------------------------
    def compose(self) -> ComposeResult:
        # Kept as attributes: App.query_one searches the active screen, which
        # may be the drill-down or the help overlay when a snapshot arrives.
        self._summary = Static(id="summary")
        self._table = KeyedTable(id="table")
        self._empty = Static(id="empty")
        self._filter = Input(placeholder="filter: comm regular expression or pid (Enter applies, Escape cancels)",
                             id="filter")
        self._keys = Static(id="keys")
        yield from (self._summary, self._table, self._empty, self._filter, self._keys)

    def on_mount(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.exit)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        self.want_thread_details(self.threads_mode)
        self.render_all()
        self.poll_now()
        # Everything so far (Textual, the app, the modules) lives as long as
        # the view: out of the collector's full passes, which the poll
        # worker's allocations trigger every few polls and which scanned it
        # all (about half the poll worker's CPU at 2,000 threads).
        gc.freeze()

    @property
    def columns(self):
        return THREAD_COLUMNS if self.threads_mode else PROCESS_COLUMNS

    @property
    def table(self) -> KeyedTable:
        return self._table

    # -- collection -----------------------------------------------------
    def poll_now(self) -> None:
        """Start one poll in a thread worker unless one is running."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._polling:
            return
        self._polling = True
        self.run_worker(self._collect, thread=True, group="poll", exit_on_error=False)

    def _collect(self) -> None:
        try:
            snap = poll_and_reap(self.source)
        except Exception as err:  # reported on screen; the next poll retries
            self.post_message(PollFailed(f"{type(err).__name__}: {err}"))
            return
        self.post_message(SnapshotReady(snap))

    def _schedule(self) -> None:
        self._polling = False
        wait = self.first_rate_after if self.model.polls == 1 else self.delay
        self._timer = self.set_timer(wait, self.poll_now)

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.model.update(message.snapshot)
        self.error = None
        if not self.paused:
            self.shown = frozen_copy(self.model)
            self.render_all()
        else:
            self.render_summary()
        self._schedule()

    def on_poll_failed(self, message: PollFailed) -> None:
        self.error = message.error
        self.render_summary()
        self._schedule()

    # -- rendering ------------------------------------------------------
    def visible_rows(self) -> list:
        model = self.shown
        rows = model.thread_rows(include_idle=self.include_idle) if self.threads_mode \
            else model.process_rows(include_idle=self.include_idle)
        keep = row_filter(self.filter_text)
        rows = [r for r in rows if keep(r)]
        return sort_rows(rows, self.columns, self.sort_key[self.threads_mode], self.reverse)

    def render_all(self) -> None:
        self.render_summary()
        self.render_table()
        self.render_keys()
        screen = self.screen
        if isinstance(screen, (ProcessScreen, AnnotateScreen)):
            screen.show(self.shown)

    def render_summary(self) -> None:
        model = self.shown
        snap = model.cur
        text = Text()
        text.append("rseqtop", style="bold")
        if snap is None:
            text.append(f"  watching {printable(self.watching)}  waiting for the first sample...")
        else:
            st = snap.self_stats
            sysr = model.system()
            cpu = model.self_cpu_percent()
            bpf = model.bpf_cpu_percent()
            text.append(f"  era {snap.era} ({snap.era_description})")
            text.append(f"\nprobes {len(st.probes_attached)} attached")
            if st.probes_missing:
                text.append(f", {len(st.probes_missing)} missing", style="yellow")
            text.append("  lost events ")
            text.append(str(st.events_lost), style="bold red" if st.events_lost else "")
            if st.dropped():
                text.append(f"  map drops {st.dropped()}", style="bold red")
            text.append(f"  rseqtop cpu {'-' if cpu is None else f'{cpu:.1f}%'}")
            if bpf is not None:
                text.append(f" + bpf {bpf:.2f}%")
            text.append(f"  refresh {self.delay:g}s")
            text.append(f"\nsystem  {system_rates_text(sysr, st.unavailable_causes)}  "
                        f"total aborts {snap.totals.aborts}")
            if st.unavailable_causes:
                text.append(f"  unavailable here: {', '.join(st.unavailable_causes)}", style="yellow")
        if self.paused:
            text.append("  PAUSED (p resumes)", style="bold reverse")
        if self.error:
            text.append(f"\npoll failed: {printable(self.error)}", style="bold red")
        show_text(self._summary, text)

    def sort_titles(self) -> dict:
        key = self.sort_key[self.threads_mode]
        col = next(c for c in self.columns if c.key == key)
        arrow = "▼" if col.descending != self.reverse else "▲"
        return {key: col.title + arrow}

    def render_table(self) -> None:
        table = self.table
        table.set_columns(self.columns, self.sort_titles())
        rows = self.visible_rows() if self.shown.cur is not None else []
        key_of = (lambda r: r.tid) if self.threads_mode else (lambda r: r.pid)
        table.sync(rows, self.columns, key_of, lambda r: "" if r.alive else "dim", keep_selection=self._ordered)
        self._ordered = self.shown.prev is not None
        empty = self._empty
        if rows:
            table.display = True
            empty.display = False
            return
        table.display = False
        empty.display = True
        what = "threads" if self.threads_mode else "processes"
        if self.shown.cur is None:
            msg = f"Attaching to the kernel's rseq tracepoints; watching {self.watching}..."
        elif self.filter_text:
            msg = f"No {what} match the filter '{self.filter_text}' (Escape clears it)."
        else:
            msg = (f"No rseq aborts seen yet. Watching {self.watching} "
                   f"({len(self.shown.cur.self_stats.probes_attached)} probes attached).\n\n"
                   f"To make something appear: {HINT}.")
        show_text(empty, Text(printable(msg)))

    def render_keys(self) -> None:
        mode, other = ("threads", "processes") if self.threads_mode else ("processes", "threads")
        text = f"{key_table.footer_text(other)}   [{mode}]"
        if self.filter_text:
            text += f"  filter: {printable(self.filter_text)}"
        show_text(self._keys, Text(text))

    # -- actions --------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.shown = frozen_copy(self.model)
        self.render_all()

    def action_toggle_threads(self) -> None:
        if isinstance(self.screen, ProcessScreen):
            return
        self.threads_mode = not self.threads_mode
        self.want_thread_details(self.threads_mode)
        self.render_all()

    def want_thread_details(self, on: bool) -> None:
        """Threads cost the collector per-thread work, and their mm_cid a
        probe: all of them only while threads are on screen, else those
        with aborts (few, and a thread view or drill-down opened later then
        has them at once; the rest follow at the next refresh)."""
        self.source.want_mm_cid(on)
        self.source.want_threads("all" if on else "aborting")

    def action_toggle_idle(self) -> None:
        self.include_idle = not self.include_idle
        self.render_all()

    def _set_delay(self, step: int) -> None:
        i = min(range(len(DELAYS)), key=lambda k: abs(DELAYS[k] - self.delay))
        self.delay = DELAYS[max(0, min(len(DELAYS) - 1, i + step))]
        if self._timer is not None:  # waiting: restart the wait with the new delay
            self._timer.stop()
            self._timer = self.set_timer(self.delay, self.poll_now)
        self.render_summary()

    def action_slower(self) -> None:
        self._set_delay(+1)

    def action_faster(self) -> None:
        self._set_delay(-1)

    def _move_sort(self, step: int) -> None:
        keys = [c.key for c in self.columns]
        i = keys.index(self.sort_key[self.threads_mode])
        self.sort_key[self.threads_mode] = keys[(i + step) % len(keys)]
        self.reverse = False
        self.render_all()

    def action_sort_left(self) -> None:
        self._move_sort(-1)

    def action_sort_right(self) -> None:
        self._move_sort(+1)

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.render_all()

    def sort_by(self, key: str) -> None:
        if self.sort_key[self.threads_mode] == key:
            self.reverse = not self.reverse
        else:
            self.sort_key[self.threads_mode] = key
            self.reverse = False
        self.render_all()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        if event.data_table.id == "table":
            self.sort_by(event.column_key.value)

    def action_filter(self) -> None:
        box = self._filter
        box.value = self.filter_text
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        self._close_filter()

    def on_key(self, event) -> None:
        box = self._filter
        if box.display and event.key == "escape":
            event.stop()
            self._close_filter()

    def _close_filter(self) -> None:
        box = self._filter
        box.display = False
        self.table.focus()
        self.render_all()

    def action_clear_filter(self) -> None:
        if self.filter_text:
            self.filter_text = ""
            self.render_all()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id != "table" or event.row_key.value is None:
            return
        key = int(event.row_key.value)
        pid = key
        if self.threads_mode:
            pid = next((r.pid for r in self.shown.thread_rows(include_idle=True) if r.tid == key), key)
        self.open_process(pid)

    def open_process(self, pid: int) -> None:
        self.want_thread_details(True)
        self.push_screen(ProcessScreen(pid))

    @property
    def annotator(self):
        if self._annotator is None:
            from rseqtop.symbols.annotate import Annotator

            self._annotator = Annotator()
        return self._annotator

    def open_section(self, pid: int, start_ip: int) -> None:
        self.push_screen(AnnotateScreen(pid, start_ip))

    async def action_quit(self) -> None:
        self.exit()

    def on_unmount(self) -> None:
        gc.unfreeze()
        if self.close_source:
            self.source.close()


def make_app(source, **options) -> RseqtopApp:
    """The live view on `source` (a Collector, or a SyntheticSource in tests)."""
    return RseqtopApp(source, **options)


__all__ = ["RseqtopApp", "make_app"]
