"""Drill-down on one critical section: its instructions with their source
lines and how often threads were interrupted at each (rseqtop annotate's view).

Reading the binary (a bounded child process, see rseqtop.symbols.annotate)
runs in a thread worker, never on the UI thread; the app's Annotator caches
each (binary, section), so reopening a section is immediate. The counts
follow every refresh."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from rseqtop.present import annotate as present
from rseqtop.present.rows import LiveModel
from rseqtop.tui.messages import AnnotationReady

LOADING = "reading the binary's code and line table..."


class AnnotateScreen(Screen):
    DEFAULT_CSS = """
    AnnotateScreen #ann-summary { height: auto; padding: 0 1; background: $boost; }
    AnnotateScreen #ann-scroll { height: 1fr; }
    AnnotateScreen #ann-body { padding: 0 1; width: auto; }
    AnnotateScreen #ann-keys { height: 1; dock: bottom; background: $boost; }
    """
    BINDINGS = [Binding("escape", "back", "back")]

    def __init__(self, pid: int, start_ip: int) -> None:
        super().__init__()
        self.pid = pid
        self.start_ip = start_ip
        self.listing = None
        self.error = ""
        self.loaded = False
        self._requested = False

    def compose(self) -> ComposeResult:
        yield Static(id="ann-summary")
        with VerticalScroll(id="ann-scroll"):
            yield Static(Text(LOADING), id="ann-body")
        yield Static(Text("Escape back  p pause  ? help  q quit"), id="ann-keys")

    def on_mount(self) -> None:
        self.show(self.app.shown)  # type: ignore[attr-defined]

    def action_back(self) -> None:
        self.app.pop_screen()

    def site(self, model: LiveModel):
        snap = model.cur
        if snap is None:
            return None
        return next((s for s in snap.sites_of(self.pid) if s.start_ip == self.start_ip), None)

    def _load(self, site) -> None:
        """In a thread worker: the (cached) listing, posted back as a message."""
        from rseqtop.symbols.annotate import AnnotateError

        try:
            listing = self.app.annotator(self.pid, site.start_ip, site.post_commit_offset,  # type: ignore[attr-defined]
                                         site.abort_ip)
            self.post_message(AnnotationReady(self.pid, site.start_ip, listing, ""))
        except AnnotateError as err:
            self.post_message(AnnotationReady(self.pid, site.start_ip, None, str(err)))
        except Exception as err:  # never take the live view down
            self.post_message(AnnotationReady(self.pid, site.start_ip, None, f"{type(err).__name__}: {err}"))

    def on_annotation_ready(self, message: AnnotationReady) -> None:
        self.listing, self.error, self.loaded = message.listing, message.error, True
        self.show(self.app.shown)  # type: ignore[attr-defined]

    def show(self, model: LiveModel) -> None:
        site = self.site(model)
        summary = self.query_one("#ann-summary", Static)
        body = self.query_one("#ann-body", Static)
        if site is None:
            summary.update(Text(f"process {self.pid}: section {self.start_ip:#x} is not in the latest sample"))
            return
        if not self._requested:
            self._requested = True
            self.run_worker(lambda: self._load(site), thread=True, group="annotate", exit_on_error=False)
        a = present.Annotated(site, self.listing, self.error)
        summary.update(Text("\n".join(present.header_lines(a))))
        body.update(Text("\n".join(present.table_lines(a)) if self.loaded else LOADING))
