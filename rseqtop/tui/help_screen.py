"""The `?` overlay: every key the live view understands (from rseqtop/tui/keys.py)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from rseqtop.tui.keys import KEYS


def help_text() -> Text:
    width = max(len(k.name) for k in KEYS)
    text = Text("rseqtop keys\n\n", style="bold")
    for k in KEYS:
        text.append(f"  {k.name:<{width}}  ", style="bold cyan")
        text.append(f"{k.help}\n")
    text.append("\nColumns: ABORTS/s and other /s columns are rates over the last interval; ABORTS is the\n"
                "total since rseqtop attached; AB/100PR is aborts per 100 preemptions; TOP SECTION is the\n"
                "critical section (binary!symbol+offset) with the most aborts. USER AB counts the sections'\n"
                "own cpu_id-mismatch retries seen at their abort handlers (--uprobes; - when not measured).")
    return text


class HelpScreen(ModalScreen):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: auto; height: auto; max-width: 100%; border: round $accent;
                            background: $surface; padding: 1 2; }
    HelpScreen #help-text { width: auto; height: auto; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "close", show=False)]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(help_text(), id="help-text")

    def action_close(self) -> None:
        self.dismiss()

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()
