"""A small, defensive ELF symbol reader (pure Python, struct-based).

rseqtop runs as root next to the processes it watches, and those processes
choose which files they map. This reader therefore treats every ELF file as
hostile input:

- only ELF64 little-endian is accepted; anything else is an `ElfError`;
- every offset and size read from the file is checked against the file's
  size before it is used, and every read is bounded (`Limits`);
- files are read with positioned reads (`os.pread`), never mmap: a file that
  is truncated while we read it gives a short read (an `ElfError`), not a
  SIGBUS that would kill rseqtop;
- counts are capped (sections, program headers, symbols, name length, string
  table bytes) and loops check an optional deadline;
- `ElfError` is the only exception that leaves `parse_bytes`, `parse_fd` and
  `load`; anything else escaping them is a bug (tests/test_fuzz_elf.py
  fuzzes this).

What it extracts: the PT_LOAD segments (to turn a file offset into a virtual
address) and the function symbols of `.symtab` and `.dynsym` (STT_FUNC and
STT_GNU_IFUNC, plus STT_NOTYPE symbols that have a size), sorted for a bisect
lookup: `ElfSymbols.lookup(vaddr) -> (name, offset) | None`.
"""

from __future__ import annotations

import bisect
import os
import stat
import struct
import time
from array import array
from dataclasses import dataclass
from typing import List, Optional, Tuple

__all__ = ["ElfError", "ElfTimeout", "ElfInternalError", "Limits", "Segment", "ElfSymbols",
           "parse_bytes", "parse_fd", "load", "RseqHandler", "rseq_handlers_bytes", "rseq_handlers_fd",
           "rseq_handler_at"]


class ElfError(Exception):
    """The file is not an ELF file this reader accepts, or it is malformed."""


class ElfTimeout(ElfError):
    """Parsing ran past its deadline (the file may be fine, only too slow)."""


class ElfInternalError(ElfError):
    """An unexpected exception inside the reader (a bug), wrapped to keep the
    promise that only ElfError escapes; the fuzz tests treat it as a crash."""


@dataclass(frozen=True)
class Limits:
    max_file_size: int = 1 << 30          # refuse bigger files without reading them
    max_sections: int = 65535
    max_segments: int = 4096
    max_symbols: int = 1_000_000          # per file, .symtab and .dynsym together
    max_symbol_tables: int = 4            # real files have one .symtab and one .dynsym
    max_name: int = 1024                  # longer names are cut and end in "..."
    max_strtab: int = 64 << 20            # bytes of one string table read at most
    max_strtab_total: int = 128 << 20     # bytes of string tables read per file
    max_name_bytes: int = 64 << 20        # total length of the distinct names kept
    max_lookback: int = 32                # overlapping symbols examined per lookup
    max_entsize: int = 1024               # header table entry size (real files: 56 / 64)


DEFAULT_LIMITS = Limits()

# ELF constants
_ELFMAG = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_EV_CURRENT = 1
_ET_EXEC, _ET_DYN = 2, 3
_PT_LOAD = 1
_SHT_SYMTAB, _SHT_STRTAB, _SHT_NOBITS, _SHT_DYNSYM = 2, 3, 8, 11
_SHN_UNDEF, _SHN_LORESERVE, _SHN_XINDEX = 0, 0xFF00, 0xFFFF
_PN_XNUM = 0xFFFF
_STT_NOTYPE, _STT_FUNC, _STT_GNU_IFUNC = 0, 2, 10

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")      # 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")              # 56 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")            # 64 bytes
_SYM = struct.Struct("<IBBHQQ")                 # 24 bytes
_U64_MAX = (1 << 64) - 1
_CHECK_EVERY = 4096                             # symbols between deadline checks


@dataclass(frozen=True)
class Segment:
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int


class ElfSymbols:
    """The parsed result: load segments and sorted function symbols."""

    __slots__ = ("e_type", "segments", "_addrs", "_ends", "_names", "_lookback", "nbytes")

    def __init__(self, e_type: int, segments: Tuple[Segment, ...],
                 symbols: List[Tuple[int, int, str]], lookback: int = 32):
        self.e_type = e_type
        self.segments = segments
        self._addrs = array("Q", (s[0] for s in symbols))
        self._ends = array("Q", (s[1] for s in symbols))
        self._names = [s[2] for s in symbols]
        self._lookback = lookback
        # rough memory held (for caches that bound bytes, not entries)
        self.nbytes = 256 + 24 * len(self._names) + sum(
            49 + len(n) for n in {id(n): n for n in self._names}.values())

    def __len__(self) -> int:
        return len(self._names)

    def symbols(self) -> List[Tuple[str, int, int]]:
        """(name, address, end) for every function symbol, by address."""
        return list(zip(self._names, self._addrs, self._ends))

    def lookup(self, vaddr: int) -> Optional[Tuple[str, int]]:
        """The function containing VADDR as (name, offset), or None."""
        if not isinstance(vaddr, int) or vaddr < 0 or vaddr > _U64_MAX:
            return None
        i = bisect.bisect_right(self._addrs, vaddr)
        # The nearest symbol may be a small one ending before VADDR while an
        # earlier, larger one (nested or aliased) covers it: look back a bit.
        for j in range(i - 1, max(-1, i - 1 - self._lookback), -1):
            if vaddr < self._ends[j]:
                return self._names[j], vaddr - self._addrs[j]
        return None

    def file_offset_to_vaddr(self, offset: int) -> Optional[int]:
        """The virtual address that file OFFSET is loaded at (PT_LOAD), or None."""
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        # A mapping starts at a page boundary, which may lie before the
        # segment's first byte (the gap is mapped too): allow that slack.
        for seg in self.segments:
            start = seg.offset & ~0xFFF
            if start <= offset < seg.offset + seg.filesz and seg.vaddr >= seg.offset - start:
                return offset - seg.offset + seg.vaddr
        return None


# ---------------------------------------------------------------- sources

class _Source:
    """Bounded, exact reads at absolute offsets."""

    size: int

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset > self.size or length > self.size - offset:
            raise ElfError(f"read of {length} bytes at offset {offset} is past the end "
                           f"of the file ({self.size} bytes)")
        data = self._read(offset, length)
        if len(data) != length:
            raise ElfError("short read: the file changed while it was read")
        return data

    def _read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError


class _BytesSource(_Source):
    def __init__(self, data) -> None:
        self._data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.size = len(self._data)

    def _read(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset:offset + length])


class _FdSource(_Source):
    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def _read(self, offset: int, length: int) -> bytes:
        chunks = []
        got = 0
        while got < length:
            try:
                chunk = os.pread(self._fd, min(length - got, 16 << 20), offset + got)
            except OSError as err:
                raise ElfError(f"read error: {err.strerror or err}") from None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


# ---------------------------------------------------------------- parsing

def parse_bytes(data, limits: Limits = DEFAULT_LIMITS,
                deadline: Optional[float] = None) -> ElfSymbols:
    """Parse an ELF image held in memory (bytes, bytearray or memoryview)."""
    try:
        src = _BytesSource(data)
    except (TypeError, ValueError) as err:
        raise ElfError(f"not a byte buffer: {err}") from None
    if src.size > limits.max_file_size:
        raise ElfError(f"file is {src.size} bytes, over the {limits.max_file_size}-byte limit")
    return _parse_guarded(src, limits, deadline)


def parse_fd(fd: int, limits: Limits = DEFAULT_LIMITS,
             deadline: Optional[float] = None) -> ElfSymbols:
    """Parse the regular file open on FD (positioned reads; FD's offset is untouched)."""
    return _parse_guarded(_fd_source(fd, limits), limits, deadline)


def _fd_source(fd: int, limits: Limits) -> "_FdSource":
    try:
        st = os.fstat(fd)
    except OSError as err:
        raise ElfError(f"cannot stat: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ElfError("not a regular file")
    if st.st_size > limits.max_file_size:
        raise ElfError(f"file is {st.st_size} bytes, over the {limits.max_file_size}-byte limit")
    return _FdSource(fd, st.st_size)


def rseq_handlers_fd(fd: int, sig: int, limits: Limits = DEFAULT_LIMITS,
                     deadline: Optional[float] = None) -> Tuple["RseqHandler", ...]:
    """The verified rseq abort handlers of the file open on FD (see
    _rseq_handlers)."""
    src = _fd_source(fd, limits)
    return _parse_guarded(src, limits, deadline, lambda s, lim, dl: _rseq_handlers(s, lim, dl, sig))


def rseq_handler_at(fd: int, file_offset: int, sig: int, limits: Limits = DEFAULT_LIMITS,
                    deadline: Optional[float] = None) -> bool:
    """Whether FILE_OFFSET of the file open on FD can be an abort handler:
    inside an executable PT_LOAD segment's file bytes, after the signature
    SIG (a run-time abort_ip the kernel reported, mapped back to the file)."""
    src = _fd_source(fd, limits)

    def check(s, lim, dl):
        _e_type, _shdrs, segments, _ndx = _headers(s, lim, dl)
        if file_offset < 4:
            return False
        for seg in segments:
            if seg.flags & _PF_X and seg.offset <= file_offset - 4 and file_offset < seg.offset + seg.filesz:
                return s.read(file_offset - 4, 4) == struct.pack("<I", sig & 0xFFFFFFFF)
        return False

    return _parse_guarded(src, limits, deadline, check)


def rseq_handlers_bytes(data, sig: int, limits: Limits = DEFAULT_LIMITS,
                        deadline: Optional[float] = None) -> Tuple["RseqHandler", ...]:
    try:
        src = _BytesSource(data)
    except (TypeError, ValueError) as err:
        raise ElfError(f"not a byte buffer: {err}") from None
    return _parse_guarded(src, limits, deadline, lambda s, lim, dl: _rseq_handlers(s, lim, dl, sig))


def open_regular(path: str) -> int:
    """Open PATH read-only without blocking on FIFOs or devices; regular files only."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError) as err:
        raise ElfError(f"cannot open {path!r}: {getattr(err, 'strerror', None) or err}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ElfError(f"{path!r} is not a regular file")
    except OSError as err:
        os.close(fd)
        raise ElfError(f"cannot stat {path!r}: {err.strerror or err}") from None
    except ElfError:
        os.close(fd)
        raise
    return fd


def load(path: str, limits: Limits = DEFAULT_LIMITS,
         deadline: Optional[float] = None) -> ElfSymbols:
    """Open and parse PATH (regular files only; oversized files are not read)."""
    fd = open_regular(path)
    try:
        return parse_fd(fd, limits, deadline)
    finally:
        os.close(fd)


def _parse_guarded(src: _Source, limits: Limits, deadline: Optional[float], parse=None):
    """parse(src, limits, deadline) (default: the symbols), with only
    ElfError escaping."""
    try:
        return (parse or _parse)(src, limits, deadline)
    except ElfError:
        raise
    except MemoryError:
        raise ElfInternalError("out of memory while parsing") from None
    except Exception as err:  # a bug: keep the promise, but say what it was
        raise ElfInternalError(f"internal error while parsing: {type(err).__name__}: {err}") from err


def _check_deadline(deadline: Optional[float]) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ElfTimeout("time budget exceeded while parsing")


def _table(src: _Source, offset: int, count: int, entsize: int, minsize: int,
           what: str, limits: Limits) -> bytes:
    if entsize < minsize or entsize > limits.max_entsize:
        raise ElfError(f"{what} entry size {entsize} is not between {minsize} and {limits.max_entsize}")
    if count == 0:
        return b""
    if offset == 0:
        raise ElfError(f"{what} table at offset 0")
    return src.read(offset, count * entsize)


def _headers(src: _Source, limits: Limits, deadline: Optional[float]) -> tuple:
    """(e_type, section headers, PT_LOAD segments, e_shstrndx), all checked."""
    _check_deadline(deadline)
    if src.size < _EHDR.size:
        raise ElfError("file too small for an ELF header")
    (ident, e_type, _machine, e_version, _entry, e_phoff, e_shoff, _flags, _ehsize,
     e_phentsize, e_phnum, e_shentsize, e_shnum, shstrndx) = _EHDR.unpack(src.read(0, _EHDR.size))
    if ident[:4] != _ELFMAG:
        raise ElfError("not an ELF file")
    if ident[4] != _ELFCLASS64:
        raise ElfError(f"unsupported ELF class {ident[4]} (only 64-bit)")
    if ident[5] != _ELFDATA2LSB:
        raise ElfError(f"unsupported ELF data encoding {ident[5]} (only little-endian)")
    if ident[6] != _EV_CURRENT or e_version != _EV_CURRENT:
        raise ElfError("unsupported ELF version")

    # Section headers first: extended numbering keeps e_shnum / e_phnum in
    # section 0 when they do not fit in 16 bits.
    shdrs: List[tuple] = []
    if e_shoff:
        if e_shentsize < _SHDR.size:
            raise ElfError(f"section header size {e_shentsize} is smaller than {_SHDR.size}")
        first = _SHDR.unpack(src.read(e_shoff, _SHDR.size))
        shnum = e_shnum if e_shnum else first[5]
        if shstrndx == _SHN_XINDEX:
            shstrndx = first[6]
        if e_phnum == _PN_XNUM:
            e_phnum = first[7]
        if shnum > limits.max_sections:
            raise ElfError(f"{shnum} sections, over the limit of {limits.max_sections}")
        raw = _table(src, e_shoff, shnum, e_shentsize, _SHDR.size, "section header", limits)
        for k in range(shnum):
            shdrs.append(_SHDR.unpack_from(raw, k * e_shentsize))
    elif e_shnum:
        raise ElfError("section headers counted but e_shoff is 0")

    segments: List[Segment] = []
    if e_phnum:
        if e_phnum > limits.max_segments:
            raise ElfError(f"{e_phnum} program headers, over the limit of {limits.max_segments}")
        raw = _table(src, e_phoff, e_phnum, e_phentsize, _PHDR.size, "program header", limits)
        for k in range(e_phnum):
            p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = \
                _PHDR.unpack_from(raw, k * e_phentsize)
            if p_type != _PT_LOAD:
                continue
            if p_offset > src.size or p_filesz > src.size - p_offset:
                raise ElfError("PT_LOAD segment extends past the end of the file")
            if p_vaddr > _U64_MAX - max(p_memsz, p_filesz):
                raise ElfError("PT_LOAD segment wraps around the address space")
            segments.append(Segment(p_offset, p_vaddr, p_filesz, p_memsz, p_flags))

    return e_type, shdrs, segments, shstrndx


def _parse(src: _Source, limits: Limits, deadline: Optional[float]) -> ElfSymbols:
    e_type, shdrs, segments, _shstrndx = _headers(src, limits, deadline)
    symbols = _read_symbols(src, shdrs, limits, deadline)
    return ElfSymbols(e_type, tuple(segments), symbols, limits.max_lookback)


def _read_symbols(src: _Source, shdrs: List[tuple], limits: Limits,
                  deadline: Optional[float]) -> List[Tuple[int, int, str]]:
    nsec = len(shdrs)
    budget = limits.max_symbols
    strtab_bytes = 0
    name_bytes = 0
    tables = 0
    strtabs: dict = {}
    found: dict = {}  # addr -> (end, name, prio): prio 0 .symtab sized, 1 .dynsym sized, 2/3 unsized
    unsized: list = []

    def section_end(shndx: int, value: int) -> int:
        if shndx < nsec and shndx < _SHN_LORESERVE:
            sh = shdrs[shndx]
            addr, size = sh[3], sh[5]
            if addr <= value < addr + size:
                return min(addr + size, _U64_MAX)
        return min(value + 1, _U64_MAX)  # unknown bounds: the symbol covers its first byte

    # .symtab first: when both tables name an address, its (fuller) name wins.
    order = sorted(range(nsec), key=lambda k: (shdrs[k][1] != _SHT_SYMTAB, k))
    for k in order:
        _name, sh_type, _fl, _addr, sh_offset, sh_size, sh_link, _info, _al, sh_entsize = shdrs[k]
        if sh_type not in (_SHT_SYMTAB, _SHT_DYNSYM):
            continue
        _check_deadline(deadline)
        tables += 1
        if tables > limits.max_symbol_tables:
            raise ElfError(f"more than {limits.max_symbol_tables} symbol tables")
        if sh_entsize == 0:
            sh_entsize = _SYM.size
        if sh_entsize != _SYM.size:
            raise ElfError(f"symbol table entry size {sh_entsize}, expected {_SYM.size}")
        if sh_size % _SYM.size:
            raise ElfError("symbol table size is not a multiple of the entry size")
        if sh_offset > src.size or sh_size > src.size - sh_offset:
            raise ElfError("symbol table extends past the end of the file")
        if sh_link >= nsec or sh_link == k:
            raise ElfError(f"symbol table links to invalid string table section {sh_link}")
        count = min(sh_size // _SYM.size, budget)
        if count == 0:
            continue
        budget -= count
        prio = 0 if sh_type == _SHT_SYMTAB else 1
        strtab = strtabs.get(sh_link)
        if strtab is None:
            strtab = _read_strtab(src, shdrs[sh_link], limits)
            strtab_bytes += len(strtab)
            if strtab_bytes > limits.max_strtab_total:
                raise ElfError(f"string tables over {limits.max_strtab_total} bytes in total")
            strtabs[sh_link] = strtab
        raw = src.read(sh_offset, count * _SYM.size)
        names: dict = {}
        n = 0
        for st_name, st_info, _other, st_shndx, st_value, st_size in _SYM.iter_unpack(raw):
            n += 1
            if n % _CHECK_EVERY == 0:
                _check_deadline(deadline)
            stype = st_info & 0xF
            if stype not in (_STT_FUNC, _STT_GNU_IFUNC, _STT_NOTYPE):
                continue
            if st_shndx == _SHN_UNDEF or st_value == 0:
                continue
            if stype == _STT_NOTYPE and st_size == 0:
                continue
            if st_value > _U64_MAX - st_size:
                continue  # would wrap around: ignore this symbol
            name = names.get(st_name)
            if name is None:
                name = _cstring(strtab, st_name, limits.max_name)
                names[st_name] = name
                name_bytes += len(name)
                if name_bytes > limits.max_name_bytes:
                    raise ElfError(f"symbol names over {limits.max_name_bytes} bytes in total")
            if not name:
                continue
            if st_size:
                end, p = st_value + st_size, prio
            else:
                end, p = section_end(st_shndx, st_value), prio + 2
            old = found.get(st_value)
            if old is None or p < old[2]:
                found[st_value] = (end, name, p)
            if not st_size:
                unsized.append(st_value)
        if budget <= 0:
            break

    _check_deadline(deadline)
    out = sorted((addr, v[0], v[1]) for addr, v in found.items())
    # An unsized symbol ends at the next symbol (and at its section's end).
    if unsized:
        for i in range(len(out) - 1):
            addr, end, name = out[i]
            if found[addr][2] >= 2 and end > out[i + 1][0]:
                out[i] = (addr, out[i + 1][0], name)
    return [s for s in out if s[1] > s[0]]  # clamping at 2**64 can leave a symbol empty


def _read_strtab(src: _Source, sh: tuple, limits: Limits) -> bytes:
    sh_type, sh_offset, sh_size = sh[1], sh[4], sh[5]
    if sh_type == _SHT_NOBITS or sh_size == 0:
        return b""
    if sh_offset > src.size or sh_size > src.size - sh_offset:
        raise ElfError("string table extends past the end of the file")
    return src.read(sh_offset, min(sh_size, limits.max_strtab))


def _cstring(table: bytes, offset: int, max_len: int) -> str:
    """The NUL-terminated string at OFFSET, cut at MAX_LEN; '' when out of range."""
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset, offset + max_len + 1)
    if end < 0:
        raw = table[offset:offset + max_len]
        cut = len(table) - offset > max_len
        return raw.decode("utf-8", "replace") + ("..." if cut else "")
    return table[offset:end].decode("utf-8", "replace")


# ---------------------------------------------------------------- rseq handlers

_PF_X = 1
_SHT_RELA = 4
_RELA = struct.Struct("<QQq")                    # Elf64_Rela: 24 bytes
_R_RELATIVE = {8, 1027}                          # R_X86_64_RELATIVE, R_AARCH64_RELATIVE
_MAX_RELOCS = 4_000_000                          # entries read per file, all RELA sections together
_RSEQ_CS = struct.Struct("<IIQQQ")               # struct rseq_cs: 32 bytes
_RSEQ_SECTIONS = (b"__rseq_cs", b"__rseq_cs_ptr_array")
_MAX_DESCRIPTORS = 65536                         # per file, both sections together


@dataclass(frozen=True)
class RseqHandler:
    """An abort handler: its link-time address and where it is in the file,
    and the link-time start_ip of the (first) critical section it serves."""

    vaddr: int
    file_offset: int
    start_vaddr: int = 0


def _vaddr_to_offset(segments: List[Segment], vaddr: int, length: int, executable: bool) -> Optional[int]:
    """The file offset of [vaddr, vaddr + length) when one PT_LOAD segment's
    file bytes hold all of it (and the segment is executable if asked)."""
    for seg in segments:
        if executable and not seg.flags & _PF_X:
            continue
        if seg.vaddr <= vaddr and vaddr + length <= seg.vaddr + seg.filesz:
            return vaddr - seg.vaddr + seg.offset
    return None


def _relative_relocs(src: _Source, shdrs: List[tuple], limits: Limits, deadline: Optional[float]) -> dict:
    """r_offset -> addend of the RELATIVE relocations of SHT_RELA sections
    (bounded: _MAX_RELOCS entries in all)."""
    out: dict = {}
    budget = _MAX_RELOCS
    for sh in shdrs:
        if sh[1] != _SHT_RELA or budget <= 0:
            continue
        sh_offset, sh_size, entsize = sh[4], sh[5], sh[9] or _RELA.size
        if entsize != _RELA.size:
            raise ElfError(f"relocation entry size {entsize}, expected {_RELA.size}")
        if sh_offset > src.size or sh_size > src.size - sh_offset:
            raise ElfError("relocation section extends past the end of the file")
        count = min(sh_size // _RELA.size, budget)
        budget -= count
        raw = src.read(sh_offset, count * _RELA.size)
        for n, (r_offset, r_info, r_addend) in enumerate(_RELA.iter_unpack(raw)):
            if n % _CHECK_EVERY == 0:
                _check_deadline(deadline)
            if r_info & 0xFFFFFFFF in _R_RELATIVE and r_addend > 0:
                out[r_offset] = r_addend
    return out


def _rseq_handlers(src: _Source, limits: Limits, deadline: Optional[float], sig: int) -> Tuple[RseqHandler, ...]:
    """The abort handlers named by the descriptors (struct rseq_cs) in
    section __rseq_cs and by the pointers in __rseq_cs_ptr_array, at their
    link-time addresses: as the linker wrote them in place, or (a 0 in
    place) as the addend of a RELATIVE relocation there. A handler counts
    only if the kernel would accept it: version 0, abort_ip outside
    [start_ip, start_ip + post_commit_offset), in an executable segment,
    and preceded by the signature SIG."""
    _e_type, shdrs, segments, shstrndx = _headers(src, limits, deadline)
    if not shdrs or shstrndx >= len(shdrs):
        return ()
    names = _read_strtab(src, shdrs[shstrndx], limits)
    found: dict = {}
    for sh in shdrs:
        name = _cstring(names, sh[0], 32).encode()
        if name in _RSEQ_SECTIONS and sh[1] != _SHT_NOBITS and sh[5]:
            if sh[4] > src.size or sh[5] > src.size - sh[4]:
                raise ElfError(f"section {name.decode()} extends past the end of the file")
            found[name] = src.read(sh[4], min(sh[5], _MAX_DESCRIPTORS * _RSEQ_CS.size))
    if not found:
        return ()
    relative: list = []  # the RELATIVE relocations, read at the first 0 in place

    def word(addr: int, value: int) -> int:
        # a linker that leaves the value to a RELATIVE relocation (lld)
        # writes 0 in place and the value as the relocation's addend
        if value:
            return value
        if not relative:
            relative.append(_relative_relocs(src, shdrs, limits, deadline))
        return relative[0].get(addr, 0)

    def descriptor(addr: int, raw: bytes, at: int = 0) -> tuple:
        version, flags, start_ip, pco, abort_ip = _RSEQ_CS.unpack_from(raw, at)
        return version, flags, word(addr + 8, start_ip), pco, word(addr + 24, abort_ip)

    descriptors = []
    table = found.get(b"__rseq_cs", b"")
    base = next((sh[3] for sh in shdrs if _cstring(names, sh[0], 32) == "__rseq_cs"), 0)
    descriptors += [descriptor(base + k, table, k) for k in range(0, len(table) - _RSEQ_CS.size + 1, _RSEQ_CS.size)]
    ptrs = found.get(b"__rseq_cs_ptr_array", b"")
    pbase = next((sh[3] for sh in shdrs if _cstring(names, sh[0], 32) == "__rseq_cs_ptr_array"), 0)
    for k in range(0, len(ptrs) - 7, 8):
        if len(descriptors) >= _MAX_DESCRIPTORS:
            break
        if k % (8 * _CHECK_EVERY) == 0:
            _check_deadline(deadline)
        ptr = word(pbase + k, struct.unpack_from("<Q", ptrs, k)[0])
        off = _vaddr_to_offset(segments, ptr, _RSEQ_CS.size, False)
        if off is not None:
            descriptors.append(descriptor(ptr, src.read(off, _RSEQ_CS.size)))
    handlers = {}
    want = struct.pack("<I", sig & 0xFFFFFFFF)
    for n, (version, _flags, start_ip, post_commit_offset, abort_ip) in enumerate(descriptors[:_MAX_DESCRIPTORS]):
        if n % _CHECK_EVERY == 0:
            _check_deadline(deadline)
        if version != 0 or not abort_ip or abort_ip in handlers or abort_ip < 4:
            continue
        if start_ip <= abort_ip < start_ip + post_commit_offset:
            continue
        off = _vaddr_to_offset(segments, abort_ip - 4, 5, True)
        if off is not None and src.read(off, 4) == want:
            handlers[abort_ip] = RseqHandler(abort_ip, off + 4, start_ip)
    return tuple(sorted(handlers.values(), key=lambda h: h.vaddr))
