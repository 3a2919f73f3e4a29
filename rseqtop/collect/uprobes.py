"""--uprobes: find the rseq abort handlers of watched processes and put a
uprobe on each, so that the sections' own retries (a cpu_id check that
fails and jumps to abort_ip, as librseq's and the kernel selftests'
sections do) are counted next to the kernel's aborts.

Handlers come from two places:
- each mapped executable file's `__rseq_cs` and `__rseq_cs_ptr_array`
  sections (rseqtop.symbols.elf.rseq_handlers_fd), scanned once per file
  when a process is first seen;
- the abort_ip of every critical section the kernel aborts (new-site
  events), which also covers descriptors built at run time.

Only a verified handler gets a uprobe: the 4 bytes before it in the file
are RSEQ_SIG and it lies in an executable segment. A uprobe replaces an
instruction with a breakpoint, so an unchecked address could corrupt a
program. The watched processes choose the files they map: files are read
by the bounded pure-Python ELF reader and never handed to bcc's C parser.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from typing import Callable, Optional

from rseqtop.errors import UserError
from rseqtop.kernel import facts as kernel
from rseqtop.symbols import elf as elfsym
from rseqtop.symbols.symbolizer import (
    PROC,
    Mapping,
    find_mapping,
    open_mapped_file,
    parse_maps_line,
)

# this machine's (x86-64: 0x53053053, as librseq, the kernel selftests and
# the bundled workload write it); None: unknown, nothing can be verified
RSEQ_SIG = kernel.RSEQ_SIGS.get(platform.machine())
SCAN_BUDGET = 0.5  # seconds per file parse
MAX_PROBES = 4096  # uprobes at most (each costs a kernel uprobe and an fd)
_MAX_MAPS_LINES = 100_000

Attach = Callable[[str, int], None]  # (path, file offset); raises on refusal


def _executable(line: bytes) -> Optional[Mapping]:
    parts = line.split(None, 2)
    if len(parts) < 2 or b"x" not in parts[1]:
        return None
    m = parse_maps_line(line)
    if m is None or not m.path.startswith("/") or m.path.endswith(" (deleted)"):
        return None
    return m


class HandlerProbes:
    """The uprobes at abort handlers: which files were scanned, which
    handlers (by file identity and offset) have one."""

    def __init__(self, attach: Attach, proc: str = PROC, sig: Optional[int] = RSEQ_SIG,
                 max_probes: int = MAX_PROBES):
        if sig is None:
            raise UserError(f"--uprobes: no known rseq signature (RSEQ_SIG) for {platform.machine()}, so no "
                            f"abort handler can be verified; run without --uprobes", exit_code=2)
        self._attach = attach
        self._proc = proc
        self._sig = sig
        self._max = max_probes
        self._lock = threading.Lock()  # the new-site thread and the poll thread both add
        self._scanned: set = set()  # (st_dev, st_ino) of files whose sections were read
        self._probed: set = set()  # (st_dev, st_ino, file offset)
        # (st_dev, st_ino) -> ((handler's file offset, its abort_ip - start_ip
        # at link time), ...) from the section tables; and per process the
        # run-time start_ip of each handler's section: for sections that only
        # ever retried on their own, whose start no kernel abort reported
        self._handlers_of: dict = {}
        self._starts: dict = {}  # (pid, gen, run-time abort_ip) -> run-time start_ip
        self._procs: set = set()  # (pid, gen) whose maps were read
        self.refused = 0  # handlers the kernel refused a uprobe, or over max_probes
        self.rejected = 0  # addresses that were not a verified handler

    @property
    def probed(self) -> int:
        return len(self._probed)

    def scanned(self, pid: int) -> bool:
        """Whether a process with this pid had its maps read."""
        with self._lock:
            return any(p == pid for p, _ in self._procs)

    def probed_in(self, ident: tuple) -> int:
        """Uprobes in the file (st_dev, st_ino)."""
        return sum(1 for p in self._probed if p[:2] == ident)

    # -- entry points ---------------------------------------------------
    def scan_process(self, pid: int, gen: int = 0, on_section: Optional[Callable[[int], None]] = None) -> int:
        """Probe the handlers of every executable file PID maps (once per
        (pid, gen) and per file). Returns how many uprobes were added.
        on_section(start_ip) for each critical section found there, while
        the process lives (to name it)."""
        with self._lock:
            if (pid, gen) in self._procs:
                return 0
            self._procs.add((pid, gen))
            added = 0
            for m in self._mappings(pid):
                added += self._scan_file(pid, gen, m)
            starts = [v for k, v in self._starts.items() if k[:2] == (pid, gen)]
        for start in starts if on_section else ():
            on_section(start)
        return added

    def add_handler(self, pid: int, abort_ip: int) -> bool:
        """Probe the handler at run-time address ABORT_IP of PID (a site the
        kernel reported) if it is a verified one; True when added."""
        with self._lock:
            m = find_mapping(pid, abort_ip, self._proc, time.monotonic() + SCAN_BUDGET)
            if m is None or not m.path.startswith("/") or m.path.endswith(" (deleted)"):
                return False
            offset = abort_ip - m.start + m.offset
            try:
                fd = open_mapped_file(pid, m, self._proc)
            except elfsym.ElfError:
                return False
            try:
                ident = self._ident(fd)
                if ident is None or ident + (offset,) in self._probed:
                    return False
                try:
                    ok = elfsym.rseq_handler_at(fd, offset, self._sig)
                except elfsym.ElfError:
                    ok = False
                if not ok:
                    self.rejected += 1
                    return False
                return self._probe(pid, m, ident, offset)
            finally:
                os.close(fd)

    def section_start(self, pid: int, gen: int, abort_ip: int) -> Optional[int]:
        """The run-time start_ip of the section whose handler is at run-time
        ABORT_IP in PID (scanned while alive), from the section tables;
        None when unknown."""
        with self._lock:
            return self._starts.get((pid, gen, abort_ip))

    def forget(self, pid: int) -> None:
        """PID exited: a process that reuses it is scanned again."""
        with self._lock:
            self._procs = {p for p in self._procs if p[0] != pid}
            self._starts = {k: v for k, v in self._starts.items() if k[0] != pid}

    # -- helpers --------------------------------------------------------
    def _mappings(self, pid: int) -> list:
        seen, out = set(), []
        try:
            with open(f"{self._proc}/{int(pid)}/maps", "rb") as f:
                for n, line in enumerate(f):
                    if n >= _MAX_MAPS_LINES:
                        break
                    m = _executable(line)
                    if m is not None and (m.dev, m.inode) not in seen:
                        seen.add((m.dev, m.inode))
                        out.append(m)
        except (OSError, ValueError):
            return []
        return out

    @staticmethod
    def _ident(fd: int) -> Optional[tuple]:
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _scan_file(self, pid: int, gen: int, m: Mapping) -> int:
        try:
            fd = open_mapped_file(pid, m, self._proc)
        except elfsym.ElfError:
            return 0
        try:
            ident = self._ident(fd)
            if ident is None:
                return 0
            added = 0
            if ident not in self._scanned:
                self._scanned.add(ident)
                try:
                    handlers = elfsym.rseq_handlers_fd(fd, self._sig, deadline=time.monotonic() + SCAN_BUDGET)
                except elfsym.ElfError:
                    handlers = ()
                self._handlers_of[ident] = tuple((h.file_offset, h.vaddr - h.start_vaddr) for h in handlers)
                added = sum(self._probe(pid, m, ident, h.file_offset) for h in handlers
                            if ident + (h.file_offset,) not in self._probed)
            for offset, span in self._handlers_of.get(ident, ()):
                if m.offset <= offset < m.offset + (m.end - m.start) and 0 < span < 1 << 32:
                    abort_ip = m.start + offset - m.offset
                    self._starts[(pid, gen, abort_ip)] = abort_ip - span
            return added
        finally:
            os.close(fd)

    def _probe(self, pid: int, m: Mapping, ident: tuple, offset: int) -> bool:
        """Attach through the process's view of the file, if that is still
        the file that was verified (it may have been replaced since)."""
        if len(self._probed) >= self._max:
            self.refused += 1
            return False
        path = f"{self._proc}/{pid}/root{m.path}"
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return False
        if (st.st_dev, st.st_ino) != ident:
            return False
        try:
            self._attach(path, offset)
        except Exception:  # the kernel's refusal of one handler (UserError) stops nothing
            self.refused += 1
            return False
        self._probed.add(ident + (offset,))
        return True
