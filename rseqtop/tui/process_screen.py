"""Drill-down on one process: its threads and its critical sections."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from rseqtop.present.columns import DETAIL_THREAD_COLUMNS, SITE_COLUMNS, THREAD_COLUMNS, rate, ratio, sort_rows
from rseqtop.present.rows import LiveModel, cause_split, preempter_split
from rseqtop.present.textsafe import printable
from rseqtop.tui.keyed_table import KeyedTable


class ProcessScreen(Screen):
    DEFAULT_CSS = """
    ProcessScreen #proc-summary { height: auto; padding: 0 1; background: $boost; }
    ProcessScreen .title { height: 1; padding: 0 1; text-style: bold; }
    ProcessScreen KeyedTable { height: 1fr; }
    ProcessScreen #proc-keys { height: 1; dock: bottom; background: $boost; }
    """
    BINDINGS = [Binding("escape", "back", "back")]

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def compose(self) -> ComposeResult:
        yield Static(id="proc-summary")
        yield Static(Text("Threads"), classes="title")
        yield KeyedTable(id="threads")
        yield Static(Text("Critical sections (binary!symbol+offset; INTERRUPTED AT: offset from the section's start)"),
                     classes="title")
        yield KeyedTable(id="sites")
        yield Static(Text("Escape back  Tab switch table  Enter annotate section  p pause  ? help  q quit"), id="proc-keys")

    def on_mount(self) -> None:
        self.query_one("#threads", KeyedTable).set_columns(DETAIL_THREAD_COLUMNS)
        self.query_one("#sites", KeyedTable).set_columns(SITE_COLUMNS)
        self.show(self.app.shown)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()
        self.app.want_thread_details(self.app.threads_mode)  # type: ignore[attr-defined]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id != "sites" or event.row_key.value is None:
            return
        event.stop()
        self.app.open_section(self.pid, int(event.row_key.value))  # type: ignore[attr-defined]

    def show(self, model: LiveModel) -> None:
        summary = self.query_one("#proc-summary", Static)
        snap = model.cur
        proc = snap.process(self.pid) if snap else None
        if proc is None:
            summary.update(Text(f"process {self.pid}: no rseq data (it may have exited before rseqtop saw it)"))
        else:
            r = next((row for row in model.process_rows(include_idle=True) if row.pid == self.pid), None)
            text = Text()
            text.append(f"PID {proc.pid}  ", style="bold")
            text.append(printable(proc.comm), style="bold")
            text.append("" if proc.alive else "  (exited)")
            text.append(f"\nthreads with rseq {proc.threads_live} (+{proc.threads_exited} exited)  ")
            if snap.self_stats.syscall_accounting:
                by_abi = ", ".join(f"{abi} {n}" for abi, n in proc.registrations_by_abi)
                text.append(f"registrations {proc.registrations}{f' ({by_abi})' if by_abi else ''}  "
                            f"membarrier calls {proc.membarrier_calls()}")
            else:
                text.append("registrations, membarrier calls: not counted (start with --syscalls)", style="dim")
            if r is not None:
                text.append(f"\naborts/s {rate(r.rates.aborts)}  total {proc.counts.aborts}  "
                            f"preempt/s {rate(r.rates.preempts)}  migr/s {rate(r.rates.migrations)}  "
                            f"sig/s {rate(r.rates.signals)}  membarrier/s {rate(r.rates.membarrier_ipis)}  "
                            f"aborts/100 preempt {ratio(r.rates.abort_ratio)}")
            text.append(f"\ncauses: {cause_split(proc.counts.causes, limit=6) or '-'}")
            if "preempt" in snap.self_stats.unavailable_causes:
                text.append("\npreempted by: n/a (no sched_switch)", style="dim")
            else:
                text.append(f"\npreempted by {preempter_split(proc.preempters) or '-'}")
            if proc.storms:
                text.append(f"\nabort storms {proc.storms}: a thread's attempts at one section aborted back to "
                            f"back (see STORMS per section)", style="bold red")
            summary.update(text)
        threads = sort_rows(model.thread_rows(self.pid, include_idle=True), THREAD_COLUMNS, "aborts_s")
        self.query_one("#threads", KeyedTable).sync(threads, DETAIL_THREAD_COLUMNS, lambda t: t.tid)
        sites = model.site_rows(self.pid) if snap else []
        self.query_one("#sites", KeyedTable).sync(sites, SITE_COLUMNS, lambda s: s.start_ip)
