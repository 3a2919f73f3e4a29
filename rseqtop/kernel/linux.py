"""Linux glue in one place: the libc handle, system call numbers by
architecture, capability numbers, and /proc/*/status and comm. Every module that
calls into libc or reads credentials goes through here."""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path
from typing import Optional

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
LIBC.prctl.restype = ctypes.c_int

# System call numbers by architecture (the generic table's on arm64, riscv
# and loongarch). An architecture not listed gets None: callers then do
# without that call, never use another architecture's number.
_SYSCALLS = {
    "bpf": {"x86_64": 321, "aarch64": 280, "riscv64": 280, "loongarch64": 280},
    "membarrier": {"x86_64": 324, "aarch64": 283, "riscv64": 283, "loongarch64": 283},
    "perf_event_open": {"x86_64": 298, "aarch64": 241, "riscv64": 241, "loongarch64": 241},
}


def syscall_number(name: str, machine: Optional[str] = None) -> Optional[int]:
    return _SYSCALLS[name].get(machine or os.uname().machine)


CAP_DAC_READ_SEARCH = 2
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
CAP_NAMES = {CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}


def proc_status(path: str = "/proc/thread-self/status", text: Optional[str] = None) -> dict:
    """Credentials of this thread (or of any task, given its status path or
    text): capability sets as ints, Uid/Gid tuples, NoNewPrivs."""
    text = text if text is not None else Path(path).read_text()
    out: dict = {}
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        m = re.search(rf"^{key}:\s*([0-9a-fA-F]+)", text, re.M)
        out[key] = int(m.group(1), 16) if m else 0
    for key in ("Uid", "Gid"):
        m = re.search(rf"^{key}:\s*(.*)$", text, re.M)
        out[key] = tuple(int(x) for x in m.group(1).split()) if m else ()
    m = re.search(r"^NoNewPrivs:\s*(\d+)", text, re.M)
    out["NoNewPrivs"] = int(m.group(1)) if m else 0
    return out


# glibc's malloc: each thread that allocates gets an arena of its own, and
# memory freed in one stays there; a long-running exporter whose threads
# build large bodies then holds several heaps' worth. Absent (musl): no-ops.
M_ARENA_MAX = -8


def proc_comm(pid: int, proc: str = "/proc") -> Optional[str]:
    """A process's name now (undecodable bytes escaped); None when it is gone."""
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", errors="backslashreplace")
    except OSError:
        return None


def one_malloc_arena() -> None:
    """All threads allocate from one heap (call before starting threads;
    forked children inherit it)."""
    if hasattr(LIBC, "mallopt"):
        LIBC.mallopt(M_ARENA_MAX, 1)


def release_free_memory() -> None:
    """Give the heap's free pages back to the kernel (what a scrape's
    temporary objects left), so that RSS follows what is in use."""
    if hasattr(LIBC, "malloc_trim"):
        LIBC.malloc_trim(0)
