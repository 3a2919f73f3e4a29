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

import functools
import signal
import struct
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rseqtop import workload  # noqa: E402
from rseqtop.symbols import elf as elfsym  # noqa: E402

PARSE_BUDGET = 1.0      # the parser's own deadline per input (ElfTimeout is allowed)
HANG_LIMIT = 20         # a hard watchdog: an input still running after this is a hang
EXAMPLES = 2500         # hypothesis examples for the mixed-mutation test (CI sized)

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
PHDR = struct.Struct("<IIQQQQQQ")
SYM = struct.Struct("<IBBHQQ")


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

# ---------------------------------------------------------------- seeds

def synthetic_elf(syms=None, strtab=None, symtab_copies=1) -> bytes:
    """A tiny valid ELF64 with .text, .symtab, .strtab and .shstrtab (or the
    given symbols and string table, the symbol table's header repeated)."""
    text_off, text_addr = 0x80, 0x401080
    text = b"\xc3" * 64
    if strtab is None:
        strtab = b"\0f1\0f2\0data\0nt\0ifn\0"
    syms = syms if syms is not None else [
        SYM.pack(0, 0, 0, 0, 0, 0),
        SYM.pack(1, 0x12, 0, 1, text_addr, 16),          # f1: GLOBAL FUNC, 16 bytes
        SYM.pack(4, 0x12, 0, 1, text_addr + 32, 0),      # f2: FUNC, no size
        SYM.pack(7, 0x11, 0, 1, text_addr + 16, 8),      # data: OBJECT (ignored)
        SYM.pack(12, 0x10, 0, 1, text_addr + 48, 8),     # nt: NOTYPE with a size
        SYM.pack(15, 0x1A, 0, 1, text_addr + 56, 8),     # ifn: GNU_IFUNC
    ]
    symtab = b"".join(syms)
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    body = bytearray(text_off)
    body += text
    sym_off = len(body)
    body += symtab
    str_off = len(body)
    body += strtab
    shstr_off = len(body)
    body += shstrtab
    while len(body) % 8:
        body += b"\0"
    shoff = len(body)
    shdrs = [
        SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        SHDR.pack(1, 1, 6, text_addr, text_off, len(text), 0, 0, 16, 0),
        SHDR.pack(7, 2, 0, 0, sym_off, len(symtab), 3, 1, 8, 24),
        SHDR.pack(15, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
        SHDR.pack(23, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0),
    ] + [SHDR.pack(7, 2, 0, 0, sym_off, len(symtab), 3, 1, 8, 24)] * (symtab_copies - 1)
    for s in shdrs:
        body += s
    phdr = PHDR.pack(1, 5, 0, 0x401000, 0x401000, len(body), len(body), 0x1000)
    body[64:64 + PHDR.size] = phdr
    body[0:64] = EHDR.pack(b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1, text_addr,
                           64, shoff, 0, 64, 56, 1, 64, len(shdrs), 4)
    return bytes(body)


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    fields: tuple       # (offset, width, label) of every header field worth overwriting
    boundaries: tuple   # file offsets where a structure starts or ends
    sections: tuple     # (shdr file offset, sh_type, sh_offset, sh_size)


def layout(name: str, data: bytes) -> Seed:
    fields = []
    bounds = {0, 4, 16, 64, len(data)}
    ehdr_fields = [(24, 8, "e_entry"), (32, 8, "e_phoff"), (40, 8, "e_shoff"),
                   (52, 2, "e_ehsize"), (54, 2, "e_phentsize"), (56, 2, "e_phnum"),
                   (58, 2, "e_shentsize"), (60, 2, "e_shnum"), (62, 2, "e_shstrndx"),
                   (4, 1, "ei_class"), (5, 1, "ei_data"), (20, 4, "e_version")]
    fields += ehdr_fields
    (_i, _t, _m, _v, _e, phoff, shoff, _f, _eh, phentsize, phnum, shentsize, shnum,
     _x) = EHDR.unpack_from(data)
    bounds |= {phoff, phoff + phnum * phentsize, shoff, shoff + shnum * shentsize}
    for k in range(phnum):
        base = phoff + k * phentsize
        bounds.add(base)
        for off, width, label in [(0, 4, "p_type"), (8, 8, "p_offset"), (16, 8, "p_vaddr"),
                                  (32, 8, "p_filesz"), (40, 8, "p_memsz")]:
            fields.append((base + off, width, f"phdr{k}.{label}"))
    sections = []
    for k in range(shnum):
        base = shoff + k * shentsize
        bounds.add(base)
        _n, sh_type, _fl, _addr, sh_offset, sh_size, sh_link, _inf, _al, sh_entsize = \
            SHDR.unpack_from(data, base)
        sections.append((base, sh_type, sh_offset, sh_size))
        if sh_type != 8:  # NOBITS occupies no file bytes
            bounds |= {sh_offset, sh_offset + sh_size}
        for off, width, label in [(4, 4, "sh_type"), (16, 8, "sh_addr"), (24, 8, "sh_offset"),
                                  (32, 8, "sh_size"), (40, 4, "sh_link"), (56, 8, "sh_entsize")]:
            fields.append((base + off, width, f"shdr{k}.{label}"))
        if sh_type in (2, 11) and sh_entsize == SYM.size:
            count = sh_size // SYM.size
            for j in list(range(min(count, 8))) + list(range(max(8, count - 3), count)):
                sb = sh_offset + j * SYM.size
                bounds.add(sb)
                for off, width, label in [(0, 4, "st_name"), (4, 1, "st_info"), (6, 2, "st_shndx"),
                                          (8, 8, "st_value"), (16, 8, "st_size")]:
                    fields.append((sb + off, width, f"sym{k}.{j}.{label}"))
    bounds = tuple(sorted(b for b in bounds if 0 <= b <= len(data)))
    return Seed(name, data, tuple(fields), bounds, tuple(sections))


@functools.lru_cache(maxsize=None)
def seeds() -> tuple:
    out = [layout("synthetic", synthetic_elf())]
    for name, path in [("workload", workload.build()), ("true", Path("/bin/true")),
                       ("libdl", Path("/lib/x86_64-linux-gnu/libdl.so.2"))]:
        if Path(path).is_file():
            out.append(layout(name, Path(path).read_bytes()))
    assert len(out) >= 3, "too few seed binaries"
    return tuple(out)


def extremes(width: int, seed: Seed) -> list:
    top = (1 << (8 * width)) - 1
    vals = {0, 1, 2, 3, 8, 24, 56, 64, 0xFF, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF,
            1 << 32, 1 << 62, 1 << 63, top, top - 1, top - 23, len(seed.data), len(seed.data) - 1,
            len(seed.data) + 1, len(seed.data) - 24, len(seed.data) - 64}
    return sorted(v & top for v in vals)


# ---------------------------------------------------------------- mutations

def put(data: bytearray, offset: int, width: int, value: int) -> None:
    if 0 <= offset and offset + width <= len(data):
        data[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


@st.composite
def mutated(draw):
    seed = draw(st.sampled_from(seeds()))
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "field", "flip", "truncate", "nonul",
                                     "overlap", "splice"]))
        if kind == "field":
            off, width, _label = draw(st.sampled_from(seed.fields))
            value = draw(st.one_of(st.sampled_from(extremes(width, seed)),
                                   st.integers(0, (1 << (8 * width)) - 1)))
            put(data, off, width, value)
        elif kind == "flip" and data:
            for _ in range(draw(st.integers(1, 16))):
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            at = draw(st.sampled_from(seed.boundaries)) + draw(st.integers(-2, 2))
            del data[max(0, at):]
        elif kind == "nonul":
            strtabs = [s for s in seed.sections if s[1] == 3 and s[3]]
            if strtabs:
                _base, _t, off, size = draw(st.sampled_from(strtabs))
                data[off:off + size] = b"A" * len(data[off:off + size])
        elif kind == "overlap" and len(seed.sections) > 1:
            a = draw(st.sampled_from(seed.sections))
            b = draw(st.sampled_from(seed.sections))
            put(data, a[0] + 24, 8, b[2])                      # A's data at B's offset
            if draw(st.booleans()):
                put(data, a[0] + 32, 8, b[3] + draw(st.integers(-8, 8)))
            if draw(st.booleans()):
                put(data, a[0] + 40, 4, (b[0] - seed.sections[0][0]) // 64)  # link A to B
        elif kind == "splice" and data:
            pos = draw(st.integers(0, len(data)))
            if draw(st.booleans()):
                data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
            else:
                del data[pos:pos + draw(st.integers(1, 256))]
    return bytes(data)


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
