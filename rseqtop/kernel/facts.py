"""Facts about the running kernel and libc that decide how rseqtop works."""

from __future__ import annotations

import os
import platform
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rseqtop.kernel import linux
from rseqtop.kernel.linux import CAP_BPF, CAP_NAMES, CAP_PERFMON, CAP_SYS_ADMIN

MEMBARRIER_CMDS = {
    0: "QUERY",
    1: "GLOBAL",
    2: "GLOBAL_EXPEDITED",
    4: "REGISTER_GLOBAL_EXPEDITED",
    8: "PRIVATE_EXPEDITED",
    16: "REGISTER_PRIVATE_EXPEDITED",
    32: "PRIVATE_EXPEDITED_SYNC_CORE",
    64: "REGISTER_PRIVATE_EXPEDITED_SYNC_CORE",
    128: "PRIVATE_EXPEDITED_RSEQ",
    256: "REGISTER_PRIVATE_EXPEDITED_RSEQ",
    512: "GET_REGISTRATIONS",
}
MEMBARRIER_RSEQ_CMDS = (128, 256)


def kernel_version(release: Optional[str] = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def kernel_version3(release: Optional[str] = None) -> tuple[int, int, int]:
    """(major, minor, patch) of a release such as "7.0.9-amd64" (Debian's
    bookworm names its 6.1 kernels "6.1.0-N": patch 0 there)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release or platform.release())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else (0, 0, 0)


# From 6.19 the kernel clears its rseq event on every return to user space
# (no stale causes) and rseq_update fires only when it writes the IDs.
EXIT_CLEARS_SINCE = (6, 19)
# From 6.19 tracepoint callbacks may be preempted ("tracing: Guard
# __DECLARE_TRACE() use of __DO_TRACE_CALL() with SRCU-fast"), raw
# tracepoint programs included: see bpfgen.PREEMPTIBLE_EVENTS.
PREEMPTIBLE_TRACEPOINTS_SINCE = (6, 19)
# From 7.0.10 (so 7.1 and later too) a 32-byte registration is "legacy" (IDs
# rewritten after every switch, as tcmalloc needs) and a longer one "V2".
LEGACY_SPLIT_SINCE = (7, 0, 10)
ARM64_ABORTS_FIXED_IN = (7, 0, 14)

CPU_ID_START_FIX = ('fixed in 7.0.10 and 7.1 by "rseq: Revert to historical performance killing behaviour" '
                    '(google/tcmalloc issue 292)')
ARM64_FIX = 'fixed in 7.0.14 by "arm64/entry: Fix arm64-specific rseq brokenness"'


def ids_written_lazily(release: Optional[str] = None, abi: str = "legacy") -> bool:
    """Whether the kernel writes a registration's IDs (and fires
    rseq_update) only when they change, rather than after every context
    switch: from 6.19 for every registration, from 7.0.10 only for V2 ones
    (longer than 32 bytes)."""
    v = kernel_version3(release)
    if v[:2] < EXIT_CLEARS_SINCE:
        return False
    return abi == "v2" if v >= LEGACY_SPLIT_SINCE else True


def known_rseq_breakage(release: Optional[str] = None, machine: Optional[str] = None) -> list[str]:
    """What this kernel version is known to get wrong about rseq, from its
    version alone (doctor's canary checks the kernel itself where it can)."""
    v = kernel_version3(release)
    machine = machine or platform.machine()
    out = []
    if v[:2] >= EXIT_CLEARS_SINCE and v < LEGACY_SPLIT_SINCE:
        out.append(f"6.19 to 7.0.9 do not rewrite cpu_id_start after every preemption (tcmalloc crashes); "
                   f"{CPU_ID_START_FIX}")
    if machine == "aarch64" and v[:2] >= EXIT_CLEARS_SINCE and v < ARM64_ABORTS_FIXED_IN:
        out.append(f"arm64 6.19 to 7.0.13 miss aborts after a preemption on the same CPU; {ARM64_FIX}")
    return out


@dataclass(frozen=True)
class Era:
    name: str  # "classic", "rewrite", "v2"
    description: str


def rseq_era(version: tuple[int, int], update_fields: tuple[str, ...] = ()) -> Era:
    """Which rseq implementation the kernel has (see docs/kernels.md)."""
    ids = "+".join(f for f in ("cpu_id", "node_id", "mm_cid") if f in update_fields) or "none"
    if version >= (7, 0):
        return Era("v2", f"7.x: 32-byte registrations legacy, larger ones V2 (lazy updates); rseq_update fields {ids}")
    if version >= EXIT_CLEARS_SINCE:
        return Era("rewrite", f"6.19+ rewrite: rseq_ip_fixup after the IP is set, rseq_update only when IDs are written; fields {ids}")
    return Era("classic", f"up to 6.18: rseq_ip_fixup once per abort, rseq_update on every notify-resume; fields {ids}")


AT_RSEQ_FEATURE_SIZE, AT_RSEQ_ALIGN = 27, 28  # auxiliary vector entries, 6.3+


def auxv(entry: int, path: str = "/proc/self/auxv") -> int:
    """An entry of this process's auxiliary vector (0 when absent)."""
    data = Path(path).read_bytes()
    for off in range(0, len(data) - 15, 16):
        key, value = struct.unpack_from("=QQ", data, off)
        if key == entry:
            return value
    return 0


def extended_rseq() -> bool:
    """Whether the kernel takes rseq areas longer than the original 32 bytes
    (V2 registrations; 6.3+ announces the feature size in the auxv)."""
    return auxv(AT_RSEQ_FEATURE_SIZE) > 0


def effective_caps(status_text: Optional[str] = None) -> int:
    return linux.proc_status("/proc/self/status", status_text)["CapEff"]


def missing_caps(caps: int, version: tuple[int, int]) -> list[str]:
    """Capabilities still needed to load and attach rseqtop's programs."""
    if caps & (1 << CAP_SYS_ADMIN) and version < (5, 8):
        return []
    needed = [CAP_BPF, CAP_PERFMON] if version >= (5, 8) else [CAP_SYS_ADMIN]
    # Tracepoint attachment and the bpf() map/program types rseqtop uses still
    # need CAP_SYS_ADMIN where kernel.perf_event_paranoid or unprivileged BPF
    # settings demand it; CAP_SYS_ADMIN alone also covers everything.
    if caps & (1 << CAP_SYS_ADMIN):
        return []
    return [CAP_NAMES[c] for c in needed if not caps & (1 << c)]


def membarrier_query() -> Optional[int]:
    nr = linux.syscall_number("membarrier")
    if nr is None:
        return None
    ret = linux.LIBC.syscall(nr, 0, 0, 0)
    return None if ret < 0 else ret


def membarrier_names(mask: int) -> list[str]:
    return [name for bit, name in MEMBARRIER_CMDS.items() if bit and mask & bit]


GLIBC_PROBE = (
    "import ctypes\n"
    "try:\n"
    "    print(ctypes.c_uint.in_dll(ctypes.CDLL(None), '__rseq_size').value)\n"
    "except ValueError:\n"
    "    print(-1)\n"
)


def glibc_rseq_size(env: Optional[dict] = None) -> int:
    """`__rseq_size` in a fresh child: >0 when glibc registers rseq per thread,
    0 when it does not (tunable or kernel), -1 when libc predates rseq."""
    out = subprocess.run([sys.executable, "-c", GLIBC_PROBE], capture_output=True, text=True,
                         env=env if env is not None else os.environ.copy(), timeout=30)
    try:
        return int(out.stdout.strip())
    except ValueError:
        return -1


def kallsyms_address(symbol: str, path: str = "/proc/kallsyms") -> Optional[int]:
    """Address of a kernel text symbol; None when absent or hidden (kptr_restrict)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == symbol:
                    addr = int(parts[0], 16)
                    return addr or None
    except OSError:
        return None
    return None


def cpu_nodes(root: Path = Path("/sys/devices/system/node")) -> dict[int, int]:
    """CPU number -> NUMA node, from sysfs (empty without NUMA information:
    callers take node 0)."""
    out: dict[int, int] = {}
    for node_dir in root.glob("node[0-9]*"):
        try:
            text = (node_dir / "cpulist").read_text().strip()
        except OSError:
            continue
        node = int(node_dir.name[4:])
        for part in filter(None, text.split(",")):
            lo, _, hi = part.partition("-")
            for cpu in range(int(lo), int(hi or lo) + 1):
                out[cpu] = node
    return out


def hot_storage_usable(release: Optional[str] = None) -> bool:
    """Whether rseqtop can keep per-thread hot state in task-local storage:
    tracing programs may use it from 5.11 (with the kernel's BTF), and user
    space reads it through pidfds of single threads, from 6.9."""
    from rseqtop.kernel import taskstorage

    return kernel_version(release) >= (6, 9) and Path("/sys/kernel/btf/vmlinux").exists() \
        and taskstorage.thread_pidfds_supported()


# The signature word before every abort handler, by machine (librseq's
# RSEQ_SIG): --uprobes attaches only after it, elsewhere it cannot check.
RSEQ_SIGS = {"x86_64": 0x53053053, "aarch64": 0xD428BC00}
UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe/type")


def uprobes_available(tracefs_root: Optional[Path] = None) -> bool:
    """Whether the kernel takes uprobes (CONFIG_UPROBE_EVENTS): the perf
    uprobe PMU that bcc uses first, or tracefs's uprobe_events."""
    if UPROBE_PMU.exists():
        return True
    return tracefs_root is not None and (Path(tracefs_root) / "uprobe_events").exists()
