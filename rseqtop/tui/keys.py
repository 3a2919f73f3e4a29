"""Every key of the live view, in one table.

The main view's Textual BINDINGS, its footer line and the `?` help screen are
all derived from KEYS, so a key cannot be bound without help text or listed
in the help without being bound (tests/test_tui.py checks both). The table is
in help-screen order; `footer_at` orders the footer.

A key is handled by one of: the main view's `bindings` (App.BINDINGS, with
the description Textual's key panel shows), the table widget itself
(`table_keys`, DataTable bindings: the selection and Enter), or the mouse
(`mouse`: a header click sorts).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    name: str  # the key as the help screen shows it, e.g. "< / >"
    help: str  # what it does (help screen)
    bindings: tuple = ()  # Binding(s) of the main view (RseqtopApp.BINDINGS)
    table_keys: tuple = ()  # Textual key names the table widget handles itself
    mouse: bool = False  # a mouse action, not a key
    footer: str = ""  # label in the main view's footer ("" = not there); "{other_view}" is filled in
    footer_at: int = 0  # place in the footer, left to right

    @property
    def short(self) -> str:
        """The footer's compact form of the name: "</>" for "< / >"."""
        return self.name.replace(" / ", "/")


KEYS = (
    Key("Up/Down PgUp/PgDn", "move the selection", table_keys=("up", "down", "pageup", "pagedown")),
    Key("Enter", "open the selected process; in a process, the selected section's annotated code",
        table_keys=("enter",),
        footer="details", footer_at=3),
    Key("Escape", "go back (from a process; clears the filter in the main view)",
        (Binding("escape", "clear_filter", "clear filter", show=False),)),
    Key("< / >", "sort by the column to the left / right",
        (Binding("less_than_sign", "sort_left", "sort <"), Binding("greater_than_sign", "sort_right", "sort >")),
        footer="sort", footer_at=7),
    Key("r", "reverse the sort order", (Binding("r", "reverse", "reverse"),), footer="reverse", footer_at=8),
    Key("click a header", "sort by that column (again: reverse)", mouse=True),
    Key("/", "filter by comm (regular expression) or pid; empty clears", (Binding("slash", "filter", "filter"),),
        footer="filter", footer_at=4),
    Key("p", "pause the display (counting goes on)", (Binding("p", "pause", "pause"),), footer="pause",
        footer_at=5),
    Key("H", "toggle processes / threads", (Binding("H", "toggle_threads", "threads"),), footer="{other_view}",
        footer_at=6),
    Key("a", "also show processes without aborts", (Binding("a", "toggle_idle", "all"),)),
    Key("+ / -", "longer / shorter refresh delay",
        (Binding("plus", "slower", "delay+"), Binding("minus", "faster", "delay-")), footer="delay", footer_at=9),
    Key("?", "this help (any key closes it)", (Binding("question_mark", "help", "help"),), footer="help",
        footer_at=2),
    Key("q", "quit", (Binding("q", "quit", "quit"),), footer="quit", footer_at=1),
)

BINDINGS = [b for k in KEYS for b in k.bindings]


def footer_text(other_view: str) -> str:
    """The main view's key line, e.g. "q quit  ? help  ...  +/- delay";
    `other_view` is what H switches to."""
    shown = sorted((k for k in KEYS if k.footer), key=lambda k: k.footer_at)
    return "  ".join(f"{k.short} {k.footer.format(other_view=other_view)}" for k in shown)

