"""Column definitions of the process and thread tables: title, formatter and
sort key per column. Pure (no Textual), shared by the TUI and batch output."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Callable, Optional

from rseqtop.model.snapshot import CAUSE_OF_FIELD
from rseqtop.present.rows import cause_split, preempter_split, sparkline, storms_text
from rseqtop.present.textsafe import printable


def rate(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if v else "0"


def ratio(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


UNAVAILABLE = "n/a"


def cause_rate(rates, field: str, unavailable: tuple) -> str:
    """A per-cause rate, or "n/a" when this kernel cannot see that cause
    (never a misleading 0)."""
    if CAUSE_OF_FIELD.get(field) in unavailable:
        return UNAVAILABLE
    return rate(getattr(rates, field))


def system_rates_text(sysr, unavailable: tuple = ()) -> str:
    """The system-wide rates line shared by the TUI header and batch output."""
    abort_ratio = UNAVAILABLE if "preempt" in unavailable else ratio(sysr.abort_ratio)
    return (f"aborts/s {rate(sysr.aborts)}  preempt/s {cause_rate(sysr, 'preempts', unavailable)}  "
            f"migr/s {cause_rate(sysr, 'migrations', unavailable)}  sig/s {cause_rate(sysr, 'signals', unavailable)}  "
            f"membarrier/s {cause_rate(sysr, 'membarrier_ipis', unavailable)}  aborts/100 preempt {abort_ratio}")


def num(v: int) -> str:
    return str(v)


def signal_name(sig: int) -> Optional[str]:
    """"SIGUSR1" for 10; real-time signals as `kill -l` names them
    ("SIGRTMIN+1"), others by number as gdb does ("SIG32": glibc's internal
    ones); None for 0 (no signal)."""
    if sig <= 0:
        return None
    try:
        return signal.Signals(sig).name
    except ValueError:
        pass
    if signal.SIGRTMIN < sig < signal.SIGRTMAX:
        return f"SIGRTMIN+{sig - signal.SIGRTMIN}"
    return f"SIG{sig}"


def last_signal_text(row) -> str:
    """A thread's last signal: its name, "-" when none was delivered
    while rseqtop watched it, "n/a" when this kernel cannot trace signal
    deliveries."""
    if "signal" in row.unavailable:
        return UNAVAILABLE
    return signal_name(row.last_signal) or "-"


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    fmt: Callable  # row -> str
    sort: Callable  # row -> comparable
    right: bool = True
    descending: bool = True  # the natural first direction: biggest first for numbers


def user_aborts_text(row) -> str:
    """User-detected aborts (--uprobes); "-" when not measured, never 0."""
    return "-" if row.user_aborts is None else num(row.user_aborts)


def _user_aborts_sort(row) -> int:
    return -1 if row.user_aborts is None else row.user_aborts


USER_ABORTS_COLUMN = Column("user_aborts", "USER AB", user_aborts_text, _user_aborts_sort)


def _ratio_sort(row):
    r = row.rates.abort_ratio
    return -1.0 if r is None else r


PROCESS_COLUMNS = (
    Column("pid", "PID", lambda r: str(r.pid), lambda r: r.pid, descending=False),
    Column("comm", "COMM", lambda r: printable(r.comm), lambda r: r.comm, right=False, descending=False),
    Column("threads", "THR", lambda r: num(r.threads), lambda r: r.threads),
    Column("aborts_s", "ABORTS/s", lambda r: rate(r.rates.aborts), lambda r: r.rates.aborts),
    Column("aborts", "ABORTS", lambda r: num(r.counts.aborts), lambda r: r.counts.aborts),
    USER_ABORTS_COLUMN,
    Column("preempt_s", "PREEMPT/s", lambda r: cause_rate(r.rates, "preempts", r.unavailable),
           lambda r: r.rates.preempts),
    Column("migr_s", "MIGR/s", lambda r: cause_rate(r.rates, "migrations", r.unavailable),
           lambda r: r.rates.migrations),
    Column("sig_s", "SIG/s", lambda r: cause_rate(r.rates, "signals", r.unavailable), lambda r: r.rates.signals),
    Column("membarrier_s", "MEMBAR/s", lambda r: cause_rate(r.rates, "membarrier_ipis", r.unavailable),
           lambda r: r.rates.membarrier_ipis),
    Column("ratio", "AB/100PR", lambda r: ratio(r.rates.abort_ratio), _ratio_sort),
    Column("storms", "STORMS", lambda r: storms_text(r.storms), lambda r: r.storms),
    Column("cause", "TOP CAUSE", lambda r: r.top_cause, lambda r: r.top_cause, right=False, descending=False),
    Column("site", "TOP SECTION", lambda r: printable(r.top_site), lambda r: r.top_site, right=False,
           descending=False),
    Column("trend", "ABORTS/s TREND", lambda r: sparkline(r.history), lambda r: sum(r.history[-5:]), right=False),
)

THREAD_COLUMNS = (
    Column("tid", "TID", lambda r: str(r.tid), lambda r: r.tid, descending=False),
    Column("pid", "PID", lambda r: str(r.pid), lambda r: r.pid, descending=False),
    Column("comm", "COMM", lambda r: printable(r.comm), lambda r: r.comm, right=False, descending=False),
    Column("cpu", "CPU", lambda r: "-" if r.cpu < 0 else str(r.cpu), lambda r: r.cpu, descending=False),
    Column("mm_cid", "MM_CID", lambda r: "-" if r.mm_cid < 0 else str(r.mm_cid), lambda r: r.mm_cid,
           descending=False),
    Column("aborts_s", "ABORTS/s", lambda r: rate(r.rates.aborts), lambda r: r.rates.aborts),
    Column("aborts", "ABORTS", lambda r: num(r.counts.aborts), lambda r: r.counts.aborts),
    USER_ABORTS_COLUMN,
    Column("preempt_s", "PREEMPT/s", lambda r: cause_rate(r.rates, "preempts", r.unavailable),
           lambda r: r.rates.preempts),
    Column("ratio", "AB/100PR", lambda r: ratio(r.rates.abort_ratio), _ratio_sort),
    Column("causes", "CAUSES", lambda r: cause_split(r.counts.causes), lambda r: r.counts.top_cause(),
           right=False, descending=False),
)

NODE_COLUMN = Column("node", "NODE", lambda r: "-" if r.node < 0 else str(r.node), lambda r: r.node,
                     descending=False)
LAST_SIGNAL_COLUMN = Column("last_signal", "LAST SIG", last_signal_text, lambda r: r.last_signal, right=False,
                            descending=False)


def _detail_thread_columns() -> tuple:
    """A process's details: its threads without the PID column, with the
    NUMA node of each thread's CPU after CPU and the last signal delivered to
    it before CAUSES."""
    out = []
    for c in THREAD_COLUMNS:
        if c.key == "causes":
            out.append(LAST_SIGNAL_COLUMN)
        if c.key != "pid":
            out.append(c)
        if c.key == "cpu":
            out.append(NODE_COLUMN)
    return tuple(out)


DETAIL_THREAD_COLUMNS = _detail_thread_columns()

SITE_COLUMNS = (
    Column("symbol", "CRITICAL SECTION", lambda r: printable(r.symbol), lambda r: r.symbol, right=False),
    Column("aborts_s", "ABORTS/s", lambda r: rate(r.aborts_per_s), lambda r: r.aborts_per_s),
    Column("aborts", "ABORTS", lambda r: num(r.aborts), lambda r: r.aborts),
    USER_ABORTS_COLUMN,
    Column("share", "SHARE", lambda r: "-" if r.share is None else f"{r.share:.0f}%", lambda r: r.share or 0),
    Column("causes", "CAUSES", lambda r: cause_split(r.causes, r.aborts), lambda r: r.causes, right=False),
    Column("storms", "STORMS", lambda r: storms_text(r.storms), lambda r: r.storms),
    Column("preempted_by", "PREEMPTED BY", lambda r: preempter_split(r.preempters, 2),
           lambda r: r.preempters[0].count if r.preempters else 0, right=False),
    Column("where", "INTERRUPTED AT", lambda r: offsets_text(r), lambda r: r.top_offset() or 0, right=False),
)


def offsets_text(row, limit: int = 3) -> str:
    """"+0xf 91% +0x14 9%" (offset from the section's start, share of aborts)."""
    total = sum(n for _, n in row.offsets)
    if not total:
        return ""
    parts = sorted(row.offsets, key=lambda kv: (-kv[1], kv[0]))
    text = " ".join(f"+{off:#x} {100.0 * n / total:.0f}%" for off, n in parts[:limit])
    return text + (f" +{len(parts) - limit} more" if len(parts) > limit else "")


def column(columns, key: str) -> Column:
    for c in columns:
        if c.key == key:
            return c
    raise KeyError(key)


def sort_rows(rows: list, columns, key: str, reverse: bool = False) -> list:
    """Rows ordered by column `key` in its natural direction (reversed on
    request); ties broken by the first column so the order is stable."""
    col = column(columns, key)
    first = columns[0].sort
    ordered = sorted(rows, key=lambda r: (col.sort(r), first(r)) if not col.descending else (col.sort(r), -first(r)))
    if col.descending != reverse:
        ordered.reverse()
    return ordered
