"""Fuzz the bounded disassembly / DWARF worker behind `rseqtop annotate`.

pyelftools and capstone are not written for hostile input, so they run in a
child process with RLIMIT_AS / RLIMIT_CPU and a wall-clock timeout
(rseqtop.symbols.disasm_worker, started by rseqtop.symbols.annotate). The
promise checked here: whatever the file, `annotate_fd` returns a listing or
raises AnnotateError with a one-line message (never another exception,
never a traceback, never a hang past the timeout).

Inputs: the ELF mutations of tests/test_fuzz_elf.py (seeds: the workload
built with -g, true(1), a glibc stub library, a synthetic ELF), plus byte
flips and field overwrites aimed at the workload's DWARF sections
(.debug_line, .debug_info, .debug_abbrev, .debug_aranges, .debug_str...).
Every example starts a child, so CI runs a few dozen;
RSEQTOP_FUZZ_ANNOTATE_EXAMPLES=2000 for a longer run.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support import descriptor, file_offset, mutated, synthetic_elf  # noqa: E402

from rseqtop import workload  # noqa: E402
from rseqtop.symbols import disasm_worker  # noqa: E402
from rseqtop.symbols.annotate import AnnotateError, Listing, annotate_fd  # noqa: E402

EXAMPLES = int(os.environ.get("RSEQTOP_FUZZ_ANNOTATE_EXAMPLES", "40"))
TIMEOUT = 30.0  # the child's wall clock (its CPU limit is disasm_worker.CPU_LIMIT)


@functools.lru_cache(maxsize=None)
def workload_layout() -> tuple:
    """(bytes, (start, length, abort) file offsets of the delay section, DWARF section ranges)."""
    from elftools.elf.elffile import ELFFile

    binary = workload.build()
    data = binary.read_bytes()
    start, length, abort = descriptor(binary, "delay")
    with open(binary, "rb") as f:
        elf = ELFFile(f)
        dwarf = tuple((s["sh_offset"], s["sh_size"]) for s in elf.iter_sections()
                      if s.name.startswith(".debug_") and s["sh_type"] != "SHT_NOBITS" and s["sh_size"])
    return data, (file_offset(binary, start), length, file_offset(binary, abort)), dwarf


def run(data: bytes, where=None) -> object:
    """annotate_fd on DATA; a Listing or the AnnotateError. Anything else fails."""
    start, length, abort = where or (0x80, 16, 0x90)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        began = time.monotonic()
        try:
            out = annotate_fd(f.fileno(), start, length, abort, "/fuzz/binary", timeout=TIMEOUT)
        except AnnotateError as err:
            msg = str(err)
            assert msg and "\n" not in msg and "Traceback" not in msg, msg
            out = err
        assert time.monotonic() - began < TIMEOUT + 10
    if isinstance(out, Listing):
        for insn in out.section + out.abort + out.handler:
            assert insn.size > 0 and isinstance(insn.mnemonic, str) and isinstance(insn.line, int)
    return out


@st.composite
def dwarf_mutated(draw):
    """The workload's bytes with its DWARF sections damaged."""
    data, where, dwarf = workload_layout()
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        off, size = draw(st.sampled_from(dwarf))
        pos = off + draw(st.integers(0, size - 1))
        kind = draw(st.sampled_from(["flip", "flip", "u32", "u64", "zero_run"]))
        if kind == "flip":
            buf[pos] ^= draw(st.integers(1, 255))
        elif kind in ("u32", "u64"):
            width = 4 if kind == "u32" else 8
            value = draw(st.sampled_from([0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF,
                                          (1 << 64) - 1, len(data), size]))
            buf[pos:pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")[:len(buf) - pos]
        else:
            end = min(off + size, pos + draw(st.integers(1, 64)))
            buf[pos:end] = b"\0" * (end - pos)
    return bytes(buf), where


FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=TIMEOUT + 20), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_seeds_annotate():
    data, where, _dwarf = workload_layout()
    listing = run(data, where)
    assert isinstance(listing, Listing) and listing.section and listing.section[0].line > 0
    assert isinstance(run(synthetic_elf()), Listing)  # no line table: lines unknown, still a listing


@pytest.mark.slow  # 6-15 s each: run by the whole suite, not by scripts/test --unit
@FUZZ
@given(dwarf_mutated())
def test_fuzz_damaged_dwarf(case):
    data, where = case
    run(data, where)


@pytest.mark.slow  # 6-15 s each: run by the whole suite, not by scripts/test --unit
@FUZZ
@given(mutated(), st.booleans())
def test_fuzz_mutated_elf(data, at_delay):
    _data, where, _dwarf = workload_layout()
    run(data, where if at_delay else None)


@pytest.mark.parametrize("where", [(0, 0, None), (0, -5, None), (2 ** 62, 16, None), (0x80, 2 ** 40, 2 ** 63),
                                   (-1, 16, -1)])
def test_hostile_offsets_and_lengths(where):
    data, _where, _dwarf = workload_layout()
    out = run(data, where)
    if isinstance(out, Listing):
        assert out.truncated == (where[1] > disasm_worker.MAX_SECTION)
        assert sum(i.size for i in out.section) <= disasm_worker.MAX_SECTION + 16


def test_truncated_and_empty_files():
    data, where, dwarf = workload_layout()
    for cut in (0, 4, 64, where[0] + 3, dwarf[0][0] + 10, len(data) - 1):
        run(data[:cut], where)


def test_the_child_limits_itself():
    """The worker's own address-space and CPU limits (set before it imports
    pyelftools or capstone) are in force in the child."""
    code = ("from rseqtop.symbols import disasm_worker as w; w._limit_self(); "
            "print(open('/proc/self/limits').read())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    rows = {line[:26].strip(): line[26:].split() for line in out.splitlines()[1:]}
    assert rows["Max address space"][0] == str(disasm_worker.AS_LIMIT)
    assert rows["Max cpu time"][0] == str(disasm_worker.CPU_LIMIT)
    assert rows["Max core file size"][0] == "0"


def test_a_child_past_its_timeout_is_one_line_error():
    data, where, _dwarf = workload_layout()
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        with pytest.raises(AnnotateError, match="took over") as err:
            annotate_fd(f.fileno(), *where, "/fuzz/binary", timeout=0.001)
    assert "\n" not in str(err.value)


@pytest.mark.slow  # 6-15 s each: run by the whole suite, not by scripts/test --unit
def test_a_memory_bomb_is_stopped_by_the_address_space_limit():
    """A compressed .debug_line that inflates past RLIMIT_AS ends in a one-line error."""
    import zlib

    from elftools.elf.elffile import ELFFile

    data, where, _dwarf = workload_layout()
    with open(workload.build(), "rb") as f:
        elf = ELFFile(f)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".debug_line")
        hdr_off = elf["e_shoff"] + elf["e_shentsize"] * index  # its section header
        off, size = elf.get_section(index)["sh_offset"], elf.get_section(index)["sh_size"]
    # 2 GiB of zeros compressed, as an ELF compressed section (Elf64_Chdr: type 1 = zlib)
    bomb_size = 2 << 30
    comp = zlib.compressobj(1)
    chunk = b"\0" * (1 << 20)
    body = b"".join(comp.compress(chunk) for _ in range(bomb_size >> 20)) + comp.flush()
    chdr = (1).to_bytes(4, "little") + bytes(4) + bomb_size.to_bytes(8, "little") + (1).to_bytes(8, "little")
    payload = chdr + body
    buf = bytearray(data) + payload
    new_off = len(data)
    flags = int.from_bytes(buf[hdr_off + 8:hdr_off + 16], "little") | 0x800  # SHF_COMPRESSED
    buf[hdr_off + 8:hdr_off + 16] = flags.to_bytes(8, "little")
    buf[hdr_off + 24:hdr_off + 32] = new_off.to_bytes(8, "little")
    buf[hdr_off + 32:hdr_off + 40] = len(payload).to_bytes(8, "little")
    assert size and off  # the seed has a line table to replace
    out = run(bytes(buf), where)
    assert isinstance(out, AnnotateError), out
    # stopped by the limit (MemoryError in the child, or the child killed), not rejected for another reason
    assert f"{disasm_worker.AS_LIMIT >> 20} MiB" in str(out) or "worker failed" in str(out), str(out)
