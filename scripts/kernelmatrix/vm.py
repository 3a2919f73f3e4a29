"""Boot one unpacked kernel with virtme-ng under QEMU TCG and run a command in it.

The guest is the host's own root filesystem, read-only over 9p, with
writable tmpfs overlays from virtme-ng (/etc, /usr, /var, /tmp, /home ...:
writes there vanish with the VM). Inside the guest /var/cache is an empty
tmpfs and /lib/modules a tmpfs holding one link, /lib/modules/<release> ->
<kernel tree>/[usr/]lib/modules/<release>; the kernel tree lives under
/var/cache on the host, so it is exported again with --rodir at the same
path, which makes that link and its build/source links resolve. The output
directory and the shared cache directory are exported read-write (--rwdir)
at their host paths. Everything else of the host, the repository and /root
included, is read-only in the guest (so HOME becomes /tmp/home there).

KVM is always disabled: /dev/kvm on this project's machines is a software
KVM that cannot run stock kernels, and TCG works everywhere (about 10x
slower than the host).

The command runs from the repository root under /bin/sh through a small
script written to the output directory. The script prints a start marker
(with `uname -r` and the guest's uptime) and an end marker with the
command's exit status, so the host can tell "the VM did not boot" from "the
command failed" and can time the boot; virtme-ng's own exit status (which
it takes from the guest through a virtio port) is checked against it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

from . import UserError, log
from .fetch import Kernel

START = "@@kernels:start"
END = "@@kernels:end"
DEFAULT_MEMORY = "4G"
DEFAULT_CPUS = 2

# Modules that udev's coldplug in the guest would load for QEMU's q35
# devices and `-cpu max` features (AHCI and the CD-ROM, kvm for the emulated
# SVM/VMX, watchdogs, SMBus, input, crypto accelerations). None is needed
# here, and under TCG loading them took 15-18 s of every boot (udev settle:
# ~17 s -> ~3 s without them). modprobe.blacklist only stops loading by
# alias (udev, request_module); `modprobe NAME` in the guest still works.
UDEV_BLACKLIST = (
    "kvm,kvm_amd,kvm_intel,irqbypass,ahci,libahci,libata,sr_mod,cdrom,sg,"
    "psmouse,serio_raw,evdev,pcspkr,button,iTCO_wdt,iTCO_vendor_support,i6300esb,"
    "lpc_ich,i2c_i801,i2c_smbus,intel_pmc_bxt,qemu_fw_cfg,ccp,aesni_intel,"
    "ghash_clmulni_intel,polyval_clmulni,sha512_ssse3,sha256_ssse3,sha1_ssse3,"
    "crc32c_intel,crc32_pclmul,crct10dif_pclmul,sm4_aesni_avx_x86_64,"
    "sm4_aesni_avx2_x86_64,aria_aesni_avx_x86_64,camellia_aesni_avx2,"
    "serpent_avx2,twofish_avx_x86_64,cast6_avx_x86_64,des3_ede_x86_64,"
    "blowfish_x86_64,chacha_x86_64,poly1305_x86_64,curve25519_x86_64,"
    "nhpoly1305_avx2,rapl,intel_rapl_msr,intel_rapl_common,powernow_k8,"
    "acpi_cpufreq,edac_core,amd64_edac,joydev,floppy,parport_pc,bochs,drm"
)


# Each first probe on a tracepoint (and each last one gone) live-patches its
# call sites, with int3, while the other vCPU may be running them; QEMU TCG
# sometimes lets that vCPU hit the int3 afterwards, an Oops (seen in
# __schedule on 7.2, about one run in three, each costing a whole second
# boot). So the events rseqtop attaches to keep an ftrace probe for the
# whole VM, with tracing off (nothing recorded): tests attaching and
# detaching never patch those sites again. rseqtop's programs see the same
# events either way.
PINNED_EVENTS = ("rseq/rseq_ip_fixup", "rseq/rseq_update", "sched/sched_switch", "sched/sched_migrate_task",
                 "signal/signal_deliver", "csd/csd_function_entry", "sched/sched_process_exit")
# perf's task-bound events turn a static key in __schedule on and off
# (perf_sched_events, perf_event_task_sched_in/out): the same Oops, seen
# twice in one 7.2 run with "Comm: perf" at __schedule+0x38a, when the test
# that runs `perf stat -- workload` started. One idle task-bound perf event
# (a dummy event on pid 1) keeps that key on for the whole VM. All of this
# patching is done with the other vCPUs offline: pinning while they ran
# __schedule panicked both boots of one 7.2 run ("Comm: perf" again).
PIN_PATCH_SITES = (
    "c=/sys/devices/system/cpu; for o in $c/cpu[1-9]*/online; do [ -e $o ] && echo 0 > $o; done\n"
    "t=/sys/kernel/tracing; [ -e $t/tracing_on ] || mount -t tracefs nodev $t; echo 0 > $t/tracing_on\n"
    f"for e in {' '.join(PINNED_EVENTS)}; do [ -e $t/events/$e/enable ] && echo 1 > $t/events/$e/enable; done\n"
    "if command -v perf > /dev/null; then (perf stat -e dummy -p 1 > /dev/null 2>&1 &)\n"
    "  for i in 1 2 3 4 5 6 7 8 9 10; do pgrep -x perf > /dev/null && break; sleep 0.2; done; sleep 1; fi\n"
    "for o in $c/cpu[1-9]*/online; do [ -e $o ] && echo 1 > $o; done"
)


# The guest's root is 9p without a cache; from about 6.8 (9p on netfs) no
# read of it stays in the guest's page cache, so every process that compiles
# with bcc read libLLVM and libclang-cpp again over 9p (measured on 7.2: 10 s
# per 110 MB read under TCG; 0.3 s on 6.1). /usr is a tmpfs overlay in the
# guest: opening a file for writing once copies it up into guest memory,
# where every later process maps it from. Only files a compile touches at
# least COPY_UP_MIN_RSS of are copied (the others cost more to copy than
# their few pages cost to read): measured on the 7.2 suite, 863 -> 770 s.
COPY_UP_UNDER = "/usr/"
COPY_UP_MIN_RSS = 1 << 20

# Run by the venv's python on the host: per mapped file, the bytes resident
# after importing bcc and compiling an empty program (import only, where
# compiling fails)
_RSS_PROBE = """
import collections
from rseqtop.collect.loader import compile_program
from rseqtop.kernel.bccimport import import_bcc
try:
    compile_program(import_bcc(), "int f(void *ctx) { return 0; }")
except Exception:
    pass
rss, path = collections.Counter(), None
for line in open("/proc/self/smaps"):
    f = line.split()
    if len(f) >= 5 and "-" in f[0] and ":" in f[3]:
        path = f[5] if len(f) > 5 and f[5].startswith("/") else None
    elif f and f[0] == "Rss:" and path:
        rss[path] += int(f[1]) * 1024
for p, n in rss.items():
    print(n, p)
"""


def bcc_libraries(repo: Path) -> List[str]:
    """The files under COPY_UP_UNDER that a bcc compile on the host touches
    at least COPY_UP_MIN_RSS of (libLLVM, libclang-cpp, python, libbcc ...)."""
    py = repo / ".venv" / "bin" / "python"
    try:
        out = subprocess.run([str(py if py.exists() else sys.executable), "-c", _RSS_PROBE], cwd=str(repo),
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return []
    files = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        n, _, path = line.partition(" ")
        if n.isdigit() and int(n) >= COPY_UP_MIN_RSS and path.startswith(COPY_UP_UNDER) and os.path.isfile(path):
            files.append(path)
    return sorted(files)


def copies_up(release: str) -> bool:
    """Before 6.8 (9p not yet on netfs) the guest's page cache keeps what 9p
    read, and copying cost 20-25 s of a 6.1 boot for nothing."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return not m or (int(m.group(1)), int(m.group(2))) >= (6, 8)


def copy_up_script(files: List[str]) -> str:
    if not files:
        return ""
    return ("for f in " + " ".join(shlex.quote(f) for f in files) + "; do : >> \"$f\" 2>/dev/null; done\n"
            "echo \"copied bcc's libraries into guest memory by $(cut -d' ' -f1 /proc/uptime)\"\n")


@dataclasses.dataclass
class VMResult:
    suite: str
    release: str  # expected (from the packages)
    uname: Optional[str]  # `uname -r` inside the guest; None if it never booted
    booted: bool
    exit_status: Optional[int]  # the command's exit status; None if it never ended
    timed_out: bool
    boot_seconds: Optional[float]  # host wall clock from launch to the command's start
    guest_uptime: Optional[float]  # guest's /proc/uptime when the command started
    command_seconds: Optional[float]
    total_seconds: float  # launch to VM exit
    vng_status: Optional[int]  # exit status of vng itself
    outdir: Path
    error: str = ""  # one line when something went wrong outside the command

    @property
    def ok(self) -> bool:
        return self.booted and self.exit_status == 0 and not self.timed_out and not self.error

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["outdir"] = str(self.outdir)
        d["ok"] = self.ok
        return d


def find_vng(repo: Path) -> Path:
    """vng from the project's venv (installed by `scripts/setup test`) or PATH."""
    cands = [Path(sys.executable).parent / "vng", repo / ".venv/bin/vng"]
    w = shutil.which("vng")
    if w:
        cands.append(Path(w))
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK) and (c.parent / "virtme-run").exists():
            return c
    raise UserError("virtme-ng (vng) not found: run `scripts/setup test` (it installs the test extras into .venv)")


def check_host() -> None:
    missing = [b for b in ("qemu-system-x86_64", "busybox", "depmod") if not shutil.which(b) and not os.path.exists(f"/sbin/{b}")]
    if missing:
        raise UserError(f"{', '.join(missing)} not found: run `scripts/setup test` (it installs qemu-system-x86 busybox-static udev kmod)")


def guest_script(command: str, repo: Path, outdir: Path, cache_dir: Path, suite: str,
                 copy_up: Optional[List[str]] = None) -> str:
    q = shlex.quote
    # the guest does not inherit the host's environment: pass CI on, since
    # the project's tests refuse to skip BPF tests when CI=true
    ci = f"export CI={q(os.environ['CI'])}\n" if os.environ.get("CI") else ""
    return f"""# written by scripts/kernels; run by /bin/sh inside the VM
exec 2>&1
echo "{START} release=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) nproc=$(nproc)"
cd {q(str(repo))} || exit 125
export PYTHONDONTWRITEBYTECODE=1
# /root is not among virtme-ng's writable overlays: give tools a writable HOME
if ! (: > "$HOME/.kernels-w") 2>/dev/null; then export HOME=/tmp/home; mkdir -p "$HOME"; else rm -f "$HOME/.kernels-w"; fi
export RSEQTOP_CACHE_DIR={q(str(cache_dir))}
export RSEQTOP_KERNELS_OUT={q(str(outdir))}
export RSEQTOP_KERNELS_SUITE={q(suite)}
{ci}{PIN_PATCH_SITES}
{copy_up_script(copy_up or [])}(
{command}
)
rc=$?
echo "{END} rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
exit $rc
"""


def vng_command(vng: Path, kernel: Kernel, script: Path, repo: Path, rwdirs: List[Path], memory: str, cpus: int) -> List[str]:
    cmd = [
        str(vng),
        "--run", str(kernel.image),
        "--disable-kvm",
        "--memory", memory,
        "--cpus", str(cpus),
        "--verbose",  # boot console on stderr (console.log): the only clue when a kernel does not boot
        # 9p for every export: virtme-ng tries virtiofsd first, and Debian 12's
        # qemu ships only the old C virtiofsd, which it cannot drive; each
        # failed try cost ~3 s per exported directory
        "--force-9p",
        # tsc=reliable: without it the clocksource watchdog, fooled by TCG's
        # slowness, marks the TSC unstable mid-run, and the kernel then
        # live-patches sched_clock, which QEMU TCG's int3 handling can turn
        # into an Oops (seen on 6.12; the panic retry covers what is left)
        "--append", f"modprobe.blacklist={UDEV_BLACKLIST} tsc=reliable",
        f"--rodir={kernel.root}",
        "--cwd", str(repo),
    ]
    seen = set()
    for d in rwdirs:
        if str(d) not in seen:
            seen.add(str(d))
            cmd.append(f"--rwdir={d}")
    cmd += ["--exec", f"/bin/sh {shlex.quote(str(script))}"]
    return cmd


def _group_members(pgid: int) -> List[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...: comm may contain spaces
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid:
                pids.append(int(d))
    return pids


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _kill_group(p: subprocess.Popen) -> None:
    """Stop the VM: QEMU first, so virtme-run and vng see it exit and reap
    their children; then the whole process group (our own new session)."""
    for pid in _group_members(p.pid):
        if _comm(pid).startswith("qemu-system"):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    try:
        p.wait(timeout=15)
        return
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def run(
    kernel: Kernel,
    command: str,
    outdir: Path,
    cache_dir: Path,
    repo: Path,
    timeout: float = 1500,
    memory: str = DEFAULT_MEMORY,
    cpus: int = DEFAULT_CPUS,
    echo: bool = False,
    copy_up: Optional[List[str]] = None,
) -> VMResult:
    """Boot `kernel`, run `command` (shell text) from `repo`, wait at most `timeout` s.

    Writes into outdir: run.sh (what ran), output.log (the command's stdout and
    stderr), console.log (boot console and virtme-ng's messages), result.json.
    The command may write more files there ($RSEQTOP_KERNELS_OUT), e.g. junit.xml.
    """
    check_host()
    vng = find_vng(repo)
    outdir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    script = outdir / "run.sh"
    script.write_text(guest_script(command, repo, outdir, cache_dir, kernel.suite,
                                   copy_up if copies_up(kernel.release) else None))
    cmd = vng_command(vng, kernel, script, repo, [outdir, cache_dir], memory, cpus)
    (outdir / "vng-command.txt").write_text(shlex.join(cmd) + "\n")

    env = dict(os.environ)
    # vng runs virtme-run through PATH; guest-side variables are set by run.sh
    env["PATH"] = f"{vng.parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env.pop("PYTHONPATH", None)

    state = {"start": None, "end": None, "release": None, "uptime": None, "rc": None}
    t0 = time.monotonic()

    def pump_stdout(stream, fh):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            if line.startswith(START) and state["start"] is None:
                state["start"] = time.monotonic()
                m = re.search(r"release=(\S+)", line)
                state["release"] = m.group(1) if m else None
                m = re.search(r"uptime=([\d.]+)", line)
                state["uptime"] = float(m.group(1)) if m else None
                log(f"{kernel.suite}: booted {state['release']} in {state['start'] - t0:.1f}s (guest uptime {state['uptime']}s); running command")
                continue
            at = line.find(END)
            if at >= 0:
                # the command's last line may lack its newline: the marker
                # then ends that line
                state["end"] = time.monotonic()
                m = re.search(r"rc=(-?\d+)", line[at:])
                state["rc"] = int(m.group(1)) if m else None
                if at == 0:
                    continue
                line = line[:at] + "\n"
            fh.write(line)
            fh.flush()
            if echo:
                sys.stderr.write(f"  {kernel.suite}| {line}")

    def pump_stderr(stream, fh):
        for raw in iter(stream.readline, b""):
            fh.write(raw.decode("utf-8", "replace"))
            fh.flush()

    log(f"{kernel.suite}: starting VM for {kernel.release} (TCG, {cpus} vCPUs, {memory}, timeout {timeout:.0f}s)")
    timed_out = False
    with open(outdir / "output.log", "w") as out_fh, open(outdir / "console.log", "w") as con_fh:
        p = subprocess.Popen(
            cmd,
            cwd=str(repo),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        threads = [
            threading.Thread(target=pump_stdout, args=(p.stdout, out_fh), daemon=True),
            threading.Thread(target=pump_stderr, args=(p.stderr, con_fh), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            log(f"{kernel.suite}: timed out after {timeout:.0f}s; stopping the VM")
            _kill_group(p)
        except BaseException:
            _kill_group(p)
            raise
        for t in threads:
            t.join(timeout=10)
    total = time.monotonic() - t0

    booted = state["start"] is not None
    exit_status = state["rc"]
    error = ""
    if not booted:
        error = "the VM did not boot (no start marker; see console.log)"
        if timed_out:
            error = f"the VM did not boot within {timeout:.0f}s (see console.log)"
    elif timed_out:
        error = f"the command did not finish within {timeout:.0f}s"
    elif exit_status is None:
        error = f"the VM stopped before the command ended (vng exit {p.returncode}; see console.log)"
    elif p.returncode != exit_status:
        # virtme-ng passes the guest's status through; a mismatch means the
        # guest did not shut down cleanly after the command
        error = f"vng exited {p.returncode} but the command exited {exit_status}"
    if booted and state["release"] != kernel.release:
        error = error or f"booted {state['release']}, expected {kernel.release}"

    res = VMResult(
        suite=kernel.suite,
        release=kernel.release,
        uname=state["release"],
        booted=booted,
        exit_status=exit_status,
        timed_out=timed_out,
        boot_seconds=round(state["start"] - t0, 2) if booted else None,
        guest_uptime=state["uptime"],
        command_seconds=round(state["end"] - state["start"], 2) if booted and state["end"] else None,
        total_seconds=round(total, 2),
        vng_status=None if timed_out else p.returncode,
        outdir=outdir,
        error=error,
    )
    (outdir / "result.json").write_text(json.dumps(res.to_json(), indent=1) + "\n")
    status = "OK" if res.ok else f"FAILED: {error or f'command exited {exit_status}'}"
    log(f"{kernel.suite}: {status} (boot {res.boot_seconds}s, command {res.command_seconds}s, total {res.total_seconds}s)")
    return res
