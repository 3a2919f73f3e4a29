"""The ELF reader and the symbolizer against real binaries, nm/readelf and
live processes (the bundled workload, processes that exit mid-resolution,
crafted files mapped by a live process)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rseqtop import workload
from rseqtop.symbols import elf as elfsym
from rseqtop.symbols.symbolizer import ElfResolver, Symbolizer, find_mapping, format_symbol, parse_maps_line

LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
TRUE = Path(shutil.which("true") or "/bin/true")
OPS = ("rseq_op_counter", "rseq_op_spinlock_lock", "rseq_op_push", "rseq_op_pop", "rseq_op_delay")

needs_binutils = pytest.mark.skipif(not (shutil.which("nm") and shutil.which("readelf")),
                                    reason="needs binutils (nm, readelf)")


@pytest.fixture(scope="module")
def workload_bin() -> Path:
    return workload.build()


def nm_functions(path: Path, dynamic: bool = False) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the sized, defined text symbols nm lists."""
    args = ["nm", "-S", "--defined-only"] + (["-D"] if dynamic else []) + [str(path)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    funcs = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in "TtWi" and int(f[0], 16) and int(f[1], 16):
            funcs.setdefault(f[3].split("@")[0], (int(f[0], 16), int(f[1], 16)))
    return funcs


def readelf_loads(path: Path) -> list[tuple[int, int, int, int]]:
    """(offset, vaddr, filesz, memsz) of each PT_LOAD, from readelf -lW."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    loads = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            loads.append((int(f[1], 16), int(f[2], 16), int(f[4], 16), int(f[5], 16)))
    return loads


def sample(items, n=12):
    items = sorted(items)
    step = max(1, len(items) // n)
    return items[::step][:n]


# ---------------------------------------------------------------- elfsym on real files

@needs_binutils
@pytest.mark.parametrize("which", ["workload", "true", "libc"])
def test_segments_match_readelf(which, workload_bin):
    path = {"workload": workload_bin, "true": TRUE, "libc": LIBC}[which]
    if not path.exists():
        pytest.skip(f"{path} missing")
    syms = elfsym.load(str(path))
    got = [(s.offset, s.vaddr, s.filesz, s.memsz) for s in syms.segments]
    assert got == readelf_loads(path)


@needs_binutils
def test_workload_symbols_match_nm(workload_bin):
    syms = elfsym.load(str(workload_bin))
    funcs = nm_functions(workload_bin)
    for op in OPS:
        assert op in funcs, op
    for name in set(OPS) | set(sample(funcs)):
        addr, size = funcs[name]
        assert syms.lookup(addr) == (name, 0)
        assert syms.lookup(addr + size - 1) == (name, size - 1)


@needs_binutils
def test_libc_dynamic_symbols_match_nm():
    if not LIBC.exists():
        pytest.skip(f"{LIBC} missing")
    syms = elfsym.load(str(LIBC))
    funcs = nm_functions(LIBC, dynamic=True)
    by_addr = {}
    for name, (addr, _size) in funcs.items():
        by_addr.setdefault(addr, set()).add(name)
    for name in ["getpid", "malloc", "memcpy", "sched_getcpu"] + sample(funcs):
        if name not in funcs:
            continue
        addr, size = funcs[name]
        got = syms.lookup(addr + size // 2)
        assert got is not None, name
        # aliases (getpid / __getpid) share an address: any of them is right
        assert got[0] in by_addr[addr] and got[1] == size // 2, (name, got)


@needs_binutils
def test_stripped_binary_parses():
    if not TRUE.exists():
        pytest.skip("no true(1)")
    syms = elfsym.load(str(TRUE))
    assert syms.segments
    for name, (addr, _size) in nm_functions(TRUE, dynamic=True).items():
        assert syms.lookup(addr) == (name, 0)
    # a text address maps to a virtual address inside an executable segment
    text = next(s for s in syms.segments if s.flags & 1)
    assert syms.file_offset_to_vaddr(text.offset + 4) == text.vaddr + 4


def test_file_offset_to_vaddr_uses_pt_load(workload_bin):
    syms = elfsym.load(str(workload_bin))
    for seg in syms.segments:
        if seg.filesz:
            assert syms.file_offset_to_vaddr(seg.offset) == seg.vaddr
            assert syms.file_offset_to_vaddr(seg.offset + seg.filesz - 1) == seg.vaddr + seg.filesz - 1
    assert syms.file_offset_to_vaddr(10 ** 12) is None
    assert syms.lookup(-1) is None and syms.lookup(2 ** 70) is None and syms.lookup(0) is None


def _ident(cls: int, data: int) -> bytes:
    return b"\x7fELF" + bytes([cls, data, 1]) + bytes(9)


@pytest.mark.parametrize("blob, message", [
    (b"", "too small"),
    (b"#!/bin/sh\necho hi\n" + bytes(64), "not an ELF"),
    (_ident(1, 1) + bytes(48), "class"),                     # ELF32
    (_ident(2, 2) + bytes(48), "encoding"),                  # big-endian
    (_ident(2, 1)[:6] + b"\x02" + bytes(57), "version"),
    (b"\x7fELF", "too small"),
])
def test_other_formats_are_rejected_cleanly(blob, message):
    with pytest.raises(elfsym.ElfError, match=message):
        elfsym.parse_bytes(blob)


def test_minimal_header_without_tables():
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", _ident(2, 1), 3, 62, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    syms = elfsym.parse_bytes(ehdr)
    assert len(syms) == 0 and syms.segments == () and syms.lookup(0x1000) is None


def test_oversized_file_is_refused_without_reading(tmp_path, monkeypatch, workload_bin):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.write(workload_bin.read_bytes()[:64])
        f.truncate((1 << 30) + 1)  # sparse
    reads = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda *a: reads.append(a) or real(*a))
    with pytest.raises(elfsym.ElfError, match="limit"):
        elfsym.load(str(big))
    assert reads == []
    small = elfsym.Limits(max_file_size=1000)
    with pytest.raises(elfsym.ElfError, match="limit"):
        elfsym.load(str(workload_bin), small)
    with pytest.raises(elfsym.ElfError, match="limit"):
        elfsym.parse_bytes(workload_bin.read_bytes(), small)


def test_fifo_and_directories_are_not_opened_for_reading(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(elfsym.ElfError, match="regular"):
        elfsym.load(str(fifo))  # would block forever without O_NONBLOCK
    with pytest.raises(elfsym.ElfError):
        elfsym.load(str(tmp_path))
    with pytest.raises(elfsym.ElfError, match="cannot open"):
        elfsym.load(str(tmp_path / "missing"))


def test_symbol_caps(workload_bin):
    data = workload_bin.read_bytes()
    few = elfsym.parse_bytes(data, elfsym.Limits(max_symbols=3))
    assert len(few) <= 3
    short = elfsym.parse_bytes(data, elfsym.Limits(max_name=4))
    assert all(len(name) <= 4 + len("...") for name, _a, _e in short.symbols())
    assert any(name.endswith("...") for name, _a, _e in short.symbols())


def test_deadline_gives_timeout(workload_bin):
    with pytest.raises(elfsym.ElfTimeout):
        elfsym.parse_bytes(workload_bin.read_bytes(), deadline=time.monotonic() - 1)


def test_truncated_while_reading_is_an_elf_error(tmp_path, workload_bin, monkeypatch):
    """A file shrinking under us gives a short read, not a SIGBUS (no mmap)."""
    path = tmp_path / "shrinks"
    path.write_bytes(workload_bin.read_bytes())
    real = os.pread
    state = {"n": 0}

    def pread(fd, n, off):
        state["n"] += 1
        if state["n"] == 3:
            os.truncate(path, 100)
        return real(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    with pytest.raises(elfsym.ElfError, match="short read|past the end"):
        elfsym.load(str(path))


# ---------------------------------------------------------------- maps parsing

def test_parse_maps_line():
    m = parse_maps_line(b"7f12a000-7f12b000 r-xp 00002000 fd:01 1234   /usr/lib/my lib.so (deleted)\n")
    assert (m.start, m.end, m.offset, m.dev, m.inode) == (0x7f12a000, 0x7f12b000, 0x2000, "fd:01", 1234)
    assert m.path == "/usr/lib/my lib.so (deleted)" and m.start_text == "7f12a000"
    anon = parse_maps_line(b"7ffd1000-7ffd2000 rw-p 00000000 00:00 0 \n")
    assert anon.path == ""
    assert parse_maps_line(b"garbage\n") is None
    assert parse_maps_line(b"zz-10 r-xp 0 00:00 0\n") is None


def test_format_symbol():
    assert format_symbol(0x10, None) == "0x10"
    assert format_symbol(0x10, (None, 0x20, "/a/b/bin")) == "bin+0x20"
    assert format_symbol(0x10, ("f", 4, "/a/b/bin")) == "bin!f+0x4"


# ---------------------------------------------------------------- live processes

def load_base(pid: int, path: Path) -> int:
    """Load bias of PATH in PID: the start of its mapping at file offset 0."""
    real = os.path.realpath(path)
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            m = parse_maps_line(line.encode())
            if m and m.offset == 0 and m.path and os.path.realpath(m.path) == real:
                return m.start
    raise AssertionError(f"{path} not mapped in {pid}")


@pytest.fixture
def running_workload(workload_bin):
    proc = subprocess.Popen([str(workload_bin), "--duration", "30", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until libc is mapped
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            if "libc.so" in maps:
                break
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@needs_binutils
def test_live_workload_sites_resolve(running_workload, workload_bin):
    pid = running_workload.pid
    base = load_base(pid, workload_bin)
    funcs = nm_functions(workload_bin)
    sym = Symbolizer()
    for op in OPS:
        addr = base + funcs[op][0] + 0x14
        assert sym(pid, addr) == f"{workload_bin.name}!{op}+0x14"
    # libc through .dynsym
    libc_path = next(m.split()[-1] for m in Path(f"/proc/{pid}/maps").read_text().splitlines()
                     if "libc.so" in m)
    libc_funcs = nm_functions(Path(libc_path), dynamic=True)
    base_libc = load_base(pid, Path(libc_path))
    got = sym(pid, base_libc + libc_funcs["getpid"][0])
    assert re.fullmatch(r"libc\.so\.6!(__)?getpid\+0x0", got), got
    assert sym(pid, base_libc + libc_funcs["malloc"][0] + 3).endswith("malloc+0x3")
    # an unmapped address of a live process: hex, and not cached (may map later)
    assert sym(pid, 0x10) == "0x10"
    assert (pid, 0x10) not in sym._cache
    sym.forget(pid)
    assert not [k for k in sym._cache if k[0] == pid]


@needs_binutils
def test_same_file_is_parsed_once(running_workload, workload_bin):
    pid = running_workload.pid
    base = load_base(pid, workload_bin)
    funcs = nm_functions(workload_bin)
    res = ElfResolver()
    for op in OPS:
        name, off, module = res(pid, base + funcs[op][0] + 1)
        assert (name, off) == (op, 1) and os.path.basename(module) == workload_bin.name
    assert res.parses == 1
    # same binary, another process: same file identity, still one parse
    other = subprocess.Popen([str(workload_bin), "--duration", "30", "--threads", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        obase = load_base(other.pid, workload_bin)
        assert res(other.pid, obase + funcs["rseq_op_pop"][0])[:2] == ("rseq_op_pop", 0)
        assert res.parses == 1
    finally:
        other.kill()
        other.wait()


@needs_binutils
def test_a_section_first_seen_after_exit_is_named_from_its_files_mapping(workload_bin):
    """A section that first aborts just before its process exits reaches the
    symbolizer after the exit: it is named from the mapping that named an
    earlier section of the same process, until the process is forgotten."""
    funcs = nm_functions(workload_bin)
    proc = subprocess.Popen([str(workload_bin), "--duration", "30", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)
        base = load_base(proc.pid, workload_bin)
        sym = Symbolizer()
        assert sym(proc.pid, base + funcs["rseq_op_counter"][0] + 2).endswith("!rseq_op_counter+0x2")
    finally:
        proc.kill()
        proc.wait()
    assert not os.path.exists(f"/proc/{proc.pid}")
    pop = base + funcs["rseq_op_pop"][0] + 5
    assert sym(proc.pid, pop) == f"{workload_bin.name}!rseq_op_pop+0x5"
    assert sym(proc.pid, 0x10) == "0x10"  # in no remembered mapping
    sym.forget(proc.pid)
    assert sym(proc.pid, pop + 1) == f"0x{pop + 1:x}"


def test_lru_is_bounded(running_workload):
    pid = running_workload.pid
    res = ElfResolver(cache_files=2)
    starts = []
    seen = set()
    with open(f"/proc/{pid}/maps", "rb") as f:
        for line in f:
            m = parse_maps_line(line)
            if m and m.path.startswith("/") and m.path not in seen:
                seen.add(m.path)
                starts.append(m.start)
    assert len(starts) >= 3
    for s in starts:
        res(pid, s)
    assert res.cached_files() == 2


def test_exited_process_during_resolution_never_raises(workload_bin):
    """Resolve in a loop from two threads while the process is killed."""
    funcs_addr = elfsym.load(str(workload_bin)).symbols()
    for _round in range(3):
        proc = subprocess.Popen([str(workload_bin), "--duration", "30", "--threads", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.05)
        try:
            base = load_base(proc.pid, workload_bin)
        except (AssertionError, OSError):
            base = 0x555555554000
        sym = Symbolizer()
        errors, results = [], []
        stop = threading.Event()

        def loop():
            i = 0
            while not stop.is_set():
                name, addr, _end = funcs_addr[i % len(funcs_addr)]
                i += 1
                try:
                    results.append(sym(proc.pid, base + addr + 1))
                    sym.forget(proc.pid)  # force real resolutions, not cache hits
                except BaseException as err:  # noqa: B036 - the point of the test
                    errors.append(err)

        threads = [threading.Thread(target=loop) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.1 + 0.05 * _round)
        proc.kill()
        proc.wait()
        time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert results and all(isinstance(r, str) for r in results)
        # dead now: hex, and cached (the answer will not change)
        addr = base + funcs_addr[0][1]
        assert sym(proc.pid, addr) == f"0x{addr:x}"
        assert (proc.pid, addr) in sym._cache


def test_vanished_and_unreadable_maps_give_hex(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid
    sym = Symbolizer()
    assert sym(dead, 0x401000) == "0x401000"
    # a /proc whose maps are missing, unreadable or garbage
    fake = tmp_path / "proc"
    (fake / "1").mkdir(parents=True)
    (fake / "2").mkdir()
    (fake / "2" / "maps").mkdir()  # a directory: reading fails
    (fake / "3").mkdir()
    (fake / "3" / "maps").write_bytes(b"\xff\xfe garbage\n" + b"x" * 10000 + b"\n")
    (fake / "4").mkdir()
    (fake / "4" / "maps").write_bytes(b"1000-2000 r-xp 00000000 00:00 99 /nonexistent/lib.so\n")
    res = ElfResolver(proc=str(fake))
    for pid in (1, 2, 3, 4, 5):
        assert res(pid, 0x1800) is None
    assert Symbolizer(res)(4, 0x1800) == "0x1800"
    assert find_mapping(4, 0x1800, str(fake)).path == "/nonexistent/lib.so"


def test_unresolved_live_address_is_retried_later():
    calls = []

    def resolver(pid, addr):
        calls.append(addr)
        return None if len(calls) == 1 else ("f", 1, "/x/bin")

    sym = Symbolizer(resolver)
    me = os.getpid()
    assert sym(me, 0x1000) == "0x1000"
    assert sym(me, 0x1000) == "bin!f+0x1"
    assert sym(me, 0x1000) == "bin!f+0x1"
    assert len(calls) == 2


def test_raising_or_odd_resolver_gives_hex():
    def boom(pid, addr):
        raise RuntimeError("boom")

    assert Symbolizer(boom)(os.getpid(), 0x20) == "0x20"
    assert Symbolizer(lambda p, a: ("x",))(os.getpid(), 0x21) == "0x21"


def test_time_budget_gives_hex_and_is_retried(running_workload, workload_bin):
    pid = running_workload.pid
    base = load_base(pid, workload_bin)
    addr = base + elfsym.load(str(workload_bin)).symbols()[0][1]
    res = ElfResolver(budget=-1.0, timeout_retry=0.0)   # every parse is already late
    assert res(pid, addr) is None
    assert res.failures == 1
    res.budget = 5.0
    assert res(pid, addr)[0] is not None  # the timeout was not cached for good


MAPPER = r"""
import mmap, os, sys, time
f = open(sys.argv[1], "rb")
m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
a = mmap.mmap(-1, 8192)                      # anonymous shared memory
print(os.getpid(), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("crafted", ["truncated", "huge_shnum", "not_elf", "symtab_past_end"])
def test_crafted_file_mapped_by_live_process(tmp_path, workload_bin, crafted):
    data = bytearray(workload_bin.read_bytes())
    if crafted == "truncated":
        data = data[:len(data) // 3]
    elif crafted == "huge_shnum":
        struct.pack_into("<H", data, 60, 0xFFFF)
        struct.pack_into("<Q", data, 40, len(data) - 64)
    elif crafted == "not_elf":
        data[:4] = b"MZ\0\0"
    else:
        shoff = struct.unpack_from("<Q", data, 40)[0]
        shnum = struct.unpack_from("<H", data, 60)[0]
        for k in range(shnum):
            if struct.unpack_from("<I", data, shoff + 64 * k + 4)[0] in (2, 11):
                struct.pack_into("<Q", data, shoff + 64 * k + 32, 2 ** 64 - 8)  # sh_size
    path = tmp_path / "crafted.so"
    path.write_bytes(bytes(data))
    proc = subprocess.Popen([sys.executable, "-c", MAPPER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert int(proc.stdout.readline()) == proc.pid
        m = next(parse_maps_line(line) for line in open(f"/proc/{proc.pid}/maps", "rb")
                 if line.rstrip().endswith(str(path).encode()))
        sym = Symbolizer()
        got = sym(proc.pid, m.start + 0x10)
        assert got == "crafted.so+0x10", got  # the file is known; no names in it
        anon = next(parse_maps_line(line) for line in open(f"/proc/{proc.pid}/maps", "rb")
                    if b"/dev/zero" in line)
        assert isinstance(sym(proc.pid, anon.start), str)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


RESOLVE_AS_USER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from rseqtop.symbols.symbolizer import Symbolizer
print(Symbolizer()(int(sys.argv[2]), int(sys.argv[3])))
"""


@needs_binutils
@pytest.mark.parametrize("caps, expect_name", [("+sys_ptrace,+dac_read_search", True), ("", False)],
                         ids=["exporter-caps", "no-caps"])
def test_resolution_with_the_exporters_reduced_privileges(running_workload, workload_bin, caps, expect_name):
    """The exporter's parent keeps only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
    as an unprivileged user: map_files is refused (it needs CAP_SYS_ADMIN), the
    /proc/PID/root/PATH fallback works. With no capability: hex, no error."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv(1)")
    pid = running_workload.pid
    addr = load_base(pid, workload_bin) + nm_functions(workload_bin)["rseq_op_delay"][0] + 0x14
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps=-all{',' + caps if caps else ''}"]
    if caps:
        cmd.append(f"--ambient-caps={caps}")
    repo = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(cmd + [sys.executable, "-c", RESOLVE_AS_USER, repo, str(pid), str(addr)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and not caps and "Permission denied" in out.stderr:
        pytest.skip("the interpreter is not readable by an unprivileged user here")
    assert out.returncode == 0, out.stderr
    expected = f"{workload_bin.name}!rseq_op_delay+0x14" if expect_name else f"0x{addr:x}"
    assert out.stdout.strip() == expected
