"""`rseqtop doctor`: can this machine run rseqtop, and if not, how to fix it.

`gather()` reads the real system; `evaluate()` is a pure function of those
facts, so every verdict is unit-tested with the facts injected.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from rseqtop.errors import UserError
from rseqtop.kernel import bpfgen, kheaders
from rseqtop.kernel import facts as kernel
from rseqtop.kernel.tracefs import MOUNT_HINT

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"

# (system, event, required, what is lost without it): the program's own table
TRACEPOINTS = tuple((system, event, required, bpfgen.LOST[event]) for system, event, required, *_ in bpfgen.PROBES)


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class LoadResult:
    ok: bool
    seconds: float = 0.0
    events: int = 0
    error: str = ""


@dataclass
class CanaryResult:
    """The kernel canary: the bundled workload run for a fraction of a second
    with preemptions inside its sections (two threads on one CPU)."""

    ran: bool
    aborts: int = 0  # the workload's own count of kernel aborts (its abort handler)
    fixups: int = 0  # rseq_ip_fixup events of its process
    stale: int = 0  # aborts after which cpu_id_start still held the workload's sentinel
    error: str = ""  # why it did not run


@dataclass
class Facts:
    release: str
    euid: int
    caps: int
    bcc_version: Optional[str] = None
    bcc_error: str = ""
    libbcc: str = ""
    headers: Optional[kheaders.HeaderSource] = None
    tracefs_root: Optional[str] = None
    tracefs_error: str = ""
    tracepoints: dict = field(default_factory=dict)  # "sys:event" -> bool
    update_fields: tuple = ()
    glibc_rseq_size: int = -1
    glibc_tunables: str = ""
    membarrier_mask: Optional[int] = None
    hot_storage: Optional[bool] = None  # task-local storage + thread pidfds (None: not checked)
    uprobes: Optional[bool] = None  # the kernel takes uprobes (--uprobes; None: not checked)
    load: Optional[LoadResult] = None
    canary: Optional[CanaryResult] = None
    machine: str = field(default_factory=platform.machine)

    @property
    def version(self) -> tuple[int, int]:
        return kernel.kernel_version(self.release)


def evaluate(f: Facts) -> list[Check]:
    checks = []
    missing = kernel.missing_caps(f.caps, f.version)
    privileged = not missing
    if privileged:
        who = "root" if f.euid == 0 else "capabilities"
        checks.append(Check("privileges", PASS, f"running with {who}"))
    else:
        checks.append(Check("privileges", FAIL, f"missing {', '.join(missing)}",
                            "run as root (sudo rseqtop ...) or grant " + "+".join(missing)))

    if f.bcc_version:
        checks.append(Check("bcc", PASS, f"bcc {f.bcc_version} ({f.libbcc or 'libbcc'})"))
    else:
        checks.append(Check("bcc", FAIL, f.bcc_error or "bcc not importable",
                            "apt-get install python3-bpfcc (the PyPI package 'bcc' is unrelated)"))

    h = f.headers
    if h is None or h.kind == "missing":
        checks.append(Check("kernel headers", FAIL, "none found", kheaders.fix_hint(f.release)))
    elif h.kind == "generic":
        checks.append(Check("kernel headers", PASS, h.detail +
                            "; BPF programs read tracepoint arguments only, so mismatched headers are safe"))
    else:
        checks.append(Check("kernel headers", PASS, h.detail))

    if f.tracefs_root:
        checks.append(Check("tracefs", PASS, f"mounted at {f.tracefs_root}"))
    else:
        checks.append(Check("tracefs", FAIL if privileged else SKIP, f.tracefs_error or "not mounted",
                            MOUNT_HINT if privileged else "run as root"))

    for system, event, required, lost in TRACEPOINTS:
        name = f"{system}:{event}"
        if not f.tracefs_root:
            checks.append(Check(f"tracepoint {name}", SKIP, "tracefs not readable", "see the tracefs check"))
        elif f.tracepoints.get(name):
            checks.append(Check(f"tracepoint {name}", PASS, "present"))
        elif required:
            checks.append(Check(f"tracepoint {name}", FAIL, f"missing: {lost}",
                                "needs a kernel built with CONFIG_RSEQ and CONFIG_TRACEPOINTS (4.18+)"))
        else:
            hint = "needs CONFIG_FTRACE_SYSCALLS" if system == "syscalls" else "needs a kernel that has this event"
            checks.append(Check(f"tracepoint {name}", WARN, f"missing: {lost}", hint))

    era = kernel.rseq_era(f.version, tuple(f.update_fields))
    checks.append(Check("rseq era", PASS, f"kernel {f.release}: {era.description}"))

    tun = f" (GLIBC_TUNABLES={f.glibc_tunables})" if f.glibc_tunables else ""
    if f.glibc_rseq_size > 0:
        checks.append(Check("glibc rseq", PASS, f"glibc registers rseq for new threads (__rseq_size={f.glibc_rseq_size}){tun}"))
    elif f.glibc_rseq_size == 0:
        fix = "unset GLIBC_TUNABLES=glibc.pthread.rseq=0 to see glibc's registrations" if "rseq=0" in f.glibc_tunables \
            else "only programs that register rseq themselves will show up"
        checks.append(Check("glibc rseq", WARN, f"glibc does not register rseq{tun}", fix))
    else:
        checks.append(Check("glibc rseq", WARN, "glibc predates rseq support (< 2.35)",
                            "only programs that register rseq themselves will show up"))

    if f.membarrier_mask is None:
        checks.append(Check("membarrier", WARN, "MEMBARRIER_CMD_QUERY failed", "kernel built without CONFIG_MEMBARRIER"))
    else:
        names = kernel.membarrier_names(f.membarrier_mask)
        rseq_ok = all(f.membarrier_mask & c for c in kernel.MEMBARRIER_RSEQ_CMDS)
        detail = f"supported: {', '.join(names) or 'none'}"
        if rseq_ok:
            checks.append(Check("membarrier", PASS, detail + " (RSEQ commands available)"))
        else:
            checks.append(Check("membarrier", WARN, detail + " (no PRIVATE_EXPEDITED_RSEQ)",
                                "needs CONFIG_RSEQ and CONFIG_MEMBARRIER (5.10+)"))

    if f.hot_storage:
        checks.append(Check("per-thread state", PASS, "task-local storage, process totals kept per process slot "
                                                      "(no hash lookup per context switch, no per-thread "
                                                      "read per poll)"))
    elif f.hot_storage is not None:
        checks.append(Check("per-thread state", WARN, "in a hash map (kernel before 6.9 or without BTF): "
                                                      "two hash lookups per context switch of a thread with rseq",
                            "a 6.9+ kernel with CONFIG_DEBUG_INFO_BTF makes rseqtop cheaper; it works either way"))

    if f.uprobes is not None:
        checks.append(uprobes_check(f.uprobes, f.machine))

    checks += canary_checks(f)

    if f.load is None:
        checks.append(Check("bpf load", SKIP, "not attempted (needs privileges, bcc, headers and tracefs)",
                            "fix the failures above"))
    elif f.load.ok:
        checks.append(Check("bpf load", PASS, f"compiled and attached to rseq:rseq_update in {f.load.seconds:.2f} s, "
                                              f"saw {f.load.events} event(s), detached"))
    else:
        checks.append(Check("bpf load", FAIL, f.load.error, "run 'rseqtop doctor' as root; check the headers line"))
    return checks


def uprobes_check(available: bool, machine: str) -> Check:
    """--uprobes: needs the kernel's uprobes and a known RSEQ_SIG for this
    machine (handlers are verified by it before anything is attached)."""
    if not available:
        return Check("uprobes", WARN, "the kernel takes no uprobes: --uprobes (user-detected aborts) unavailable",
                     "needs a kernel with CONFIG_UPROBE_EVENTS; kernel aborts are counted either way")
    if machine not in kernel.RSEQ_SIGS:
        return Check("uprobes", WARN, f"uprobes available, but no known RSEQ_SIG for {machine}: "
                                      "--uprobes finds no handler to verify", "x86_64 and aarch64 only")
    return Check("uprobes", PASS, "available: --uprobes counts the sections' own cpu_id-mismatch retries "
                                  "(a uprobe at each verified abort handler)")


def canary_checks(f: Facts) -> list:
    """(a) the kernel aborts sections, exactly once per rseq_ip_fixup;
    (b) it rewrites cpu_id_start after every abort, as tcmalloc needs."""
    known = kernel.known_rseq_breakage(f.release, f.machine)
    c = f.canary
    if c is None or not c.ran:
        why = c.error if c is not None and c.error else "not run (needs the BPF load check to pass)"
        if known:
            return [Check("kernel canary", WARN, f"{why}; kernel {f.release} is in a known-broken range: "
                                                 + "; ".join(known), "upgrade the kernel")]
        return [Check("kernel canary", SKIP if c is None else WARN, why, "fix the failures above")]
    out = []
    if c.aborts > 0 and c.aborts == c.fixups:
        out.append(Check("kernel aborts", PASS, f"{c.aborts} aborts of the bundled workload's sections, "
                                                f"{c.fixups} rseq_ip_fixup events"))
    else:
        arm = f" ({kernel.ARM64_FIX})" if f.machine == "aarch64" else ""
        what = "aborted no section" if c.aborts == 0 else f"aborted {c.aborts} sections but reported {c.fixups}"
        out.append(Check("kernel aborts", FAIL, f"kernel {f.release} {what} while two threads preempted each "
                                                f"other inside them{arm}",
                         "upgrade the kernel" + (f": {kernel.ARM64_FIX}" if arm else "")))
    if c.aborts and c.stale == 0:
        out.append(Check("cpu_id_start", PASS, f"rewritten by the kernel after all {c.aborts} aborts"))
    elif c.aborts:
        out.append(Check("cpu_id_start", FAIL, f"kernel {f.release} left cpu_id_start unchanged after {c.stale} of "
                                               f"{c.aborts} aborts: tcmalloc and other programs that rely on it "
                                               f"break", f"upgrade the kernel: {kernel.CPU_ID_START_FIX}"))
    return out


LOAD_PROGRAM = r"""
BPF_ARRAY(seen, u64, 1);
BPF_HASH(fixups, u32, u64, 64);
TRACEPOINT_PROBE(rseq, rseq_update) {
    int zero = 0;
    u64 *v = seen.lookup(&zero);
    if (v) __sync_fetch_and_add(v, 1);
    return 1;
}
TRACEPOINT_PROBE(rseq, rseq_ip_fixup) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 zero = 0, *v = fixups.lookup_or_try_init(&tgid, &zero);
    if (v) __sync_fetch_and_add(v, 1);
    return 1;
}
"""
# Two threads on one CPU preempt each other, mostly inside the long delay
# section; every attempt first writes a sentinel into cpu_id_start.
CANARY_ARGS = ["--threads", "2", "--cpus", "0", "--op", "delay", "--in-cs-delay", "20000",
               "--duration", "0.4", "--check-cpu-id-start"]


def run_canary(prog) -> CanaryResult:
    """The bundled workload under `prog` (LOAD_PROGRAM, attached)."""
    from rseqtop import workload

    try:
        summary = workload.run(CANARY_ARGS, timeout=60)
    except UserError as err:
        return CanaryResult(False, error=f"the bundled workload did not run: {err}")
    totals = summary["totals"]
    v = prog["fixups"].get(prog["fixups"].Key(summary["pid"]))
    return CanaryResult(True, totals["aborts"], v.value if v is not None else 0,
                        totals.get("cpu_id_start_stale", 0))


def try_load(timeout: float = 3.0, canary: bool = False) -> tuple:
    """(LoadResult, CanaryResult or None)."""
    from rseqtop.kernel.bccimport import CFLAGS, import_bcc

    bcc = import_bcc()
    t0 = time.monotonic()
    try:
        prog = bcc.BPF(text=LOAD_PROGRAM.encode(), cflags=CFLAGS)
    except Exception as err:  # bcc raises bare Exception on compile/attach errors
        return LoadResult(False, error=f"compile/attach failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"), None
    elapsed = time.monotonic() - t0
    try:
        deadline = time.monotonic() + timeout
        events = 0
        while time.monotonic() < deadline:
            time.sleep(0.02)  # returning from sleep is a notify-resume for us
            events = sum(v.value for v in prog["seen"].values())
            if events:
                break
        if not events:
            return LoadResult(False, elapsed, 0, f"attached but no rseq_update event within {timeout:.0f} s"), None
        return LoadResult(True, elapsed, events), run_canary(prog) if canary else None
    finally:
        prog.cleanup()


def gather(attempt_load: bool = True, canary: bool = True) -> Facts:
    from rseqtop.kernel import tracefs

    release = platform.release()
    f = Facts(release=release, euid=os.geteuid(), caps=kernel.effective_caps())
    privileged = not kernel.missing_caps(f.caps, f.version)
    try:
        from rseqtop.kernel.bccimport import import_bcc, libbcc_path

        bcc = import_bcc()
        f.bcc_version = getattr(bcc, "__version__", "unknown")
        f.libbcc = libbcc_path()
    except UserError as err:
        f.bcc_error = str(err)
    try:
        f.headers = kheaders.locate(release, build_generic=privileged or os.access(str(_cache_parent()), os.W_OK))
    except OSError as err:
        f.headers = kheaders.HeaderSource("missing", None, f"could not build merged headers: {err}")
    try:
        root = tracefs.ensure_root(may_mount=privileged)
        f.tracefs_root = str(root)
        fs = tracefs.TraceFS(root)
        for system, event, _, _ in TRACEPOINTS:
            f.tracepoints[f"{system}:{event}"] = fs.has(system, event)
        upd = fs.format("rseq", "rseq_update")
        f.update_fields = tuple(x.name for x in upd.fields if not x.name.startswith("common_")) if upd else ()
    except UserError as err:
        f.tracefs_error = str(err)
    f.glibc_tunables = os.environ.get("GLIBC_TUNABLES", "")
    f.glibc_rseq_size = kernel.glibc_rseq_size()
    f.membarrier_mask = kernel.membarrier_query()
    f.hot_storage = kernel.hot_storage_usable(release)
    f.uprobes = kernel.uprobes_available(Path(f.tracefs_root) if f.tracefs_root else None)
    ready = privileged and f.bcc_version and f.headers and f.headers.kind != "missing" and \
        f.tracepoints.get("rseq:rseq_update")
    if attempt_load and ready:
        kheaders.export_for_bcc(f.headers)
        f.load, f.canary = try_load(canary=canary)
    return f


def _cache_parent():
    from rseqtop import paths

    try:
        return paths.cache_dir()
    except OSError:
        return "/nonexistent"


EPILOG = """examples:
  rseqtop doctor          # one line per check, exit 0 when rseqtop can run
  rseqtop doctor --json   # the same as one JSON object

The kernel canary runs the bundled workload for 0.4 s (two threads preempting
each other inside critical sections) and checks that the kernel aborted each
section once per rseq_ip_fixup event and rewrote cpu_id_start after each abort."""


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    parser.add_argument("--no-load", action="store_true",
                        help="skip the real BPF compile/attach check and the kernel canary")


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        line = f"{c.status:<4}  {c.name:<{width}}  {c.detail}"
        if c.status != PASS and c.fix:
            line += f"  -> fix: {c.fix}"
        lines.append(line)
    return "\n".join(lines)


def run(args) -> int:
    facts = gather(attempt_load=not args.no_load)
    checks = evaluate(facts)
    if args.no_load:
        checks = [c for c in checks if c.name != "bpf load" and not (c.name == "kernel canary" and c.status == SKIP)]
    ok = not any(c.status in (FAIL, SKIP) for c in checks)
    if args.json:
        doc = {"ok": ok, "kernel": facts.release, "checks": [asdict(c) for c in checks]}
        if facts.load:
            doc["bpf_load_seconds"] = round(facts.load.seconds, 3)
        print(json.dumps(doc, indent=2))
    else:
        print(render(checks))
        missing = kernel.missing_caps(facts.caps, facts.version)
        if missing:
            sys.stderr.write(f"rseqtop doctor: not privileged: missing {', '.join(missing)}; run as root\n")
    return 0 if ok else 1
