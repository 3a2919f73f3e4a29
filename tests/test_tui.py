"""Pilot and snapshot tests of the live view on SyntheticSource data.

The app polls once at mount and once more right after (first_rate_after), so
after two polls it shows rates; with delay=3600 nothing else happens unless a
test calls app.poll_now(). SyntheticSource's clock is fake, so every number
is exact and the screens are deterministic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import signal

from support import listing_of, source_lines
from textual.widgets import DataTable

from rseqtop import workload
from rseqtop.model.synthetic import SyntheticSource
from rseqtop.present.textsafe import printable
from rseqtop.tui.app import RseqtopApp, make_app
from rseqtop.tui.help_screen import HelpScreen
from rseqtop.tui.keyed_table import Cell
from rseqtop.tui.keys import KEYS
from rseqtop.tui.process_screen import ProcessScreen

HOSTILE = "[bold red]x\x1b[31m"


def sync(fn):
    """Run an async test with asyncio.run (no pytest-asyncio needed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper
SIZE = (180, 40)


def new_app(processes=5, threads=3, comms=None, delay=3600.0):
    return make_app(SyntheticSource(processes, threads, comms=comms), delay=delay, first_rate_after=0.01)


async def wait_polls(pilot, app, n: int) -> None:
    for _ in range(400):
        if app.model.polls >= n and not app._polling:
            await pilot.pause()
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {app.model.polls} polls")


async def poll(pilot, app) -> None:
    n = app.model.polls
    app.poll_now()
    await wait_polls(pilot, app, n + 1)


def row_keys(table) -> list:
    return [row.key.value for row in table.ordered_rows]


def cell_text(table, row_key: str, col: str) -> str:
    value = table.get_cell(row_key, col)
    assert isinstance(value, Cell)  # plain text, never markup
    return value.plain


def selected(app) -> str:
    return app.table.selected_key()


# -- process view, sorting ---------------------------------------------------
@sync
async def test_process_view_sorted_by_abort_rate():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        table = app.table
        assert row_keys(table) == ["1004", "1003", "1002", "1001", "1000"]
        # pid 1004: (4 % 7 + 1) * (1 + 2 + 3) * 10 = 300 aborts/s over three threads
        assert cell_text(table, "1004", "aborts_s") == "300"
        assert cell_text(table, "1004", "aborts") == str(300 * 2)
        assert cell_text(table, "1004", "threads") == "3"
        assert cell_text(table, "1004", "preempt_s") == "600"
        assert cell_text(table, "1004", "ratio") == "50.0"
        assert cell_text(table, "1004", "cause") == "preempt"
        assert cell_text(table, "1004", "site").endswith("!rseq_op_counter+0x0")
        assert cell_text(table, "1004", "trend") == "█"


@sync
async def test_sort_keys_move_and_reverse():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        await pilot.press("less_than_sign", "less_than_sign", "less_than_sign")  # aborts_s -> threads -> comm -> pid
        assert app.sort_key[False] == "pid"
        assert row_keys(app.table) == ["1000", "1001", "1002", "1003", "1004"]
        await pilot.press("r")
        assert row_keys(app.table) == ["1004", "1003", "1002", "1001", "1000"]
        await pilot.press("greater_than_sign")  # comm, ascending, ties by pid
        assert app.sort_key[False] == "comm"
        assert row_keys(app.table)[0] == "1001"  # envoy
        assert "COMM▲" in app.table.columns["comm"].label.plain


@sync
async def test_header_click_sorts_by_that_column():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        app.sort_by("pid")
        await pilot.pause()
        assert row_keys(app.table) == ["1000", "1001", "1002", "1003", "1004"]
        app.sort_by("pid")
        await pilot.pause()
        assert row_keys(app.table) == ["1004", "1003", "1002", "1001", "1000"]


@sync
async def test_every_column_sorts():
    app = new_app(8, 2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        seen = set()
        for _ in range(len(app.columns)):
            await pilot.press("greater_than_sign")
            seen.add(app.sort_key[False])
            assert len(row_keys(app.table)) == 8
        assert seen == {c.key for c in app.columns}


# -- selection ----------------------------------------------------------------
@sync
async def test_selection_kept_across_refreshes_and_reorders():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        await pilot.press("down")
        assert selected(app) == "1003"
        before = cell_text(app.table, "1003", "aborts")
        await poll(pilot, app)
        assert selected(app) == "1003"
        assert cell_text(app.table, "1003", "aborts") != before  # updated in place
        await pilot.press("r")  # the row moves from index 1 to index 3
        assert row_keys(app.table).index("1003") == 3
        assert selected(app) == "1003"


@sync
async def test_rows_are_updated_in_place_not_rebuilt():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        calls = []
        real = app.table.add_row
        app.table.add_row = lambda *a, **k: calls.append(a) or real(*a, **k)
        await poll(pilot, app)
        assert calls == []


# -- filter -------------------------------------------------------------------
@sync
async def test_filter_by_comm_then_pid_then_clear():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        await pilot.press("slash", *"envoy", "enter")
        assert row_keys(app.table) == ["1001"]
        await pilot.press("slash", "ctrl+u", *"1002", "enter")
        assert row_keys(app.table) == ["1002"]
        await pilot.press("escape")
        assert len(row_keys(app.table)) == 5


@sync
async def test_filter_without_match_says_so():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        await pilot.press("slash", *"nomatch", "enter")
        empty = app._empty
        assert empty.display and "nomatch" in str(empty.render())


# -- pause, delay, mode ---------------------------------------------------------
@sync
async def test_pause_freezes_display_but_counting_goes_on():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        await pilot.press("p")
        frozen = cell_text(app.table, "1004", "aborts")
        await poll(pilot, app)
        await poll(pilot, app)
        assert cell_text(app.table, "1004", "aborts") == frozen
        assert app.model.cur.process(1004).counts.aborts == 300 * 4
        assert "PAUSED" in str(app._summary.render())
        await pilot.press("p")
        assert cell_text(app.table, "1004", "aborts") == str(300 * 4)


@sync
async def test_plus_minus_change_the_delay():
    app = new_app(delay=1.0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("plus")
        assert app.delay == 2.0
        await pilot.press("plus")
        assert app.delay == 3.0
        await pilot.press("minus", "minus", "minus")
        assert app.delay == 0.5


@sync
async def test_H_toggles_threads_and_back():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        await pilot.press("H")
        assert app.threads_mode
        assert "tid" in app.table.columns and len(row_keys(app.table)) == 15
        # thread 2 of pid 1004 (tid 301004) has the highest rate: 5 * 3 * 10
        assert row_keys(app.table)[0] == "301004"
        assert cell_text(app.table, "301004", "aborts_s") == "150"
        await pilot.press("H")
        assert not app.threads_mode and "pid" in app.table.columns and len(row_keys(app.table)) == 5


@sync
async def test_help_lists_every_key_and_closes():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text").render())
        for key in ("Enter", "Escape", "< / >", "/", "p", "H", "+ / -", "?", "q", "r"):
            assert key in text
        await pilot.press("x")
        assert not isinstance(app.screen, HelpScreen)


def our_binding_keys(cls) -> list:
    """The keys of the bindings a class of ours declares itself (not
    Textual's inherited ones such as ctrl+q, ctrl+p or tab)."""
    return [key.strip() for b in cls.BINDINGS for key in b.key.split(",")]


def test_every_binding_has_help_text():
    helped = {key for k in KEYS if k.name and k.help for key in [b.key for b in k.bindings] + list(k.table_keys)}
    from rseqtop.tui.annotate_screen import AnnotateScreen

    for cls in (RseqtopApp, ProcessScreen, AnnotateScreen):
        for key in our_binding_keys(cls):
            assert key in helped, f"{cls.__name__} binds {key!r} without a line in rseqtop/tui/keys.py KEYS"
    footer = [k.footer_at for k in KEYS if k.footer]
    assert sorted(footer) == list(range(1, len(footer) + 1)), "footer places must be 1..n, each once"


@sync
async def test_every_key_in_the_help_is_bound():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        active = app.screen.active_bindings  # what pressing a key does right now, in the main view
        for k in KEYS:
            assert k.bindings or k.table_keys or k.mouse, f"{k.name!r} is in the help but handled by nothing"
            for b in k.bindings:
                assert b.key in active and active[b.key].node is app, f"{k.name!r}: {b.key} is not bound"
                assert active[b.key].binding.action == b.action and callable(getattr(app, f"action_{b.action}"))
            for key in k.table_keys:
                assert key in active and isinstance(active[key].node, DataTable), f"{k.name!r}: {key} is not bound"
            if k.mouse:
                assert callable(app.on_data_table_header_selected)
        await pilot.press("question_mark")
        text = str(app.screen.query_one("#help-text").render())
        assert all(k.name in text and k.help in text for k in KEYS)


@sync
async def test_footer_lists_the_footer_keys_and_the_other_view():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        assert str(app._keys.render()).endswith("H threads  </> sort  r reverse  +/- delay   [processes]")
        await pilot.press("H")
        text = str(app._keys.render())
        assert text.startswith("q quit  ? help  Enter details  / filter  p pause  H processes  </> sort")
        assert text.endswith("   [threads]")


@sync
async def test_q_quits():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 or app.return_code is None
    assert not app.is_running


# -- drill-down ----------------------------------------------------------------
@sync
async def test_enter_opens_process_and_escape_goes_back():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        await pilot.press("down", "enter")
        screen = app.screen
        assert isinstance(screen, ProcessScreen) and screen.pid == 1003
        threads = screen.query_one("#threads")
        assert row_keys(threads) == ["301003", "201003", "1003"]
        assert cell_text(threads, "301003", "aborts_s") == "120"
        sites = screen.query_one("#sites")
        # pid 1003 runs the first four synthetic sections; the counter one holds half its aborts
        assert len(row_keys(sites)) == 4
        counter = str(0x401000)
        assert cell_text(sites, counter, "share") == "50%"
        assert cell_text(sites, counter, "where") == "+0x10 50% +0x18 50%"
        await poll(pilot, app)  # the drill-down follows refreshes
        assert cell_text(threads, "301003", "aborts") == str(120 * 3)
        await pilot.press("escape")
        assert not isinstance(app.screen, ProcessScreen)
        assert selected(app) == "1003"


class Signalled(SyntheticSource):
    """Synthetic threads with a NUMA node and a last signal: the main
    thread of each process got SIGUSR1, thread 2 a real-time signal and sits
    on node 1, thread 3 had none and its CPU is not known yet."""

    def poll(self):
        snap = super().poll()
        extra = {0: dict(last_signal=int(signal.SIGUSR1), node=0),  # by tid: pid, pid + 200000, pid + 300000
                 2: dict(last_signal=int(signal.SIGRTMIN) + 2, node=1),
                 3: dict(last_signal=0, cpu=-1, node=-1)}
        return dataclasses.replace(snap, threads=tuple(dataclasses.replace(t, **extra[(t.tid - t.pid) // 100000])
                                                       for t in snap.threads))


@sync
async def test_process_screen_shows_node_and_last_signal():
    for unavailable, sigs in (((), ("SIGUSR1", "SIGRTMIN+2", "-")), (("signal",), ("n/a", "n/a", "n/a"))):
        app = make_app(Signalled(5, 3, unavailable_causes=unavailable), delay=3600.0, first_rate_after=0.01)
        async with app.run_test(size=SIZE) as pilot:
            await wait_polls(pilot, app, 2)
            app.open_process(1003)
            await pilot.pause()
            threads = app.screen.query_one("#threads")
            titles = [c.label.plain for c in threads.columns.values()]
            assert titles[titles.index("CPU") + 1] == "NODE"
            assert titles[titles.index("CAUSES") - 1] == "LAST SIG"
            assert [cell_text(threads, tid, "node") for tid in ("1003", "201003", "301003")] == ["0", "1", "-"]
            assert tuple(cell_text(threads, tid, "last_signal") for tid in ("1003", "201003", "301003")) == sigs


@sync
async def test_enter_on_a_thread_opens_its_process():
    app = new_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        await pilot.press("H", "enter")
        assert isinstance(app.screen, ProcessScreen) and app.screen.pid == 1004


# -- safety and empty state ------------------------------------------------------
@sync
async def test_hostile_comm_is_shown_literally():
    app = new_app(comms=[HOSTILE])
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        assert cell_text(app.table, "1000", "comm") == printable(HOSTILE) == "[bold red]x\\x1b[31m"
        await pilot.press("enter")
        assert cell_text(app.screen.query_one("#threads"), "1004", "comm") == printable(HOSTILE)
        svg = app.export_screenshot()
        assert "[bold&#160;red]x\\x1b[31m" in svg
        assert "\x1b" not in svg


@sync
async def test_empty_state_says_what_is_watched_and_what_to_run():
    app = make_app(SyntheticSource(0, 0), delay=3600.0, first_rate_after=0.01, watching="pid 4242")
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        empty = app._empty
        assert empty.display and not app.table.display
        text = str(empty.render())
        assert "pid 4242" in text and "rseqtop demo" in text and "rseqtop workload" in text


# -- snapshots ---------------------------------------------------------------------
async def _two_polls(pilot):
    await wait_polls(pilot, pilot.app, 2)


def test_snapshot_process_view(snap_compare):
    assert snap_compare(new_app(), terminal_size=(170, 16), run_before=_two_polls)


def test_snapshot_drill_down(snap_compare):
    async def before(pilot):
        await _two_polls(pilot)
        await pilot.press("down", "enter")
        await pilot.pause()
    assert snap_compare(new_app(), terminal_size=(120, 24), run_before=before)


def test_snapshot_help(snap_compare):
    async def before(pilot):
        await _two_polls(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
    assert snap_compare(new_app(), terminal_size=(110, 30), run_before=before)


def test_snapshot_hostile_names(snap_compare):
    assert snap_compare(new_app(3, 2, comms=[HOSTILE, "ok\x07bell"]), terminal_size=(170, 12), run_before=_two_polls)


@sync
async def test_a_failed_poll_is_shown_and_the_next_one_retries():
    class Flaky(SyntheticSource):
        def poll(self):
            if self.polls == 1:  # the second poll fails
                self.polls += 1
                raise OSError("map read failed")
            return super().poll()

    app = make_app(Flaky(3, 2), delay=0.05, first_rate_after=0.01)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(400):
            if app.error:
                break
            await pilot.pause(0.01)
        assert app.error == "OSError: map read failed"
        await wait_polls(pilot, app, 3)
        assert app.error is None  # the next poll worked again


def test_the_private_datatable_api_keyed_table_relies_on_is_there():
    """KeyedTable renders cells itself through DataTable internals (8.5% ->
    5.5% of a core at 2,000 threads); a Textual release that renames them
    must fail here, not in front of a user."""
    import inspect

    from textual.widgets import DataTable

    params = list(inspect.signature(DataTable._render_cell).parameters)
    assert params[:5] == ["self", "row_index", "column_index", "base_style", "width"], params
    assert "cursor" in params and "hover" in params
    assert len(inspect.signature(DataTable._get_styles_to_render_cell).parameters) == 10
    table = DataTable()
    for attr in ("_row_locations", "_column_locations", "_data", "_show_hover_cursor", "_require_update_dimensions"):
        assert hasattr(table, attr), attr
    assert hasattr(DataTable, "_pseudo_class_state") or hasattr(table, "_pseudo_class_state")


def cells_of(strip) -> list:
    """A rendered line as (character, style) per cell: the same on screen
    however it is cut into segments."""
    return [(ch, seg.style) for seg in strip for ch in seg.text]


@sync
async def test_keyed_table_lines_are_datatables_own():
    """KeyedTable builds its lines itself (and keeps them until their row
    changes); every line, scrolled down and sideways, with the cursor and a
    dimmed (exited) row, must be what DataTable's own rendering gives."""
    from textual.widgets import DataTable

    from rseqtop.tui.keyed_table import KeyedTable

    app = new_app(processes=60, threads=2)
    async with app.run_test(size=(90, 24)) as pilot:
        await wait_polls(pilot, app, 2)
        table = app.table
        dim = row_keys(table)[3]  # as if its process had exited
        table.sync(app.visible_rows(), app.columns, lambda r: r.pid, lambda r: "dim" if str(r.pid) == dim else "")
        assert table.get_cell(dim, "pid").style == "dim"
        compared = 0

        def compare_lines():
            nonlocal compared
            table._render_columns = table.ordered_columns
            table._render_widths = tuple(c.get_render_width(table) for c in table._render_columns)
            width, height = table.size
            style = table.rich_style
            for y in range(height + table.scroll_offset.y):
                x1 = table.scroll_offset.x
                mine = KeyedTable._render_line(table, y, x1, x1 + width, style)
                again = KeyedTable._render_line(table, y, x1, x1 + width, style)  # kept
                table._line_cache.clear()
                table._row_render_cache.clear()
                theirs = DataTable._render_line(table, y, x1, x1 + width, style)
                assert cells_of(mine) == cells_of(theirs), (table.scroll_offset, y)
                assert cells_of(again) == cells_of(theirs), (table.scroll_offset, y)
                compared += 1

        # each step after lines were kept: new cursor row, new texts, scrolled down, sideways
        for scroll, cursor, refresh in (((0, 0), 1, False), ((0, 0), 2, False), ((0, 0), 2, True),
                                        ((0, 30), 33, False), ((25, 30), 33, False)):
            table.move_cursor(row=cursor, scroll=False)
            if refresh:
                await poll(pilot, app)
            table.scroll_to(*scroll, animate=False, immediate=True)
            await pilot.pause()
            compare_lines()
        assert table.scroll_offset.x == 25 and table.scroll_offset.y == 30
        await pilot.resize_terminal(250, 24)  # wider than the table: lines end in a blank
        table.scroll_to(0, 0, animate=False, immediate=True)
        await pilot.pause()
        assert sum(c.get_render_width(table) for c in table.ordered_columns) < table.size.width - 10
        compare_lines()
        assert compared > 120
        table.clear()  # sync starts over, not from what it showed before
        table.sync(app.visible_rows(), app.columns, lambda r: r.pid)
        assert len(row_keys(table)) == 60 and cell_text(table, dim, "pid") == dim


# -- section drill-down (annotate) ----------------------------------------------
class DelaySites(SyntheticSource):
    """The synthetic delay section (pid 1004's fifth) interrupted at two
    instruction starts of the real workload's delay section (its last two,
    as the workload binary has them now)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        listing = listing_of(workload.build(), "delay")
        starts = [i.vaddr - listing.start_vaddr for i in listing.section]
        last = listing.section[-1]
        self.offsets = tuple(starts[-2:])
        self.post_commit_offset = last.vaddr + last.size - listing.start_vaddr

    def poll(self):
        snap = super().poll()
        sites = []
        for s in snap.sites:
            if s.symbol.endswith("rseq_op_delay+0x0"):
                a, b = self.offsets
                s = dataclasses.replace(s, offsets=((a, s.aborts - s.aborts // 4), (b, s.aborts // 4)),
                                        post_commit_offset=self.post_commit_offset)
            sites.append(s)
        return dataclasses.replace(snap, sites=tuple(sites))


class WorkloadDelayListing:
    """An annotator that reads the real workload binary's delay section,
    whatever address the synthetic site has; counts how often it is asked."""

    def __init__(self):
        self.calls = 0

    def __call__(self, pid, start_ip, post_commit_offset, abort_ip):
        self.calls += 1
        return listing_of(workload.build(), "delay")


@sync
async def test_enter_on_a_section_shows_its_annotated_listing():
    from rseqtop.tui.annotate_screen import AnnotateScreen

    annotator = WorkloadDelayListing()
    app = make_app(DelaySites(5, 3), delay=3600.0, first_rate_after=0.01, annotator=annotator)
    async with app.run_test(size=SIZE) as pilot:
        await wait_polls(pilot, app, 2)
        app.open_process(1004)
        await pilot.pause()
        sites = app.screen.query_one("#sites")
        sites.focus()
        delay = next(s for s in app.shown.cur.sites_of(1004) if "rseq_op_delay" in s.symbol)
        for _ in range(len(row_keys(sites))):
            if sites.selected_key() == str(delay.start_ip):
                break
            await pilot.press("down")
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, AnnotateScreen) and screen.start_ip == delay.start_ip
        for _ in range(500):  # the listing is read in a thread worker
            if screen.loaded:
                break
            await asyncio.sleep(0.01)
        await pilot.pause()
        body = str(screen.query_one("#ann-body").render())
        assert screen.error == "", screen.error
        asm_line, counter_line = source_lines("delay")
        assert f"rseq_abi.c:{asm_line}" in body and f"rseq_abi.c:{counter_line}" in body
        site = next(s for s in app.shown.cur.sites_of(1004) if s.start_ip == delay.start_ip)
        lines = {line.split()[1]: line.split() for line in body.splitlines() if line.startswith("rseq_abi.c")
                 and line.split()[1].startswith("+")}
        for off, n in site.offsets:
            assert lines[f"+{off:#x}"][-2] == str(n)  # INTERRUPTED column
        await poll(pilot, app)  # counts follow refreshes; the listing is not read again
        body = str(screen.query_one("#ann-body").render())
        site = next(s for s in app.shown.cur.sites_of(1004) if s.start_ip == delay.start_ip)
        assert f" {dict(site.offsets)[app.source.offsets[0]]} " in body
        assert annotator.calls == 1
        await pilot.press("escape")
        assert isinstance(app.screen, ProcessScreen)
