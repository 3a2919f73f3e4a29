"""Reading a recording back, safely: a recording may come from anyone.

The file is read line by line with a cap on every line, the file and what
is kept (samples, series points, entries per list); each line is parsed by
json.loads (no pickle, no eval; NaN and Infinity refused) and checked field
by field before anything is used. Samples are folded into per-process and
per-section series as they are read, so memory grows with what the report
shows, not with the file. Every problem is a RecordingError: one line,
naming the file, the line and the field, never echoing the file's text.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rseqtop.errors import UserError
from rseqtop.present.textsafe import printable
from rseqtop.recording import format as fmt

MAX_FILE_BYTES = 1 << 30
MAX_LINE_BYTES = 16 << 20
MAX_SAMPLES = 200_000  # a day at -d 0.5
MAX_POINTS = 5_000_000  # series points kept, over all processes and sections
MAX_PROCESSES = 100_000  # distinct processes in a recording
MAX_LIST = 10_000  # processes in a sample, preempters of a section
MAX_SECTIONS = 4096  # per process: the BPF sites map's size
MAX_OFFSETS = 4096  # interrupted offsets per section
MAX_NAME = 256  # comm, cause, era, host, kernel
MAX_TEXT = 4096  # symbol, watching
MAX_UINT = (1 << 64) - 1
MAX_STACKS = 100_000  # (process, section, stack) rows in a stacks line
MAX_FRAMES = 128  # frames of one stack (the kernel walks at most 127)

COUNT_KEYS = ("aborts", "updates", "preempts", "migrations", "signals", "membarrier_ipis")


class RecordingError(UserError):
    """The file is not a recording this rseqtop can read; the message says why."""


@dataclass
class Series:
    """A running total over time: times (seconds since the epoch) and values."""

    times: array = field(default_factory=lambda: array("d"))
    totals: array = field(default_factory=lambda: array("d"))

    def add(self, t: float, total: float) -> None:
        self.times.append(t)
        self.totals.append(total)

    def rates(self) -> list:
        """[(t, per second over the interval ending at t)]: differences of
        consecutive totals (a drop, a restarted counter, counts as zero)."""
        out = []
        for i in range(1, len(self.times)):
            dt = self.times[i] - self.times[i - 1]
            if dt > 0:
                out.append((self.times[i], max(0.0, self.totals[i] - self.totals[i - 1]) / dt))
        return out


@dataclass
class Section:
    pid: int
    start_ip: int
    symbol: str
    aborts: int = 0
    causes: dict = field(default_factory=dict)
    offsets: dict = field(default_factory=dict)  # interrupted offset -> aborts
    preempters: Optional[list] = None  # [(pid, comm, count)] when the recording has them
    series: Series = field(default_factory=Series)


@dataclass
class Process:
    """One process over the recording. A recycled pid (its totals drop) is
    another Process with the next `incarnation`."""

    pid: int
    incarnation: int
    comm: str
    totals: dict = field(default_factory=dict)  # COUNT_KEYS (int or None) and "causes"
    alive: bool = True
    sections: dict = field(default_factory=dict)  # start_ip -> Section
    series: Series = field(default_factory=Series)

    @property
    def aborts(self) -> int:
        return self.totals.get("aborts", 0)


@dataclass(frozen=True)
class StackRow:
    """Aborts of one section of one process with one call stack (frames
    root first); a lost stack has no frames and names why (e.g. "EEXIST")."""

    pid: int
    comm: str
    section: str
    start_ip: int
    frames: tuple
    count: int
    lost: Optional[str] = None


@dataclass
class Recording:
    path: str
    header: dict
    samples: int = 0
    first_time: Optional[float] = None
    last_time: Optional[float] = None
    era: str = ""
    unavailable_causes: tuple = ()
    events_lost: int = 0
    maps_dropped: int = 0
    probe_misses: int = 0
    processes: list = field(default_factory=list)
    skipped_kinds: dict = field(default_factory=dict)  # kind -> lines this reader does not know
    # kind "stacks": the last line's rows (totals since the start), and the
    # aborts whose stack the recorder's full map could not count
    stack_rows: list = field(default_factory=list)
    stacks_dropped: int = 0
    stack_lines: int = 0

    @property
    def stacks(self) -> bool:
        """Stack counts in the file (kind "stacks")."""
        return self.stack_lines > 0

    def sections(self) -> list:
        return [s for p in self.processes for s in p.sections.values()]

    def total_aborts(self) -> int:
        return sum(p.aborts for p in self.processes)

    def causes(self) -> dict:
        out: dict = {}
        for p in self.processes:
            for name, n in p.totals.get("causes", {}).items():
                out[name] = out.get(name, 0) + n
        return out


# -- checking values -------------------------------------------------------------

class _Bad(Exception):
    """A field is wrong: (where, what was expected)."""


def _type_name(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "a whole number", float: "a number"}.get(type(v), type(v).__name__)


def _expect(ok: bool, where: str, what: str, v) -> None:
    if not ok:
        raise _Bad(f"{where} must be {what}, not {_type_name(v)}")


def _uint(v, where: str, top: int = MAX_UINT) -> int:
    _expect(type(v) is int and 0 <= v <= top, where, f"a whole number from 0 to {top}", v)
    return v


def _num(v, where: str) -> float:
    _expect(type(v) in (int, float) and math.isfinite(v), where, "a finite number", v)
    return float(v)


def _str(v, where: str, top: int = MAX_NAME) -> str:
    _expect(type(v) is str and len(v) <= top, where, f"a string of at most {top} characters", v)
    return v


def _obj(v, where: str) -> dict:
    _expect(type(v) is dict, where, "an object", v)
    return v


def _list(v, where: str, top: int) -> list:
    _expect(type(v) is list and len(v) <= top, where, f"a list of at most {top} entries", v)
    return v


def _tally(v, where: str, top: int, key=None) -> dict:
    """{name: count}; key(name) converts and checks each name."""
    v = _obj(v, where)
    _expect(len(v) <= top, where, f"an object of at most {top} entries", v)
    out = {}
    for k, n in v.items():
        name = key(k, where) if key else _str(k, f"{where} key")
        out[name] = _uint(n, f"{where} values")
    return out


def _offset(k: str, where: str) -> int:
    _expect(k.isascii() and k.isdigit() and len(k) <= 10, f"{where} key", "a decimal offset", k)
    return int(k)


def _counts(v, where: str) -> dict:
    v = _obj(v, where)
    out = {}
    for k in COUNT_KEYS:
        if v.get(k) is not None:  # null: a cause this kernel cannot see
            out[k] = _uint(v[k], f"{where}.{k}")
    if "aborts" not in out:
        raise _Bad(f"{where}.aborts is missing")
    out["causes"] = _tally(v.get("causes", {}), f"{where}.causes", 64)
    return out


def _preempters(v, where: str) -> list:
    out = []
    for i, e in enumerate(_list(v, where, MAX_LIST)):
        e = _obj(e, f"{where}[{i}]")
        out.append((_uint(e.get("pid"), f"{where}[{i}].pid", 1 << 31), _str(e.get("comm"), f"{where}[{i}].comm"),
                     _uint(e.get("count"), f"{where}[{i}].count")))
    return out


def check_stacks(s: dict) -> tuple:
    """A stacks line: (rows, dropped)."""
    _num(s.get("time"), "time")
    dropped = _uint(s.get("dropped", 0), "dropped")
    rows = []
    for i, e in enumerate(_list(s.get("stacks"), "stacks", MAX_STACKS)):
        where = f"stacks[{i}]"
        e = _obj(e, where)
        frames = tuple(_str(f, f"{where}.frames[]", MAX_TEXT) for f in _list(e.get("frames"), f"{where}.frames",
                                                                             MAX_FRAMES))
        lost = e.get("lost")
        if lost is not None:
            lost = _str(lost, f"{where}.lost", 64)
            _expect(not frames, f"{where}.frames", "empty for a lost stack", e.get("frames"))
        else:
            _expect(bool(frames), f"{where}.frames", "a non-empty list (or lost set)", e.get("frames"))
        rows.append(StackRow(_uint(e.get("pid"), f"{where}.pid", 1 << 31), _str(e.get("comm"), f"{where}.comm"),
                             _str(e.get("section"), f"{where}.section", MAX_TEXT),
                             _uint(e.get("start_ip"), f"{where}.start_ip"), frames,
                             _uint(e.get("count"), f"{where}.count"), lost))
    return rows, dropped


def check_header(h) -> dict:
    h = _obj(h, "the header")
    if h.get("format") != fmt.FORMAT:
        raise _Bad(f"the first line is not an {fmt.FORMAT} header (make one with 'rseqtop record -o FILE')")
    version = _uint(h.get("version"), "version", 1 << 31)
    if version > fmt.VERSION:
        raise _Bad(f"recording format version {version} is newer than this rseqtop reads ({fmt.VERSION}); "
                   "upgrade rseqtop to read it")
    if version < 1:
        raise _Bad(f"recording format version {version} does not exist")
    out = {"version": version, "host": _str(h.get("host", ""), "host"),
           "kernel": _str(h.get("kernel", ""), "kernel"), "started": _num(h.get("started"), "started"),
           "interval_s": _num(h.get("interval_s"), "interval_s"),
           "rseqtop": _str(h.get("rseqtop", ""), "rseqtop"),
           "watching": _str(h.get("watching", ""), "watching", MAX_TEXT),
           "stacks": h.get("stacks", False)}
    _expect(type(out["stacks"]) is bool, "stacks", "true or false", out["stacks"])
    _expect(out["interval_s"] > 0, "interval_s", "positive", out["interval_s"])
    return out


# -- reading -----------------------------------------------------------------------

class _Folder:
    """Folds checked samples into a Recording."""

    def __init__(self, rec: Recording):
        self.rec = rec
        self.live: dict = {}  # pid -> its latest Process
        self.points = 0
        self.prev_time: Optional[float] = None  # of the sample before the one being read

    def _new_series(self, series: Series) -> None:
        """A process or section that first shows up after the first sample
        had none at the sample before: its first interval's rate counts."""
        if self.prev_time is not None:
            self._point(series, self.prev_time, 0)

    def _point(self, series: Series, t: float, total: int) -> None:
        self.points += 1
        if self.points > MAX_POINTS:
            raise _Bad(f"more than {MAX_POINTS:,} series points: record fewer processes (-p) or a longer -d")
        series.add(t, total)

    def sample(self, s: dict) -> None:
        rec = self.rec
        rec.samples += 1
        if rec.samples > MAX_SAMPLES:
            raise _Bad(f"more than {MAX_SAMPLES:,} samples: record a longer -d")
        t = _num(s.get("time"), "time")
        rec.first_time = t if rec.first_time is None else rec.first_time
        rec.last_time = t
        rec.era = _str(s.get("era", ""), "era")
        _counts(_obj(s.get("system", {}), "system").get("totals", {"aborts": 0}), "system.totals")
        me = _obj(s.get("self", {}), "self")
        rec.unavailable_causes = tuple(_str(c, "self.unavailable_causes[]")
                                       for c in _list(me.get("unavailable_causes", []), "self.unavailable_causes", 8))
        for key in ("events_lost", "maps_dropped", "probe_misses"):
            setattr(rec, key, _uint(me.get(key, 0), f"self.{key}"))
        for i, p in enumerate(_list(s.get("processes"), "processes", MAX_LIST)):
            self.process(_obj(p, f"processes[{i}]"), f"processes[{i}]", t)
        self.prev_time = t

    def process(self, p: dict, where: str, t: float) -> None:
        pid = _uint(p.get("pid"), f"{where}.pid", 1 << 31)
        comm = _str(p.get("comm"), f"{where}.comm")
        totals = _counts(p.get("totals"), f"{where}.totals")
        alive = p.get("alive", True)
        _expect(type(alive) is bool, f"{where}.alive", "true or false", alive)
        proc = self.live.get(pid)
        if proc is None or totals["aborts"] < proc.aborts:
            if len(self.rec.processes) >= MAX_PROCESSES:
                raise _Bad(f"more than {MAX_PROCESSES:,} processes")
            proc = Process(pid, 0 if proc is None else proc.incarnation + 1, comm)
            self.live[pid] = proc
            self.rec.processes.append(proc)
            self._new_series(proc.series)
        proc.comm, proc.totals, proc.alive = comm, totals, alive
        self._point(proc.series, t, totals["aborts"])
        for j, s in enumerate(_list(p.get("sections", []), f"{where}.sections", MAX_SECTIONS)):
            self.section(proc, _obj(s, f"{where}.sections[{j}]"), f"{where}.sections[{j}]", t)

    def section(self, proc: Process, s: dict, where: str, t: float) -> None:
        start = _uint(s.get("start_ip"), f"{where}.start_ip")
        sec = proc.sections.get(start)
        if sec is None:
            if len(proc.sections) >= MAX_SECTIONS:
                raise _Bad(f"{where}: more than {MAX_SECTIONS} sections in one process")
            sec = proc.sections[start] = Section(proc.pid, start, "")
            self._new_series(sec.series)
        sec.symbol = _str(s.get("symbol"), f"{where}.symbol", MAX_TEXT)
        sec.aborts = _uint(s.get("aborts"), f"{where}.aborts")
        sec.causes = _tally(s.get("causes", {}), f"{where}.causes", 64)
        sec.offsets = _tally(s.get("interrupted_offsets", {}), f"{where}.interrupted_offsets", MAX_OFFSETS,
                             key=_offset)
        if s.get("preempters") is not None:  # optional: recordings that have them
            sec.preempters = _preempters(s["preempters"], f"{where}.preempters")
        self._point(sec.series, t, sec.aborts)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse(raw: bytes):
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def read(path) -> Recording:
    """The recording at path, checked and folded; RecordingError if it is not one."""
    shown = printable(str(path))
    try:
        f = open(path, "rb")
    except OSError as err:
        raise RecordingError(f"cannot read {shown}: {err.strerror}") from None
    with f:
        try:
            return _read(f, shown)
        except _Bad as err:
            raise RecordingError(f"{shown}: {err}") from None
        except OSError as err:
            raise RecordingError(f"cannot read {shown}: {err.strerror}") from None


def _read(f, shown: str) -> Recording:
    rec: Optional[Recording] = None
    folder = None
    size = 0
    line_no = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            break
        line_no += 1
        size += len(raw)
        if size > MAX_FILE_BYTES:
            raise _Bad(f"larger than {MAX_FILE_BYTES >> 20} MiB")
        if len(raw) > MAX_LINE_BYTES:
            raise _Bad(f"line {line_no} is longer than {MAX_LINE_BYTES >> 20} MiB (not written by rseqtop record)")
        if not raw.endswith(b"\n"):
            raise _Bad(f"line {line_no} is cut short (no end of line): the recording was interrupted or truncated")
        if not raw.strip():
            continue
        try:
            obj = _parse(raw)
        except (ValueError, RecursionError):
            # JSONDecodeError, bad UTF-8, NaN, a 5000-digit number, nesting too deep
            raise _Bad(f"line {line_no} is not valid JSON") from None
        try:
            if rec is None:
                rec = Recording(Path(shown).name, check_header(obj))
                folder = _Folder(rec)
                continue
            obj = _obj(obj, "the line")
            kind = obj.get("kind")
            if kind == fmt.SAMPLE:
                folder.sample(obj)
            elif kind == fmt.STACKS:
                rec.stack_rows, rec.stacks_dropped = check_stacks(obj)  # totals: the last line is the file's
                rec.stack_lines += 1
            else:
                kind = _str(kind, "kind", 64)
                rec.skipped_kinds[kind] = rec.skipped_kinds.get(kind, 0) + 1
        except _Bad as err:
            raise _Bad(f"line {line_no}: {err}") from None
    if rec is None:
        raise _Bad(f"empty: not an {fmt.FORMAT} (make one with 'rseqtop record -o FILE')")
    if not rec.samples:
        raise _Bad("has a header but no samples (was rseqtop record stopped before its first interval?)")
    return rec
