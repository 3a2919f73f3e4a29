"""A critical section's instructions and source lines, read in a bounded
child process (rseqtop.symbols.disasm_worker), cached per (binary, section).

The section's addresses are turned into a file and file offsets the way the
symbolizer does it (/proc/PID/maps, the file opened through map_files or
the process's root); the child gets the open file descriptor, never a path
to resolve with rseqtop's privileges. Every failure, including a child
that is killed by its limits or runs past its timeout, is an
`AnnotateError` with a one-line message.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rseqtop.symbols import elf as elfsym
from rseqtop.symbols.symbolizer import PROC, find_mapping, open_mapped_file

TIMEOUT = 20.0            # seconds of wall clock for the child (its CPU limit is lower)
MAX_REPLY = 4 << 20       # bytes of JSON read from the child
DEBUG_DIRS = ("/usr/lib/debug",)
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); "
          "from rseqtop.symbols.disasm_worker import run_worker; run_worker()")


class AnnotateError(Exception):
    """The section cannot be annotated; the message is one line saying why."""


@dataclass(frozen=True)
class Insn:
    vaddr: int
    size: int
    raw: str  # the instruction's bytes, hex
    mnemonic: str
    op_str: str
    file: str = ""  # source file name ("" when there is no line information)
    dir: str = ""
    line: int = 0

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}" if self.file and self.line else "?"


@dataclass(frozen=True)
class Listing:
    """What the child read: the section (start_ip to post_commit_ip), and
    its abort handler (abort_ip up to the first jump, then that jump's
    target up to its first jump or return)."""

    module: str  # the binary's path in the process
    start_vaddr: int  # start_ip as an address in the file (for addr2line / objdump)
    section: tuple  # Insn
    abort: tuple = ()
    handler: tuple = ()
    signature: Optional[int] = None  # the 4 bytes before abort_ip
    debug_file: Optional[str] = None  # where the line numbers came from
    debug_note: str = ""  # why there are none
    truncated: bool = False  # the section is longer than the worker disassembles


def _insns(items) -> tuple:
    out = []
    for d in items or ():
        out.append(Insn(int(d["vaddr"]), int(d["size"]), str(d["bytes"]), str(d["mnemonic"]), str(d["op_str"]),
                        str(d.get("file", "")), str(d.get("dir", "")), int(d.get("line", 0))))
    return tuple(out)


def run_child(fd: int, request: dict, timeout: float = TIMEOUT) -> dict:
    """Run the worker on the file open on FD; its reply, or AnnotateError."""
    request = dict(request, fd=fd)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, _PACKAGE_PARENT], input=json.dumps(request),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(fd,),
                              timeout=timeout, text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                               "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise AnnotateError(f"reading the binary took over {timeout:g} s (stopped; malformed or huge?)") from None
    except OSError as err:
        raise AnnotateError(f"cannot start the disassembly worker: {err.strerror or err}") from None
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise AnnotateError(f"the disassembly worker failed ({how}): the binary is malformed or too large "
                            "for its limits")
    if len(proc.stdout) > MAX_REPLY:
        raise AnnotateError("the disassembly worker's reply is too large")
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        raise AnnotateError("the disassembly worker gave no valid reply") from None
    if not isinstance(reply, dict):
        raise AnnotateError("the disassembly worker gave no valid reply")
    if reply.get("error"):
        raise AnnotateError(" ".join(str(reply["error"]).split()))
    return reply


def listing_from_reply(module: str, reply: dict) -> Listing:
    try:
        return Listing(module, int(reply["start_vaddr"]), _insns(reply.get("section")), _insns(reply.get("abort")),
                       _insns(reply.get("handler")), reply.get("signature"), reply.get("debug_file"),
                       str(reply.get("debug_note") or ""), bool(reply.get("truncated")))
    except (KeyError, TypeError, ValueError) as err:
        raise AnnotateError(f"the disassembly worker's reply is incomplete ({err})") from None


def annotate_fd(fd: int, start_offset: int, length: int, abort_offset: Optional[int], module: str = "",
                root: str = "", timeout: float = TIMEOUT, debug_dirs=DEBUG_DIRS) -> Listing:
    """The listing of the section at file offset START_OFFSET (LENGTH bytes
    long) of the ELF file open on FD, with the abort handler at file offset
    ABORT_OFFSET (None: not in this file)."""
    reply = run_child(fd, {"start": start_offset, "length": length, "abort": abort_offset, "path": module,
                           "root": root, "debug_dirs": list(debug_dirs)}, timeout)
    return listing_from_reply(module, reply)


_DELETED = " (deleted)"


class Annotator:
    """(pid, start_ip, post_commit_offset, abort_ip) -> Listing, cached per
    (file identity, section). Thread-safe; failures are cached too (a
    binary that broke the worker would break it again)."""

    def __init__(self, proc: str = PROC, cache_entries: int = 256, timeout: float = TIMEOUT,
                 debug_dirs=DEBUG_DIRS) -> None:
        self.proc = proc
        self.cache_entries = cache_entries
        self.timeout = timeout
        self.debug_dirs = tuple(debug_dirs)
        self._lock = threading.Lock()
        self._cache: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
        self.runs = 0  # children started (for tests)

    def __call__(self, pid: int, start_ip: int, post_commit_offset: int, abort_ip: int) -> Listing:
        deadline = time.monotonic() + self.timeout
        m = find_mapping(pid, start_ip, self.proc, deadline)
        if m is None or not m.path or m.path.startswith("["):
            raise AnnotateError(f"{start_ip:#x} is not in a file mapped by process {pid} (exited, or "
                                "anonymous / JIT code)")
        module = m.path[:-len(_DELETED)] if m.path.endswith(_DELETED) else m.path
        try:
            fd = open_mapped_file(pid, m, self.proc)
        except elfsym.ElfError as err:
            raise AnnotateError(f"cannot open {module}: {err}") from None
        try:
            st = os.fstat(fd)
            start_offset = start_ip - m.start + m.offset
            abort_offset = None
            am = find_mapping(pid, abort_ip, self.proc, deadline) if abort_ip else None
            if am is not None and (am.dev, am.inode, am.path) == (m.dev, m.inode, m.path):
                abort_offset = abort_ip - am.start + am.offset
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, start_offset, post_commit_offset, abort_offset)
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
            if hit is None:
                with self._lock:
                    self.runs += 1
                try:
                    hit = annotate_fd(fd, start_offset, post_commit_offset, abort_offset, module,
                                      f"{self.proc}/{pid}/root", self.timeout, self.debug_dirs)
                except AnnotateError as err:
                    hit = err
                with self._lock:
                    self._cache[key] = hit
                    while len(self._cache) > self.cache_entries:
                        self._cache.popitem(last=False)
        finally:
            os.close(fd)
        if isinstance(hit, AnnotateError):
            raise hit
        return hit  # type: ignore[return-value]
