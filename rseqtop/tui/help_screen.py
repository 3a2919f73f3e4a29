"""The `?` overlay: every key the live view understands."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("Up/Down PgUp/PgDn", "move the selection"),
    ("Enter", "open the selected process: its threads and critical sections"),
    ("Escape", "go back (from a process; clears the filter in the main view)"),
    ("< / >", "sort by the column to the left / right"),
    ("r", "reverse the sort order"),
    ("click a header", "sort by that column (again: reverse)"),
    ("/", "filter by comm (regular expression) or pid; empty clears"),
    ("p", "pause the display (counting goes on)"),
    ("H", "toggle processes / threads"),
    ("a", "also show processes without aborts"),
    ("+ / -", "longer / shorter refresh delay"),
    ("?", "this help (any key closes it)"),
    ("q", "quit"),
)


def help_text() -> Text:
    width = max(len(k) for k, _ in KEYS)
    text = Text("rseqtop keys\n\n", style="bold")
    for key, what in KEYS:
        text.append(f"  {key:<{width}}  ", style="bold cyan")
        text.append(f"{what}\n")
    text.append("\nColumns: ABORTS/s and other /s columns are rates over the last interval; ABORTS is the\n"
                "total since rseqtop attached; AB/100PR is aborts per 100 preemptions; TOP SECTION is the\n"
                "critical section (binary!symbol+offset) with the most aborts.")
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
