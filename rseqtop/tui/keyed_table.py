"""A DataTable whose rows are keyed and updated in place.

`sync(rows, columns, key_of)` adds new rows, removes vanished ones, changes
only the cells whose text changed (update_cell), reorders by the given row
order, and keeps the cursor on the same row key. Every cell is a Cell (plain text
renderable), so attacker-controlled strings (process names) are never parsed
as markup.
"""

from __future__ import annotations

from typing import Callable, Optional

from rich.cells import cell_len, set_cell_size
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.widgets import DataTable

FAST_CELLS_MAX = 4096


class Cell:
    """A one-line table cell: plain text (never markup), aligned, cut with an
    ellipsis. Cheaper to render than a rich Text (no wrapping machinery): the
    table re-renders every visible cell on each refresh."""

    __slots__ = ("plain", "right", "style")

    def __init__(self, plain: str, right: bool, style: str = "") -> None:
        self.plain = plain
        self.right = right
        self.style = style

    def __rich_measure__(self, console, options) -> Measurement:
        width = cell_len(self.plain)
        return Measurement(width, width)

    def __rich_console__(self, console, options):
        style = console.get_style(self.style) if self.style else None
        yield Segment(self.fit(options.max_width), style)

    def __str__(self) -> str:
        return self.plain

    def fit(self, width: int) -> str:
        """The text aligned and cut to exactly `width` cells."""
        text = self.plain
        used = cell_len(text)
        if used > width:
            text = set_cell_size(text, max(0, width - 1)) + "…" if width else ""
            used = width
        pad = " " * (width - used)
        return pad + text if self.right else text + pad


def label_text(text: str, right: bool) -> Text:
    return Text(text, justify="right" if right else "left", no_wrap=True, overflow="ellipsis")


def cell(text: str, right: bool, style: str = "") -> Cell:
    return Cell(text, right, style)


class KeyedTable(DataTable):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", False)
        super().__init__(**kwargs)
        self._layout: tuple = ()
        self._plain: dict = {}
        self._order: list = []
        self._fast_cells: dict = {}

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False):
        """DataTable re-renders every visible cell through Rich after any
        update_cell (its cache key holds a global update count); a Cell is a
        single styled line, so render it directly, cached by its content.
        Same segments as the Rich path: padding, then the text."""
        if row_index < 0 or column_index < 0 or self.cell_padding < 0:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        cell = self._data.get(row_key, {}).get(column_key)
        row = self.rows.get(row_key)
        if not isinstance(cell, Cell) or row is None or row.height != 1:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        key = (cell.plain, cell.style, cell.right, row_index, column_index, base_style, width, cursor, hover,
               self._show_hover_cursor, self._pseudo_class_state)
        lines = self._fast_cells.get(key)
        if lines is None:
            fixed = row_index < self.fixed_rows or column_index < self.fixed_columns
            component_style, post_style = self._get_styles_to_render_cell(
                False, False, fixed, hover, cursor, self.show_cursor, self._show_hover_cursor,
                self.cursor_foreground_priority == "css", self.cursor_background_priority == "css")
            pre = base_style + Style.from_meta({"row": row_index, "column": column_index}) + component_style
            pad = " " * self.cell_padding
            inner = max(0, width - 2 * self.cell_padding)
            own = self.app.console.get_style(cell.style) if cell.style else None
            segments = [Segment(pad, pre + post_style), Segment(cell.fit(inner), pre + own + post_style if own else pre + post_style),
                        Segment(pad, pre + post_style)]
            lines = [[s for s in segments if s.text]]
            if len(self._fast_cells) >= FAST_CELLS_MAX:
                self._fast_cells.clear()  # a few screens' worth; cheaper than LRU bookkeeping
            self._fast_cells[key] = lines
        return lines

    def set_columns(self, columns, titles: Optional[dict] = None) -> None:
        """Install these columns (a no-op when unchanged, but titles follow)."""
        layout = tuple(c.key for c in columns)
        if layout != self._layout:
            self.clear(columns=True)
            self._plain.clear()
            self._order = []
            for c in columns:
                self.add_column(label_text(c.title, c.right), key=c.key)
            self._layout = layout
        if titles:
            for c in columns:
                label = label_text(titles.get(c.key, c.title), c.right)
                if self.columns[c.key].label.plain != label.plain:  # type: ignore[index]
                    self.columns[c.key].label = label  # type: ignore[index]
                    self._require_update_dimensions = True
            self.refresh()

    def _fit_widths(self, columns, widths: dict) -> None:
        """Column widths follow the longest text (widths: the longest of each
        column's cells, measured by sync as it formats them). (update_cell(
        update_width=True) re-measures a whole column per changed cell:
        quadratic, too slow for hundreds of rows.)"""
        changed = False
        for c in columns:
            col = self.columns.get(c.key)  # type: ignore[call-overload]
            if col is None:
                continue
            width = max(cell_len(col.label.plain), widths.get(c.key, 0))
            if col.content_width != width:
                col.content_width = width
                changed = True
        if changed:
            self._require_update_dimensions = True
            self.refresh()

    def selected_key(self) -> Optional[str]:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # cursor outside the rows
            return None

    def select_key(self, key: str) -> bool:
        try:
            index = self.get_row_index(key)
        except Exception:
            return False
        self.move_cursor(row=index, animate=False, scroll=False)
        return True

    def sync(self, rows: list, columns, key_of: Callable, style_of: Optional[Callable] = None,
             keep_selection: bool = True) -> None:
        """Show `rows` in this order; keep_selection=False leaves the cursor at
        its index (used before the first real rates, when the order is arbitrary)."""
        selected = self.selected_key() if keep_selection else None
        wanted = {}
        for r in rows:
            wanted[str(key_of(r))] = r
        for key in [k for k in self._order if k not in wanted]:
            self.remove_row(key)
            for c in columns:
                self._plain.pop((key, c.key), None)
        present = set(self._order) & set(wanted)
        longest = [0] * len(columns)
        for key, r in wanted.items():
            style = style_of(r) if style_of else ""
            values = [(c, c.fmt(r)) for c in columns]
            for i, (c, text) in enumerate(values):
                n = len(text) if text.isascii() else cell_len(text)  # ASCII: one cell per character
                if n > longest[i]:
                    longest[i] = n
            if key in present:
                for c, text in values:
                    if self._plain.get((key, c.key)) != (text, style):
                        self.update_cell(key, c.key, cell(text, c.right, style))
                        self._plain[(key, c.key)] = (text, style)
            else:
                self.add_row(*(cell(text, c.right, style) for c, text in values), key=key)
                for c, text in values:
                    self._plain[(key, c.key)] = (text, style)
        order = list(wanted)
        current = [row.key.value for row in self.ordered_rows]
        if current != order:
            position = {k: i for i, k in enumerate(order)}
            first = columns[0]
            by_first = {self._plain[(k, first.key)][0]: position[k] for k in order}
            self.sort(first.key, key=lambda c: by_first.get(c.plain, len(order)))
        self._order = order
        self._fit_widths(columns, {c.key: n for c, n in zip(columns, longest)})
        if selected is not None and selected in wanted:
            self.select_key(selected)
