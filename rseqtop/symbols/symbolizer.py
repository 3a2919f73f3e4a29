"""Critical-section addresses to `binary!symbol+offset`, cached per process.

Resolved as soon as a site appears, so that a process that exits keeps its
names; a site first reported just after its process exited is named from
the mappings that named the process's earlier sites. The watched processes choose the files they map, so no C parser runs
in rseqtop's process: /proc/PID/maps gives the mapping that holds the
address, the file is opened through /proc/PID/map_files (or, failing that,
/proc/PID/root/PATH) and read by `rseqtop.symbols.elf`, a bounded pure-Python ELF
reader. A vanished process, an unreadable, crafted or truncated ELF file, or
a resolution that runs past its time budget gives a hex address (or
`binary+0xOFF`), never an exception.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from rseqtop.symbols import elf as elfsym

Resolver = Callable[[int, int], Optional[tuple]]  # (pid, addr) -> (name, offset, module)

PROC = "/proc"
_MAX_MAPS_LINES = 1_000_000     # a process has at most vm.max_map_count (65530 by default)


def format_symbol(addr: int, resolved: Optional[tuple]) -> str:
    if not resolved:
        return f"0x{addr:x}"
    name, offset, module = resolved
    binary = os.path.basename(module) or module
    if not name:
        return f"{binary}+0x{offset:x}"
    return f"{binary}!{name}+0x{offset:x}"


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    dev: str
    inode: int
    path: str          # "" for anonymous mappings; may end in " (deleted)"
    start_text: str    # as /proc/PID/maps spells them (map_files uses the same)
    end_text: str


def parse_maps_line(line: bytes) -> Optional[Mapping]:
    """One /proc/PID/maps line, or None when it does not parse."""
    parts = line.rstrip(b"\n").split(None, 5)
    if len(parts) < 5:
        return None
    try:
        start_text, end_text = parts[0].decode("ascii").split("-", 1)
        start, end = int(start_text, 16), int(end_text, 16)
        offset = int(parts[2], 16)
        inode = int(parts[4])
        dev = parts[3].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    path = parts[5].decode("utf-8", "surrogateescape") if len(parts) > 5 else ""
    return Mapping(start, end, offset, dev, inode, path, start_text, end_text)


def find_mapping(pid: int, addr: int, proc: str = PROC,
                 deadline: Optional[float] = None) -> Optional[Mapping]:
    """The mapping of PID that contains ADDR (None when there is none or the
    process is gone). Reads /proc/PID/maps line by line and stops at the hit."""
    try:
        with open(f"{proc}/{int(pid)}/maps", "rb") as f:
            for n, line in enumerate(f):
                if n >= _MAX_MAPS_LINES:
                    return None
                if deadline is not None and n % 1024 == 1023 and time.monotonic() > deadline:
                    return None
                m = parse_maps_line(line)
                if m is not None and m.start <= addr < m.end:
                    return m
    except (OSError, ValueError):
        return None
    return None


_DELETED = " (deleted)"


def open_mapped_file(pid: int, m: Mapping, proc: str) -> int:
    """An fd on the file behind mapping M (regular files only), or ElfError."""
    try:
        return elfsym.open_regular(f"{proc}/{pid}/map_files/{m.start_text}-{m.end_text}")
    except elfsym.ElfError:
        pass
    if not m.path.startswith("/") or m.path.endswith(_DELETED):
        raise elfsym.ElfError(f"no way to open {m.path!r}")
    # Without CAP_SYS_ADMIN / CAP_CHECKPOINT_RESTORE (the exporter keeps only
    # CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH) map_files is refused: open the
    # path in the process's root. A file replaced since it was mapped shows
    # " (deleted)" (handled above). The inode is not compared: on overlayfs
    # maps shows the underlying file's inode, stat the overlay's.
    return elfsym.open_regular(f"{proc}/{pid}/root{m.path}")


_TIMED_OUT = object()


class _Failed:
    """A cached parse failure; a timeout is retried after a while."""

    __slots__ = ("retry_at",)

    def __init__(self, retry_at: float) -> None:
        self.retry_at = retry_at


class ElfResolver:
    """(pid, addr) -> (name, offset, module) | None, built on rseqtop.symbols.elf.

    Parsed symbol tables are cached by file identity (st_dev, st_ino, st_size,
    st_mtime_ns) in an LRU bounded in entries and in (estimated) bytes, so a
    library mapped by many processes is read once. Thread-safe.
    """

    def __init__(self, *, proc: str = PROC, cache_files: int = 64,
                 cache_bytes: int = 256 << 20, budget: float = 2.0,
                 limits: elfsym.Limits = elfsym.DEFAULT_LIMITS,
                 timeout_retry: float = 60.0):
        self.proc = proc
        self.cache_files = cache_files
        self.cache_bytes = cache_bytes
        self.budget = budget
        self.limits = limits
        self.timeout_retry = timeout_retry
        self._lock = threading.Lock()
        self._cache: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
        self._cached_bytes = 0
        self.mappings_per_pid = 8
        self._mappings: dict[int, list] = {}  # pid -> [(Mapping, file key)] that named its sections
        self.parses = 0            # files parsed (for tests and diagnostics)
        self.failures = 0          # files that failed to parse (malformed, timeout)

    def __call__(self, pid: int, addr: int) -> Optional[tuple]:
        deadline = time.monotonic() + self.budget
        m = find_mapping(pid, addr, self.proc, deadline)
        if m is None:
            return self._from_remembered(pid, addr)
        if not m.path or m.path.startswith("["):
            return None  # anonymous, [vdso], [heap]...: nothing to name it by
        try:
            fd = open_mapped_file(pid, m, self.proc)
        except elfsym.ElfError:
            return None
        try:
            key, syms = self._symbols(fd, deadline)
        finally:
            os.close(fd)
        if syms is _TIMED_OUT:
            return None  # not cached by the Symbolizer: tried again later
        if key is not None and syms is not None:
            self._remember(pid, m, key)
        return self._resolve(m, addr, syms)

    def _remember(self, pid: int, m: Mapping, key: tuple) -> None:
        """Keep the mapping that named an address of PID: a section that
        first aborts just before its process exits is named after the exit
        from the mapping an earlier section of the same file was named by."""
        with self._lock:
            seen = self._mappings.setdefault(pid, [])
            if (m, key) not in seen:
                seen.append((m, key))
                del seen[:-self.mappings_per_pid]

    def _from_remembered(self, pid: int, addr: int) -> Optional[tuple]:
        if os.path.exists(f"{self.proc}/{int(pid)}"):
            return None  # alive: the address is in no mapping (yet)
        with self._lock:
            for m, key in self._mappings.get(pid, ()):
                if m.start <= addr < m.end:
                    syms = self._cache.get(key)
                    if isinstance(syms, elfsym.ElfSymbols):
                        return self._resolve(m, addr, syms)
        return None

    def forget(self, pid: int) -> None:
        with self._lock:
            self._mappings.pop(pid, None)

    @staticmethod
    def _resolve(m: Mapping, addr: int, syms) -> tuple:
        module = m.path[:-len(_DELETED)] if m.path.endswith(_DELETED) else m.path
        file_offset = addr - m.start + m.offset
        if syms is None:
            return (None, file_offset, module)  # malformed or not ELF: no names in it
        vaddr = syms.file_offset_to_vaddr(file_offset)
        if vaddr is None:
            return (None, file_offset, module)
        hit = syms.lookup(vaddr)
        if hit is None:
            return (None, vaddr, module)
        return (hit[0], hit[1], module)

    def _symbols(self, fd: int, deadline: float) -> tuple:
        """(the file's identity, its symbols): None when it cannot be parsed,
        _TIMED_OUT when parsing ran past the budget (cached for
        timeout_retry seconds)."""
        try:
            st = os.fstat(fd)
        except OSError:
            return None, None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                if isinstance(hit, _Failed) and time.monotonic() >= hit.retry_at:
                    self._evict(key)
                else:
                    self._cache.move_to_end(key)
                    if isinstance(hit, _Failed):
                        return key, (_TIMED_OUT if hit.retry_at != float("inf") else None)
                    return key, hit
        with self._lock:
            self.parses += 1
        try:
            syms = elfsym.parse_fd(fd, self.limits, deadline)
        except elfsym.ElfError as err:
            with self._lock:
                self.failures += 1
            retry = self.timeout_retry if isinstance(err, elfsym.ElfTimeout) else float("inf")
            self._store(key, _Failed(time.monotonic() + retry))
            return key, (_TIMED_OUT if isinstance(err, elfsym.ElfTimeout) else None)
        self._store(key, syms)
        return key, syms

    def _size(self, value: object) -> int:
        return value.nbytes if isinstance(value, elfsym.ElfSymbols) else 64

    def _evict(self, key: tuple) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached_bytes -= self._size(old)

    def _store(self, key: tuple, value: object) -> None:
        with self._lock:
            self._evict(key)
            self._cache[key] = value
            self._cached_bytes += self._size(value)
            while len(self._cache) > 1 and (len(self._cache) > self.cache_files
                                            or self._cached_bytes > self.cache_bytes):
                self._evict(next(iter(self._cache)))

    def cached_files(self) -> int:
        with self._lock:
            return len(self._cache)


class Symbolizer:
    def __init__(self, resolver: Optional[Resolver] = None):
        self._resolver = resolver
        self._cache: dict[tuple[int, int], str] = {}
        # Called from the collector's poll and from its new-site watcher.
        self._lock = threading.Lock()

    def __call__(self, pid: int, addr: int) -> str:
        key = (pid, addr)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            if self._resolver is None:
                self._resolver = ElfResolver()
            resolver = self._resolver
        # Resolve outside the lock: a slow file must not stall the other
        # thread's cache hits (the resolver is thread-safe).
        resolved = None
        try:
            resolved = resolver(pid, addr)
        except Exception:  # a vanished process or a broken ELF must not break a refresh
            resolved = None
        try:
            text = format_symbol(addr, resolved)
        except Exception:  # a custom resolver returned something odd
            resolved = None
            text = format_symbol(addr, None)
        # An address that did not resolve while the process lives may resolve
        # later (the mapping may be new); cache only real names or dead pids.
        if resolved or not os.path.exists(f"{PROC}/{pid}"):
            with self._lock:
                self._cache[key] = text
        return text

    def forget(self, pid: int) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == pid]:
                del self._cache[key]
            resolver = self._resolver
        if hasattr(resolver, "forget"):
            resolver.forget(pid)
