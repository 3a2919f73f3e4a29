"""Generate rseqtop's BPF program from the tracepoint formats present now.

The argument structs are written from the running kernel's format files
(offsets and sizes as the kernel says), and each optional event or field
becomes a HAVE_* define, so one source serves kernels with the older
`rseq_update` format or without `csd` events. Pure: tests feed saved formats.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from rseqtop import paths
from rseqtop.errors import UserError
from rseqtop.kernel import bpfsys
from rseqtop.kernel import facts as kernel
from rseqtop.kernel.tracefs import Format

# (system, event, required, fields the program reads, optional fields)
PROBES = (
    ("rseq", "rseq_ip_fixup", True, ("regs_ip", "start_ip", "post_commit_offset", "abort_ip"), ()),
    ("rseq", "rseq_update", True, ("cpu_id",), ("node_id", "mm_cid")),
    ("sched", "sched_switch", False, ("prev_pid", "prev_state"), ()),
    ("sched", "sched_migrate_task", False, ("pid", "orig_cpu", "dest_cpu"), ()),
    ("signal", "signal_deliver", False, ("sig",), ()),
    ("csd", "csd_function_entry", False, ("func",), ()),
    ("sched", "sched_process_exit", False, (), ("group_dead",)),
    ("syscalls", "sys_enter_rseq", False, ("flags", "rseq_len"), ()),
    ("syscalls", "sys_exit_rseq", False, ("ret",), ()),
    ("syscalls", "sys_enter_membarrier", False, ("cmd",), ()),
    ("syscalls", "sys_exit_membarrier", False, ("ret",), ()),
)
SYSCALL_EVENTS = ("sys_enter_rseq", "sys_exit_rseq", "sys_enter_membarrier", "sys_exit_membarrier")
# Events attached as pairs: one without the other is useless.
PAIRS = {"sys_enter_rseq": "sys_exit_rseq", "sys_enter_membarrier": "sys_exit_membarrier"}

_TYPES = {(1, False): "u8", (1, True): "s8", (2, False): "u16", (2, True): "s16",
          (4, False): "u32", (4, True): "s32", (8, False): "u64", (8, True): "s64"}


@dataclass(frozen=True)
class Plan:
    """What will be attached, and what is missing and why."""

    attach: tuple[tuple[str, str], ...]
    missing: tuple[str, ...]  # human lines: "csd:csd_function_entry (membarrier cause unavailable)"
    defines: dict = field(default_factory=dict)
    structs: str = ""
    raw: tuple[str, ...] = ()  # events attached as raw tracepoints
    # rseq_update is raw and its record has mm_cid: a second, regular program
    # (on_rseq_update_ids) reads it, attached only while someone looks.
    mm_cid_on_demand: bool = False
    # hot per-thread state in task-local storage (read back through pidfds)
    hot_storage: bool = False
    # events that also get a raw twin program, on_EVENT_twin, attached after
    # the regular one to TWIN_TRACEPOINTS[event] (6.19+, see "Twins" in
    # bpf/rseqtop.bpf.c)
    twins: tuple[str, ...] = ()

    def attachments(self) -> tuple[tuple[str, str, bool, str], ...]:
        """(system, event, raw, program) in attach order: the twins last,
        so that on each event their regular program runs first."""
        raw = set(self.raw)
        first = tuple((s, e, e in raw, f"on_{e}") for s, e in self.attach)
        twins = {twin_program(e): (s, TWIN_TRACEPOINTS.get(e, e), True, twin_program(e))
                 for s, e in self.attach if e in self.twins}  # one per raw tracepoint
        return first + tuple(twins.values())

    def has(self, event: str) -> bool:
        return any(e == event for _, e in self.attach)

    @property
    def unavailable_causes(self) -> tuple[str, ...]:
        """Abort causes this kernel cannot attribute: front ends show them as
        unavailable, never as zero."""
        return tuple(cause for event, cause in CAUSE_EVENTS.items() if not self.has(event))


CAUSE_EVENTS = {"sched_switch": "preempt", "sched_migrate_task": "migrate", "signal_deliver": "signal",
                "csd_function_entry": "membarrier"}
LOST = {
    "rseq_ip_fixup": "no abort can be seen",
    "rseq_update": "no per-thread rseq activity",
    "sched_switch": "preemption cause unavailable",
    "sched_migrate_task": "migration cause unavailable",
    "signal_deliver": "signal cause unavailable",
    "csd_function_entry": "membarrier cause unavailable",
    "sched_process_exit": "exited threads not folded into their process",
    "sys_enter_rseq": "registrations not counted",
    "sys_exit_rseq": "registrations not counted",
    "sys_enter_membarrier": "membarrier calls not counted",
    "sys_exit_membarrier": "membarrier calls not counted",
}


def arg_struct(fmt: Format, wanted: tuple[str, ...]) -> str:
    """A C struct with `wanted` fields at the kernel's offsets."""
    lines = [f"struct tp_{fmt.event} {{"]
    pos = 0
    pad = 0
    for f in sorted((fmt.field(n) for n in wanted), key=lambda f: f.offset):
        if f.offset > pos:
            lines.append(f"    u8 __pad{pad}[{f.offset - pos}];")
            pad += 1
        ctype = _TYPES.get((f.size, f.signed))
        if ctype is None:
            lines.append(f"    u8 {f.name}[{f.size}];")
        else:
            lines.append(f"    {ctype} {f.name};")
        pos = f.offset + f.size
    if pos == 0:
        lines.append("    u64 __common;")
    lines.append("};")
    return "\n".join(lines)


def task_report_mask(switch_fmt: Optional[Format]) -> int:
    """TASK_REPORT mask from sched_switch's print fmt: prev_state bits below
    it mean "not runnable"; the bit above (TASK_REPORT_MAX) means preempted."""
    if switch_fmt:
        m = re.search(r"REC->prev_state & \(\(\(\(([^)]*)\) \+ 1\) << 1\) - 1\)", switch_fmt.print_fmt)
        if m:
            bits = 0
            for num in re.findall(r"0x[0-9a-fA-F]+", m.group(1)):
                bits |= int(num, 16)
            return ((bits + 1) << 1) - 1
    return 0xFF


# Raw tracepoints skip the trace record that a regular tracepoint builds
# for each event, which is most of the cost at context-switch rates. Used
# where the program needs no argument or only leading scalar arguments:
# event -> (first kernel with that prototype, format fields that must lead,
# in this order, as the prototype's arguments do).
#
# From 6.19 tracepoint callbacks run under SRCU with preemption enabled, and
# a raw tracepoint's program only with migration disabled: preempted inside
# it, the next task on that CPU to hit the same tracepoint finds the
# program's per-CPU recursion guard taken, and the kernel skips the run
# (counted as a recursion miss). Events that fire in preemptible context
# (an abort or a signal delivered on the way to user space) then use the
# regular tracepoint, whose perf callback runs with preemption disabled,
# plus a raw twin: the regular program is skipped too while any bpf(2) map
# operation on that CPU is preempted (see "Twins" in the BPF program).
# rseq_update stays raw (a miss there costs an update count, never an
# abort), sched_switch and csd run with interrupts off.
PREEMPTIBLE_EVENTS = ("rseq_ip_fixup", "signal_deliver")
RAW = {
    "rseq_ip_fixup": ((4, 18), ("regs_ip", "start_ip", "post_commit_offset", "abort_ip")),
    "rseq_update": ((4, 18), ()),  # reads no argument: cpu and node are the current CPU's
    "sched_switch": ((5, 18), ()),  # (preempt, prev, next, prev_state) from 5.18
    "signal_deliver": ((4, 17), ("sig",)),
    "csd_function_entry": ((6, 3), ("func",)),
}


def raw_args_ok(fmt: Format, event: str, kernel_version: tuple) -> bool:
    """A raw program can read this event's arguments on this kernel."""
    since, leading = RAW[event]
    if kernel_version < since:
        return False
    own = [f.name for f in sorted(fmt.fields, key=lambda f: f.offset) if not f.name.startswith("common_")]
    return tuple(own[: len(leading)]) == leading


def preemptible(event: str, kernel_version: tuple) -> bool:
    return event in PREEMPTIBLE_EVENTS and kernel_version >= kernel.PREEMPTIBLE_TRACEPOINTS_SINCE


def raw_ok(fmt: Format, event: str, kernel_version: tuple) -> bool:
    return raw_args_ok(fmt, event, kernel_version) and not preemptible(event, kernel_version)


# From 6.19 every regular program is skipped while a bpf(2) map operation
# on its CPU is preempted, which loses a thread's exit (its record and its
# process's totals) or a counted rseq or membarrier call as surely as an
# abort. These events get a raw twin too; a syscall event's is on the
# raw_syscalls tracepoint (every system call: only with --syscalls).
TWIN_TRACEPOINTS = {"sched_process_exit": "sched_process_exit",
                    "sys_enter_rseq": "sys_enter", "sys_exit_rseq": "sys_exit",
                    "sys_enter_membarrier": "sys_enter", "sys_exit_membarrier": "sys_exit"}


def twin_program(event: str) -> str:
    """The raw twin's program: the syscall events' share one per raw
    tracepoint (bcc attaches one program to each)."""
    raw = TWIN_TRACEPOINTS.get(event, event)
    return f"on_{raw}_twin"


# The raw sys_enter has the saved user registers (struct pt_regs, the
# ptrace ABI): byte offsets of the first three syscall arguments there,
# and the syscall numbers. Architectures missing here go without syscall twins.
SYSCALL_ABI = {"x86_64": {"offsets": (112, 104, 96), "rseq": 334, "membarrier": 324}}


def twinned(event: str, kernel_version: tuple, machine: str) -> bool:
    """Whether a regular program of this (found) event gets a raw twin."""
    if kernel_version < kernel.PREEMPTIBLE_TRACEPOINTS_SINCE:
        return False
    if event in SYSCALL_EVENTS:
        return machine in SYSCALL_ABI
    return event in PREEMPTIBLE_EVENTS or event in TWIN_TRACEPOINTS


# Process slots (bpf/rseqtop.h): at most this much per-CPU memory, and no
# fewer slots than this (processes beyond them are summed by the task iterator).
SLOT_MEMORY = 16 << 20
MIN_SLOTS = 1024


def plan(formats: Callable[[str, str], Optional[Format]], ipi_rseq_addr: Optional[int],
         sizes: Optional[dict] = None, kernel_version: tuple = (0, 0), syscalls: bool = False,
         hot_storage: bool = False, uprobes: bool = False, stacks: bool = False,
         machine: Optional[str] = None) -> Plan:
    """What to attach on this kernel. The syscall tracepoints are attached
    only with `syscalls`: enabling any of them sends every system call on
    the machine through the kernel's slow path (docs/production.md has the
    measured cost), so counting membarrier and rseq calls is opt-in. hot_storage:
    the kernel has task-local storage for tracing programs and thread pidfds
    to read it with (see Collector)."""
    attach, missing, structs = [], [], []
    defines = default_sizes()
    # the successor ring has a slot range per CPU (see bpf/rseqtop.h)
    defines["RSEQTOP_NCPUS"] = bpfsys.cpu_id_bound()
    # the per-CPU slot counts (16 bytes a slot and CPU) kept within SLOT_MEMORY
    defines["RSEQTOP_MAX_SLOTS"] = min(defines["RSEQTOP_MAX_SLOTS"],
                                       max(MIN_SLOTS, SLOT_MEMORY // (16 * bpfsys.possible_cpus())))
    defines.update(sizes or {})
    found = {}
    for system, event, required, fields, optional in PROBES:
        if event in SYSCALL_EVENTS and not syscalls:
            continue
        fmt = formats(system, event)
        absent = [n for n in fields if fmt is None or not fmt.has(n)]
        if fmt is None or absent:
            why = "not in this kernel" if fmt is None else f"lacks field(s) {', '.join(absent)}"
            if required:
                raise UserError(f"tracepoint {system}:{event} {why}; rseqtop needs a kernel with rseq tracepoints "
                                f"(CONFIG_RSEQ, 4.18+); see 'rseqtop doctor'")
            missing.append(f"{system}:{event} ({why}: {LOST[event]})")
            continue
        if event == "csd_function_entry" and not ipi_rseq_addr:
            missing.append(f"{system}:{event} (ipi_rseq not in /proc/kallsyms: {LOST[event]})")
            continue
        have_opt = tuple(n for n in optional if fmt.has(n))
        for n in have_opt:
            defines[f"HAVE_{event.upper()}_{n.upper()}"] = 1
        found[event] = (system, fmt, fields + have_opt)
    for a, b in PAIRS.items():
        if (a in found) != (b in found):
            for e in (a, b):
                if e in found:
                    missing.append(f"{found[e][0]}:{e} (its pair is missing: {LOST[e]})")
                    del found[e]
    for event, (system, fmt, fields) in found.items():
        structs.append(arg_struct(fmt, fields))
        attach.append((system, event))
        if event not in ("rseq_ip_fixup", "rseq_update"):
            defines[f"HAVE_{event.upper()}"] = 1
    if "sys_enter_rseq" in found:
        defines["HAVE_SYS_RSEQ"] = 1
    if "sys_enter_membarrier" in found:
        defines["HAVE_SYS_MEMBARRIER"] = 1
    if "csd_function_entry" in found:
        defines["IPI_RSEQ_ADDR"] = f"0x{ipi_rseq_addr:x}ULL"
    sw = found.get("sched_switch")
    defines["TASK_REPORT_MASK"] = f"0x{task_report_mask(sw[1] if sw else None):x}"
    raw = tuple(e for e in RAW if e in found and raw_ok(found[e][1], e, kernel_version))
    for e in raw:
        defines[f"RAW_{e.upper()}"] = 1
    machine = machine or platform.machine()
    twins = tuple(e for e in found if twinned(e, kernel_version, machine)
                  and (e not in RAW or raw_args_ok(found[e][1], e, kernel_version)))
    for e in twins:
        defines[f"TWIN_{e.upper()}"] = 1
    if any(e in SYSCALL_EVENTS for e in twins):
        abi = SYSCALL_ABI[machine]
        for n, off in enumerate(abi["offsets"]):
            defines[f"SYSCALL_ARG{n}_OFFSET"] = off
        defines["NR_RSEQ"], defines["NR_MEMBARRIER"] = abi["rseq"], abi["membarrier"]
    on_demand = "rseq_update" in raw and "HAVE_RSEQ_UPDATE_MM_CID" in defines
    if hot_storage:
        defines["HOT_TASK_STORAGE"] = 1
    if uprobes:
        defines["RSEQTOP_UPROBES"] = 1  # abort-handler uprobes (see rseqtop.collect.uprobes)
    if stacks:
        defines["RSEQTOP_STACKS"] = 1  # abort user stacks (see rseqtop.collect.stacks)
    if kernel_version >= kernel.EXIT_CLEARS_SINCE:
        defines["RSEQTOP_EXIT_CLEARS"] = 1  # the cause rules of 6.19+ (see note_cause in the BPF program)
    return Plan(tuple(attach), tuple(missing), defines, "\n\n".join(structs), raw, on_demand, hot_storage, twins)


def source(p: Plan, bpf_dir: Optional[Path] = None) -> str:
    """The complete program text: defines, generated structs, then the
    shipped bpf/rseqtop.bpf.c with its header inlined."""
    bpf_dir = bpf_dir or paths.bpf_dir()
    header = (bpf_dir / "rseqtop.h").read_text()
    body = (bpf_dir / "rseqtop.bpf.c").read_text().replace('#include "rseqtop.h"', header)
    defs = "\n".join(f"#define {k} {v}" for k, v in sorted(p.defines.items()))
    return f"/* generated by rseqtop from this kernel's tracepoint formats */\n{defs}\n\n{p.structs}\n\n{body}"


def default_sizes(bpf_dir: Optional[Path] = None) -> dict[str, int]:
    """Map sizes (and ring buffer pages) as bpf/rseqtop.h sets them."""
    return {k: v for k, v in header_constants(bpf_dir).items()
            if k.startswith("RSEQTOP_MAX_") or k == "RSEQTOP_RINGBUF_PAGES"}


def header_constants(bpf_dir: Optional[Path] = None) -> dict[str, int]:
    """The integer #defines of bpf/rseqtop.h, for user space."""
    text = ((bpf_dir or paths.bpf_dir()) / "rseqtop.h").read_text()
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(r"^#define (RSEQTOP_\w+) (\d+|0x[0-9a-fA-F]+)\b", text, re.M)}
