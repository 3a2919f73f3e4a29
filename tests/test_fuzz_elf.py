"""Fuzz rseqtop.symbols.elf: crafted or truncated ELF files must neither crash nor
hang the reader. Every input either parses or raises ElfError (never
ElfInternalError, which wraps an unexpected exception, and never anything
else), within a time limit per input.

Seeds are real small binaries (the bundled workload, true(1), a small glibc
stub library) and a synthetic ELF built here. Mutations: truncation at every
structural boundary, random byte flips, header / program header / section
header / symbol fields overwritten with extreme values, string tables
without NUL, sections pointed at each other, bytes inserted or removed.

For long runs: `python benchmarks/fuzz_elf.py --seconds 600`.
"""

from __future__ import annotations

import signal
import struct
import time
from datetime import timedelta

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support import (  # noqa: E402
    SYM,
    extremes,
    mutated,
    put,
    seeds,
    synthetic_elf,
)

from rseqtop.symbols import elf as elfsym  # noqa: E402

PARSE_BUDGET = 1.0      # the parser's own deadline per input (ElfTimeout is allowed)
HANG_LIMIT = 20         # a hard watchdog: an input still running after this is a hang
EXAMPLES = 2500         # hypothesis examples for the mixed-mutation test (CI sized)



class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"input still running after {HANG_LIMIT} s")


def run_one(data: bytes) -> str:
    """Parse DATA under a watchdog; exercise the result. Returns the outcome.
    Anything but a result or a plain ElfError fails the calling test."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_LIMIT)
    try:
        try:
            syms = elfsym.parse_bytes(data, deadline=time.monotonic() + PARSE_BUDGET)
        except elfsym.ElfInternalError as err:
            raise AssertionError(f"reader bug: {err}") from err.__cause__
        except elfsym.ElfTimeout:
            return "timeout"  # the parser's own deadline (a loaded machine): allowed
        except elfsym.ElfError:
            return "rejected"
        for name, addr, end in syms.symbols()[:64]:
            assert isinstance(name, str) and name and end > addr
            hit = syms.lookup(addr)
            assert hit is not None and hit[1] >= 0
        for probe in (0, 1, 0x1000, 0x401000, 2 ** 63, 2 ** 64 - 1, 2 ** 64, -5):
            syms.lookup(probe)
            syms.file_offset_to_vaddr(probe)
        for seg in syms.segments:
            syms.file_offset_to_vaddr(seg.offset)
        rseq_handlers(data)
        return "parsed"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def rseq_handlers(data: bytes) -> None:
    """The rseq section reader (--uprobes) on the same input: ElfError or
    handlers whose signature is really there."""
    try:
        handlers = elfsym.rseq_handlers_bytes(data, RSEQ_SIG, deadline=time.monotonic() + PARSE_BUDGET)
    except elfsym.ElfInternalError as err:
        raise AssertionError(f"reader bug: {err}") from err.__cause__
    except elfsym.ElfError:
        return
    for h in handlers:
        assert 4 <= h.file_offset <= len(data) and data[h.file_offset - 4:h.file_offset] == struct.pack("<I", RSEQ_SIG)


RSEQ_SIG = 0x53053053

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),   # generous on a shared machine; HANG_LIMIT catches real hangs
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------- tests

def test_seeds_parse_and_synthetic_symbols():
    for seed in seeds():
        assert run_one(seed.data) == "parsed", seed.name
    syms = elfsym.parse_bytes(synthetic_elf())
    assert syms.lookup(0x401080) == ("f1", 0)
    assert syms.lookup(0x40108F) == ("f1", 15)
    assert syms.lookup(0x401090) is None            # an OBJECT is not a function
    assert syms.lookup(0x4010A5) == ("f2", 5)       # unsized: up to the next symbol
    assert syms.lookup(0x4010B3) == ("nt", 3)
    assert syms.lookup(0x4010B9) == ("ifn", 1)
    assert syms.lookup(0x4010C0) is None
    assert syms.file_offset_to_vaddr(0x80) == 0x401080


def test_truncation_at_every_boundary():
    n = 0
    for seed in seeds():
        for b in seed.boundaries:
            for at in (b - 1, b, b + 1):
                if 0 <= at < len(seed.data):
                    run_one(seed.data[:at])
                    n += 1
    print(f"{n} truncated inputs")


@pytest.mark.slow  # 6-15 s each: run by the whole suite, not by scripts/test --unit
def test_every_field_with_every_extreme_value():
    n = 0
    for seed in seeds():
        fields = seed.fields if seed.name == "synthetic" else [
            f for f in seed.fields if not f[2].startswith("phdr") or f[2].startswith("phdr0")]
        for off, width, _label in fields:
            for value in extremes(width, seed):
                data = bytearray(seed.data)
                put(data, off, width, value)
                run_one(bytes(data))
                n += 1
    print(f"{n} single-field inputs")


@pytest.mark.slow  # 6-15 s each: run by the whole suite, not by scripts/test --unit
@FUZZ_SETTINGS
@given(mutated())
def test_fuzz_mutated_elf(data):
    run_one(data)


@settings(max_examples=300, deadline=timedelta(seconds=5), database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_with_elf_header(tail):
    run_one(b"\x7fELF\x02\x01\x01" + tail)


@settings(max_examples=150, deadline=timedelta(seconds=5), database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_fuzz_through_a_file(tmp_path_factory, data):
    """The fd path (positioned reads of a real file) behaves like the bytes path."""
    path = tmp_path_factory.mktemp("elf") / "f"
    path.write_bytes(data)
    try:
        via_file = elfsym.load(str(path), deadline=time.monotonic() + 5)
    except elfsym.ElfInternalError:
        raise
    except elfsym.ElfError:
        via_file = None
    try:
        via_bytes = elfsym.parse_bytes(data, deadline=time.monotonic() + 5)
    except elfsym.ElfInternalError:
        raise
    except elfsym.ElfError:
        via_bytes = None
    if via_file is None or via_bytes is None:
        assert via_file is via_bytes
    else:
        assert via_file.symbols() == via_bytes.symbols() and via_file.segments == via_bytes.segments


# ---------------------------------------------------------------- resource caps

def test_many_distinct_long_names_hit_the_name_budget():
    """Symbols pointing at every offset of a string table without NUL would
    each decode to a max-length name: the total is capped, not allocated."""
    strtab = b"A" * 200_000
    syms = [SYM.pack(0, 0, 0, 0, 0, 0)] + [SYM.pack(k, 0x12, 0, 1, 0x401080 + k, 1)
                                           for k in range(1, 20_000)]
    data = synthetic_elf(syms, strtab)
    with pytest.raises(elfsym.ElfError, match="names over"):
        elfsym.parse_bytes(data, elfsym.Limits(max_name_bytes=1 << 20))
    parsed = elfsym.parse_bytes(data, elfsym.Limits(max_name=8))
    assert len(parsed) == 19_999 and all(len(n) == 11 for n, _a, _e in parsed.symbols())
    assert run_one(data) in ("parsed", "rejected")


def test_many_symbol_tables_are_refused():
    data = synthetic_elf(symtab_copies=500)
    with pytest.raises(elfsym.ElfError, match="symbol tables"):
        elfsym.parse_bytes(data)
    assert len(elfsym.parse_bytes(synthetic_elf(symtab_copies=2))) == 4


def test_symbol_count_cap_keeps_the_first_symbols():
    syms = [SYM.pack(0, 0, 0, 0, 0, 0)] + [SYM.pack(1, 0x12, 0, 1, 0x401080 + k, 1)
                                           for k in range(1, 5000)]
    parsed = elfsym.parse_bytes(synthetic_elf(syms), elfsym.Limits(max_symbols=100))
    assert len(parsed) == 99  # 100 entries read, the first one is the null symbol
