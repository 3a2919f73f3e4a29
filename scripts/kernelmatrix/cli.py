"""scripts/kernels: run a command on real Debian kernels, one VM after another."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

from . import UserError, log
from . import fetch as fetchmod
from . import results as resmod
from . import vm as vmmod

REPO = Path(__file__).resolve().parents[2]
DEFAULT_COMMAND = "uname -r; .venv/bin/python -m rseqtop doctor"
# --tests: every kernel-facing test (pytest -m kernel), as CI runs them
# Only the plugin the tests use (pytest-timeout) is loaded: under TCG the
# others (textual's snapshot plugin, hypothesis, syrupy) took longer to
# import than the files' own collection.
TESTS_COMMAND = ("PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 .venv/bin/python -m pytest -p pytest_timeout -m kernel "
                 "-p no:cacheprovider -o junit_family=legacy -q -rfE "
                 "--junitxml=$RSEQTOP_KERNELS_OUT/junit.xml {files}")

EPILOG = """\
examples:
  scripts/kernels                              # bookworm, trixie, sid: rseqtop doctor
  scripts/kernels --kernels experimental --command 'uname -r; nproc'
  scripts/kernels --command '.venv/bin/python -m pytest -p no:cacheprovider \\
      -o junit_family=legacy --junitxml=$RSEQTOP_KERNELS_OUT/junit.xml tests/test_x.py'

Inside each VM the command runs under /bin/sh from the repository root
(read-only there), with RSEQTOP_CACHE_DIR (the writable --cache-dir, shared
by all kernels), RSEQTOP_KERNELS_OUT (this kernel's writable output
directory: put junit.xml there for the check table), RSEQTOP_KERNELS_SUITE
and PYTHONDONTWRITEBYTECODE=1. Kernels are cached in %s.
Exit status 0 only if every VM booted, every command exited 0 and every
check in junit.xml passed.
""" % fetchmod.CACHE_ROOT


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/kernels",
        description="Boot the newest Debian kernels of some suites under QEMU (TCG, virtme-ng) on this "
        "machine's root filesystem and run a command in each.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kernels", default=",".join(fetchmod.DEFAULT_SUITES), metavar="SUITES",
                   help=f"comma-separated Debian suites, from {', '.join(fetchmod.SUITES)} (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: .cache/kernels/<date-time>, also linked as .cache/kernels/latest)")
    p.add_argument("--command", default=DEFAULT_COMMAND, metavar="CMD", help="shell command run in each VM (default: %(default)r)")
    p.add_argument("--tests", action="store_true",
                   help="run the kernel-facing tests (pytest -m kernel) in each VM, the bundled workload built "
                        "once on the host; what CI runs")
    p.add_argument("--host-junit", metavar="FILE",
                   help="the host suite's JUnit XML: its results for the same checks become the host's column, "
                        "and its tests count in the closing total")
    p.add_argument("--timeout", type=float, default=1500, metavar="S", help="seconds per VM, boot included (default: %(default)s)")
    p.add_argument("--cache-dir", metavar="DIR", help="writable directory shared with every VM as RSEQTOP_CACHE_DIR (default: OUT/cache)")
    p.add_argument("--memory", default=vmmod.DEFAULT_MEMORY, help="guest memory (default: %(default)s)")
    p.add_argument("--cpus", type=int, default=vmmod.DEFAULT_CPUS, help="guest vCPUs (default: %(default)s)")
    p.add_argument("--allow-skips", action="store_true", help="skipped checks do not fail the run")
    p.add_argument("--fetch-only", action="store_true", help="download and unpack the kernels, boot nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="echo the commands' output on stderr as it comes")
    return p.parse_args(argv)


def _suites(spec: str) -> List[str]:
    suites = [s.strip() for s in spec.split(",") if s.strip()]
    if not suites:
        raise UserError("--kernels is empty: name at least one suite")
    bad = [s for s in suites if s not in fetchmod.SUITES]
    if bad:
        raise UserError(f"unknown suite {bad[0]!r} in --kernels: choose from {', '.join(fetchmod.SUITES)}")
    return list(dict.fromkeys(suites))


def _default_out() -> Path:
    base = REPO / ".cache" / "kernels"
    out = base / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    n = 1
    while out.exists():
        n += 1
        out = base / (datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{n}")
    out.mkdir(parents=True)
    latest = base / "latest"
    try:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    except OSError:
        pass
    return out


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    suites = _suites(args.kernels)
    if os.geteuid() != 0:
        raise UserError("run as root (sudo scripts/kernels ...): it downloads into /var/cache and starts QEMU")
    if args.timeout <= 0:
        raise UserError("--timeout must be positive")
    if args.cpus < 1:
        raise UserError("--cpus must be at least 1")
    if not args.fetch_only:
        vmmod.check_host()
        vmmod.find_vng(REPO)

    out = Path(args.out).resolve() if args.out else _default_out()
    cache_dir = Path(args.cache_dir).resolve() if args.cache_dir else out / "cache"
    for d in (out, cache_dir):
        # exported to QEMU and named on the guest's kernel command line
        if any(c in str(d) for c in "=, \t\n\"'"):
            raise UserError(f"{d}: directory names with '=', ',', quotes or spaces cannot be shared with the VM; choose another")
    out.mkdir(parents=True, exist_ok=True)
    log(f"output in {out}")
    command = args.command
    if args.tests:
        command = TESTS_COMMAND.format(files=" ".join(_kernel_test_files()))
        _prebuild(cache_dir)

    kernels: Dict[str, fetchmod.Kernel] = {}
    fetch_errors: Dict[str, str] = {}
    for s in suites:
        try:
            kernels[s] = fetchmod.fetch(s)
        except UserError as e:
            fetch_errors[s] = str(e)
            log(f"{s}: FAILED to fetch: {e}")

    if args.fetch_only:
        for s in suites:
            k = kernels.get(s)
            print(f"{s:13} {k.release:24} {k.version:18} {k.root}" if k else f"{s:13} FAILED: {fetch_errors[s]}")
        return 0 if not fetch_errors else 1

    copy_up = vmmod.bcc_libraries(REPO)
    runs: List[vmmod.VMResult] = []
    checks: Dict[str, List[resmod.Check]] = {}
    problems: List[str] = []
    notes: List[str] = []
    for s in suites:
        kout = out / s
        if s not in kernels:
            r = vmmod.VMResult(suite=s, release="?", uname=None, booted=False, exit_status=None, timed_out=False,
                               boot_seconds=None, guest_uptime=None, command_seconds=None, total_seconds=0.0,
                               vng_status=None, outdir=kout, error=f"fetch failed: {fetch_errors[s]}")
            runs.append(r)
            problems.append(f"{s}: {r.error}")
            continue
        for boot in (1, 2):
            r = vmmod.run(kernels[s], command, kout, cache_dir, REPO, timeout=args.timeout,
                          memory=args.memory, cpus=args.cpus, echo=args.verbose, copy_up=copy_up)
            # a VM that died while booting without a word (seen once on 6.1
            # under TCG, console cut at 1.6 s) gets the same second boot
            panic = _guest_panic(r) or ("" if r.booted or r.exit_status is not None else "did not boot")
            if not panic or boot == 2:
                break
            # Seen once in ~10 runs under TCG (7.2, and 6.12 once while
            # booting): an int3 Oops at a site being live-patched while
            # another vCPU runs it (QEMU's emulation of cross-CPU code
            # patching). One more boot;
            # a second panic fails the run. Reported either way.
            first = kout.with_name(f"{s}-panicked")
            shutil.rmtree(first, ignore_errors=True)
            kout.rename(first)
            notes.append(f"{s}: the guest kernel panicked under emulation ({panic}; {first / 'console.log'}); "
                         f"booted again")
            log(f"{s}: guest kernel panic ({panic}); booting again")
        runs.append(r)
        if not r.ok:
            problems.append(f"{s}: {r.error or f'command exited {r.exit_status}'} (log: {kout / 'output.log'})")
        try:
            checks[s] = resmod.load_checks(kout)
        except resmod.ResultsError as e:
            checks[s] = []
            problems.append(f"{s}: {e}")
        bad = [n for n, st, _ in checks[s] if not resmod.check_ok(st, args.allow_skips)]
        if bad:
            problems.append(f"{s}: {len(bad)} check(s) not passed: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")

    summary = resmod.render_summary(runs, checks)
    columns = [(resmod.kernel_label(r), checks.get(r.suite, [])) for r in runs]
    host: List[resmod.Check] = []
    if args.host_junit:
        try:
            host = resmod.parse_junit(Path(args.host_junit))
        except resmod.ResultsError as e:
            problems.append(f"host: {e}")
        in_vms = {name for cs in checks.values() for name, _, _ in cs}
        columns.insert(0, (f"{os.uname().release} (host)", [c for c in host if c[0] in in_vms]))
    table = resmod.render_checks(columns, figure_width=34)
    text = summary + ("\n\n" + table if table else "") + "\n"
    (out / "table.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps({
        "command": command,
        "kernels": [dict(r.to_json(), version=kernels[r.suite].version if r.suite in kernels else None,
                         checks=[list(c) for c in checks.get(r.suite, [])]) for r in runs],
        "problems": problems,
        "notes": notes,
        "ok": not problems,
    }, indent=1) + "\n")
    sys.stdout.write("\n" + text)
    for n in notes:
        print(f"note: {n}")
    for r in runs:
        if not r.ok or any(not resmod.check_ok(st, args.allow_skips) for _, st, _ in checks.get(r.suite, [])):
            _show_tail(r)
    for p in problems:
        print(f"scripts/kernels: {p}", file=sys.stderr)
    log(f"{'all OK' if not problems else 'FAILED'}; results in {out}")
    if args.host_junit or args.tests:
        # one closing line for the whole run: host tests and every VM's checks
        every = host + [c for cs in checks.values() for c in cs]
        passed = sum(1 for _, st, _ in every if resmod.check_ok(st))
        failed = len(every) - passed + sum(1 for r in runs if not r.ok)
        sys.stdout.flush()
        print(f"tests: {passed} passed, {failed} failed")
    return 0 if not problems else 1


def _guest_panic(r: vmmod.VMResult) -> str:
    """The guest kernel's Oops line when it panicked before the command
    ended (while booting too: the same emulation race hits boot-time code
    patching), else ""."""
    if r.exit_status is not None:
        return ""
    try:
        console = (r.outdir / "console.log").read_text(errors="replace")
    except OSError:
        return ""
    if "Kernel panic" not in console:
        return ""
    oops = [line for line in console.splitlines() if "Oops:" in line or "BUG:" in line]
    return (oops[0].split("] ", 1)[-1] if oops else "Kernel panic").strip()


def _show_tail(r: vmmod.VMResult, lines: int = 40) -> None:
    """The end of a failed kernel's output (pytest's summary is there), so
    that a CI log says what failed without the output directory."""
    for name in ("output.log", "console.log"):
        path = r.outdir / name
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        if tail:
            print(f"\n--- {r.suite}: last {len(tail)} lines of {path} ---")
            print("\n".join(tail))
            return


def _kernel_test_files() -> List[str]:
    """The test files with kernel-facing tests, found on the host. Pytest
    imports every file it is given to find the marked tests: under TCG,
    collecting all of tests/ took 128-130 s of a 7.2 VM's run."""
    import subprocess

    py = REPO / ".venv" / "bin" / "python"
    out = subprocess.run([str(py if py.exists() else sys.executable), "-m", "pytest", "--collect-only", "-q",
                          "-m", "kernel", "-p", "no:cacheprovider", "tests/"],
                         cwd=REPO, capture_output=True, text=True)
    files = sorted({line.split("::")[0] for line in out.stdout.splitlines() if "::" in line})
    if out.returncode != 0 or not files:
        # pytest in the VM says what is wrong
        return ["tests/"]
    return files


def _prebuild(cache_dir: Path) -> None:
    """Build the bundled workload once, on the host, into the cache every VM
    shares (compiling it under emulation takes a minute per kernel)."""
    import subprocess

    py = REPO / ".venv" / "bin" / "python"
    # the flags the tests in the VMs build with (tests/conftest.py), so that
    # they find this binary instead of compiling under emulation
    env = dict(os.environ, RSEQTOP_CACHE_DIR=str(cache_dir), RSEQTOP_WORKLOAD_WERROR="1")
    out = subprocess.run([str(py if py.exists() else sys.executable), "-c",
                          "from rseqtop import workload; print(workload.build())"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(f"could not build the bundled workload on the host: {out.stderr.strip().splitlines()[-1:]}")
    log(f"workload built for the VMs: {out.stdout.strip()}")


def entry() -> int:
    try:
        return main()
    except UserError as e:
        print(f"scripts/kernels: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"scripts/kernels: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scripts/kernels: interrupted", file=sys.stderr)
        return 130
