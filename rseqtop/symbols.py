"""Critical-section addresses to `binary!symbol+offset`, cached per process.

Resolved as soon as a site appears, so that a process that exits keeps its
names. Uses bcc's symbolizer over /proc/PID/maps; a process that vanished or
an unreadable ELF file gives a hex address, never an exception.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Optional

Resolver = Callable[[int, int], Optional[tuple]]  # (pid, addr) -> (name, offset, module)


def bcc_resolver() -> Resolver:
    from rseqtop.bccimport import import_bcc

    bcc = import_bcc()

    def resolve(pid: int, addr: int):
        name, offset, module = bcc.BPF._sym_cache(pid).resolve(addr, True)
        if not module:
            return None
        return (name.decode(errors="replace") if name else None, offset,
                module.decode(errors="replace"))

    return resolve


def format_symbol(addr: int, resolved: Optional[tuple]) -> str:
    if not resolved:
        return f"0x{addr:x}"
    name, offset, module = resolved
    binary = os.path.basename(module) or module
    if not name:
        return f"{binary}+0x{offset:x}"
    return f"{binary}!{name}+0x{offset:x}"


class Symbolizer:
    def __init__(self, resolver: Optional[Resolver] = None):
        self._resolver = resolver
        self._cache: dict[tuple[int, int], str] = {}
        # Called from the collector's poll and from its new-site watcher.
        self._lock = threading.Lock()

    def __call__(self, pid: int, addr: int) -> str:
        with self._lock:
            return self._resolve(pid, addr)

    def _resolve(self, pid: int, addr: int) -> str:
        key = (pid, addr)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        resolved = None
        try:
            if self._resolver is None:
                self._resolver = bcc_resolver()
            resolved = self._resolver(pid, addr)
        except Exception:  # a vanished process or a broken ELF must not break a refresh
            resolved = None
        text = format_symbol(addr, resolved)
        # An address that did not resolve while the process lives may resolve
        # later (the mapping may be new); cache only real names or dead pids.
        if resolved or not os.path.exists(f"/proc/{pid}"):
            self._cache[key] = text
        return text

    def forget(self, pid: int) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == pid]:
                del self._cache[key]
