"""A DataTable whose rows are keyed and updated in place.

`sync(rows, columns, key_of)` adds new rows, removes vanished ones, changes
only the cells whose text changed, reorders by the given row order, and
keeps the cursor on the same row key. Every cell is a Cell (plain text
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
from textual._segment_tools import line_crop
from textual.strip import Strip
from textual.widgets import DataTable

STYLES_MAX = 1024  # row styles by position and state: a few screens' worth


class Cell:
    """A one-line table cell: plain text (never markup), aligned, cut with an
    ellipsis. Cheaper to render than a rich Text (no wrapping machinery)."""

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
        used = len(text) if text.isascii() else cell_len(text)
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
        self._layout: tuple = ()
        # row key -> (texts, style, widths): what the row's Cells show; a new
        # tuple whenever any of it changes, so rendered lines can be kept by it
        self._shown: dict = {}
        self._order: list = []
        self._styles: dict = {}
        self._lines: dict = {}  # row key -> (what the line was rendered from, Strip)
        self._foreign: set = set()  # row keys with cells written by update_cell
        self._render_columns: list = []
        self._render_widths: tuple = ()
        self._render_style: Optional[Style] = None
        super().__init__(**kwargs)  # last: DataTable's setup may clear the caches above

    # -- rendering ------------------------------------------------------
    def _row_styles(self, row_index: int, row_style: Style, cursor: bool, hover: bool, own: str) -> tuple:
        """((padding style, text style) per column, style of the blank right
        of the last column) for a row: what DataTable's own rendering gives
        them (meta for mouse clicks, the cursor's and hover's component
        styles), computed once per row position and state."""
        key = (row_index, row_style, cursor, hover, own, self.show_cursor, self._show_hover_cursor,
               self._pseudo_class_state, len(self._render_columns))
        styles = self._styles.get(key)
        if styles is not None:
            return styles
        component_style, post_style = self._get_styles_to_render_cell(
            False, False, False, hover, cursor, self.show_cursor, self._show_hover_cursor,
            self.cursor_foreground_priority == "css", self.cursor_background_priority == "css")
        own_style = self.app.console.get_style(own) if own else None
        cells = []
        for column_index in range(len(self._render_columns)):
            pre = row_style + Style.from_meta({"row": row_index, "column": column_index}) + component_style
            pad = pre + post_style
            cells.append((pad, pre + own_style + post_style if own_style else pad))
        # DataTable's style for the rest of a row-cursor table's line
        extend, _ = self._get_styles_to_render_cell(False, False, False, hover, cursor, self.show_cursor,
                                                    self._show_hover_cursor, False, False)
        extend = row_style + extend + Style.from_meta({"row": row_index, "column": 0, "out_of_bounds": True})
        styles = (cells, extend)
        if len(self._styles) >= STYLES_MAX:
            self._styles.clear()  # cheaper than LRU bookkeeping
        self._styles[key] = styles
        return styles

    def render_lines(self, crop):
        # what every line of this render needs: once, not once per line
        # (DataTable.render_line computes rich_style, a walk up the DOM, per line)
        self._render_columns = self.ordered_columns
        self._render_widths = tuple(c.get_render_width(self) for c in self._render_columns)
        self._render_style = self.rich_style
        try:
            return super().render_lines(crop)
        finally:
            self._render_style = None

    def render_line(self, y: int) -> Strip:
        if self._render_style is None or self.fixed_rows:
            return super().render_line(y)
        scroll_x, scroll_y = self.scroll_offset
        if y >= (self.get_row_height(self._header_row_key) if self.show_header else 0):
            y += scroll_y
        return self._render_line(y, scroll_x, scroll_x + self.size.width, self._render_style)

    def _render_line(self, y: int, x1: int, x2: int, base_style: Style) -> Strip:
        """A data row's line built directly from its Cells, one segment per
        cell, in the styles DataTable gives them; kept until the row's text,
        place, widths or cursor change. (DataTable renders every visible cell
        through Rich, then crops, joins and simplifies the line, again after
        any change to any cell: its caches hold a global update count. That
        was most of the live view's cost at 2,000 threads.) The header line
        is DataTable's, kept until its titles, widths or cursor change. Row
        labels, fixed rows or columns and other cursor types go DataTable's
        way."""
        if (self.cursor_type != "row" or self.fixed_rows or self.fixed_columns or self.cell_padding < 0
                or (self._labelled_row_exists and self.show_row_labels)):
            return super()._render_line(y, x1, x2, base_style)
        try:
            row_key, _ = self._get_offsets(y)
        except LookupError:
            return super()._render_line(y, x1, x2, base_style)
        widths = self._render_widths
        width = self.size.width
        state = (x1, x2, width, widths, self.show_cursor, self.zebra_stripes, base_style, self._show_hover_cursor,
                 self._pseudo_class_state)
        if row_key is self._header_row_key:
            source = (tuple((c.label.plain, c.label.justify) for c in self._render_columns), y,
                      self.cursor_coordinate, self.hover_coordinate, self.show_header, state)
            kept = self._lines.get(None)
            if kept is None or kept[0] != source:
                kept = self._lines[None] = (source, super()._render_line(y, x1, x2, base_style))
            return kept[1]
        shown = None if row_key.value in self._foreign else self._shown.get(row_key.value)
        row = self.rows.get(row_key)
        cells = self._data.get(row_key)
        columns = self._render_columns
        if shown is None or row is None or row.height != 1 or cells is None or len(cells) != len(columns):
            return super()._render_line(y, x1, x2, base_style)
        row_index = self._row_locations.get(row_key)
        cursor = row_index == self.cursor_coordinate.row
        hover = row_index == self.hover_coordinate.row
        source = (shown, row_index, cursor, hover, state)
        kept = self._lines.get(row_key.value)
        if kept is not None and kept[0] == source:
            return kept[1]
        cell_styles, extend_style = self._row_styles(row_index, self._get_row_style(row_index, base_style),
                                                     cursor, hover, shown[1])
        pad = " " * self.cell_padding
        inner = 2 * len(pad)
        segments = []
        for column, render_width, (pad_style, text_style) in zip(columns, widths, cell_styles):
            text = cells[column.key].fit(max(0, render_width - inner))
            if text_style is pad_style:
                segments.append(Segment(pad + text + pad, pad_style))
            else:
                segments += [Segment(pad, pad_style), Segment(text, text_style), Segment(pad, pad_style)]
        total = sum(widths) + self._row_label_column_width
        # the blank right of the last column, empty when there is none (as DataTable has it)
        segments.append(Segment(" " * max(0, width - total), extend_style))
        total = max(total, width)
        if x1 == 0 and x2 >= width == total:
            strip = Strip(segments, width)
        else:
            strip = Strip(line_crop(segments, x1, x2, total)).adjust_cell_length(width, base_style).simplify()
        self._lines[row_key.value] = (source, strip)
        return strip

    def _clear_caches(self) -> None:
        # whatever makes DataTable drop its rendered lines (cursor shown,
        # padding, zebra stripes, clear) drops these too
        super()._clear_caches()
        self._lines.clear()
        self._styles.clear()

    def notify_style_update(self) -> None:
        super().notify_style_update()  # CSS or theme changed
        self._lines.clear()
        self._styles.clear()

    # -- contents -------------------------------------------------------
    def clear(self, columns: bool = False):
        self._forget()
        self._order = []
        return super().clear(columns)

    def _forget(self, key: Optional[str] = None) -> None:
        if key is None:
            self._shown.clear()
            self._lines.clear()
            self._foreign.clear()
        else:
            self._shown.pop(key, None)
            self._lines.pop(key, None)
            self._foreign.discard(key)

    def update_cell(self, row_key, column_key, value, *, update_width: bool = False) -> None:
        """A cell written by others: its row is drawn DataTable's way until
        sync next writes all of it."""
        super().update_cell(row_key, column_key, value, update_width=update_width)
        key = getattr(row_key, "value", row_key)
        shown = self._shown.get(key)
        if shown is not None:
            self._shown[key] = ((None,) * len(shown[0]), shown[1], shown[2])
            self._foreign.add(key)

    def set_columns(self, columns, titles: Optional[dict] = None) -> None:
        """Install these columns (a no-op when unchanged, but titles follow)."""
        layout = tuple(c.key for c in columns)
        if layout != self._layout:
            self.clear(columns=True)
            for c in columns:
                self.add_column(label_text(c.title, c.right), key=c.key)
            self._layout = layout
        if titles:
            changed = False
            for c in columns:
                label = label_text(titles.get(c.key, c.title), c.right)
                if self.columns[c.key].label.plain != label.plain:  # type: ignore[index]
                    self.columns[c.key].label = label  # type: ignore[index]
                    changed = True
            if changed:
                self._require_update_dimensions = True
                self.refresh()

    def _fit_widths(self, columns, widths: list) -> None:
        """Column widths follow the longest text (widths: the longest of each
        column's cells, measured by sync as it formats them). (update_cell(
        update_width=True) re-measures a whole column per changed cell:
        quadratic, too slow for hundreds of rows.)"""
        changed = False
        for c, longest in zip(columns, widths):
            col = self.columns.get(c.key)  # type: ignore[call-overload]
            if col is None:
                continue
            width = max(cell_len(col.label.plain), longest)
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
        its index (used before the first real rates, when the order is arbitrary).
        Changed cells are written into the table's data directly and the table
        is refreshed once (update_cell refreshes per cell)."""
        selected = self.selected_key() if keep_selection else None
        wanted = {}
        for r in rows:
            wanted[str(key_of(r))] = r
        gone = [k for k in self._order if k not in wanted]
        for key in gone:
            self.remove_row(key)
            self._forget(key)
        order = [k for k in self._order if k in wanted] if gone else list(self._order)
        all_widths = []
        formats = [c.fmt for c in columns]
        data = self._data
        changed = False
        for key, r in wanted.items():
            style = style_of(r) if style_of else ""
            texts = tuple(fmt(r) for fmt in formats)
            old = self._shown.get(key)
            if old is not None and old[0] == texts and old[1] == style:
                all_widths.append(old[2])
            else:
                widths = tuple(len(t) if t.isascii() else cell_len(t) for t in texts)  # ASCII: a cell per character
                all_widths.append(widths)
                if old is None:
                    self.add_row(*(cell(t, c.right, style) for c, t in zip(columns, texts)), key=key)
                    order.append(key)
                else:
                    cells = data[key]
                    for c, t, was in zip(columns, texts, old[0]):
                        if t != was or style != old[1]:
                            cells[c.key] = cell(t, c.right, style)
                    self._foreign.discard(key)
                    changed = True
                self._shown[key] = (texts, style, widths)
        if changed:
            self._update_count += 1  # what update_cell does per cell, once
            self.refresh()
        wanted_order = list(wanted)
        if order != wanted_order:
            position = {k: i for i, k in enumerate(wanted_order)}
            first = columns[0]
            by_first = {self._shown[k][0][0]: position[k] for k in wanted_order}
            self.sort(first.key, key=lambda c: by_first.get(c.plain, len(wanted_order)))
        self._order = wanted_order
        self._fit_widths(columns, [max(w) for w in zip(*all_widths)] if all_widths else [0] * len(columns))
        if selected is not None and selected in wanted:
            self.select_key(selected)
