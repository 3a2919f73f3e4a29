"""The bundled rseq workload: build it, run it, read its JSON summary.

The workload is a small C program shipped in the package: every ``*.c``
and ``*.h`` file of `rseqtop/csrc/` (``workload.h`` and the ``.c`` files that
include it). All its ``.c`` files are compiled on first use, in one call of
the system C compiler, into
``cache_dir()/workload/<sha256[:16]>/rseq-workload`` and rebuilt whenever any
of its files changes. `rseqtop workload ARGS...` execs the binary with ARGS
untouched, so `rseqtop workload --help` shows its own help.

API used by the collector tests::

    source_dir() -> Path
    sources(directory=None) -> list[Path]
    build(directory=None) -> Path
    start(args, **popen_kwargs) -> subprocess.Popen
    run(args, timeout=60, env=None) -> dict
    parse_summary(text) -> dict

See docs/workload.md for the options and the JSON summary schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from rseqtop import paths
from rseqtop.errors import UserError

SOURCE_SUFFIXES = (".c", ".h")
BINARY_NAME = "rseq-workload"
SCHEMA_VERSION = 1
# -g: line tables for `rseqtop annotate` (source lines of each section's instructions)
# Frame pointers everywhere (leaf functions too: the critical sections are
# asm inside leaf functions) so that a BPF user-stack walk (rseqtop --stacks)
# gets from an interrupted section to its callers.
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-pthread", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"]
# Warnings are errors only where the source is developed (the test suite sets
# this): on users' machines a newer compiler's new warning must not stop
# `rseqtop demo`.
WERROR_ENV = "RSEQTOP_WORKLOAD_WERROR"


def cflags() -> list:
    return CFLAGS + (["-Werror"] if os.environ.get(WERROR_ENV) == "1" else [])
EXIT_SELF_CHECK = 3

# The operations the workload knows, in its round-robin order.
OPERATIONS = ("counter", "spinlock", "push", "pop", "delay")


class WorkloadError(UserError):
    """The workload exited non-zero (or produced no valid summary)."""

    def __init__(self, message: str, exit_code: int = 1, stdout: str = "", stderr: str = ""):
        super().__init__(message, exit_code)
        self.stdout = stdout
        self.stderr = stderr


def source_dir() -> Path:
    """The folder of the workload's C sources (inside the package)."""
    return paths.csrc_dir()


def sources(directory: Optional[Path] = None) -> list[Path]:
    """Every C source and header of the workload (in DIRECTORY, default
    source_dir()), sorted by name: what build() compiles (the .c files) and
    what the cache key covers (all of them). Hidden files are not sources."""
    d = Path(directory) if directory is not None else source_dir()
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir()
                   if p.suffix in SOURCE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                  key=lambda p: p.name)


def _find_compiler() -> str:
    for name in ("cc", "gcc"):
        found = shutil.which(name)
        if found:
            return found
    raise UserError(
        "no C compiler found to build the rseq workload: install gcc "
        "(e.g. 'apt-get install gcc')"
    )


def binary_path(directory: Optional[Path] = None) -> Path:
    """Where the binary for these sources lives in the cache (built or not).

    The key covers every source file and header (name and content, sorted
    by name) and the compiler flags.
    """
    h = hashlib.sha256()
    for path in sources(directory):
        data = path.read_bytes()
        h.update(f"{path.name}\0{len(data)}\0".encode())
        h.update(data)
    h.update(" ".join(cflags()).encode())
    return paths.cache_dir() / "workload" / h.hexdigest()[:16] / BINARY_NAME


def build(directory: Optional[Path] = None) -> Path:
    """Return the path of the workload binary, compiling it first if needed.

    All the ``.c`` files of DIRECTORY (default source_dir()) are compiled
    and linked in one compiler call. Safe to call concurrently: each caller
    compiles to its own temporary name in the target directory and
    atomically renames it into place.
    """
    d = Path(directory) if directory is not None else source_dir()
    c_files = [p for p in sources(d) if p.suffix == ".c"]
    if not c_files:
        raise UserError(f"the workload's C sources in {d} are missing; reinstall rseqtop")
    target = binary_path(d)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    compiler = _find_compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{BINARY_NAME}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            [compiler, *cflags(), "-o", str(tmp), *map(str, c_files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        if proc.returncode != 0:
            raise UserError(
                f"cannot build the rseq workload with {compiler}: {_first_error(proc.stderr)} "
                "(install gcc and the libc headers: 'apt-get install gcc libc6-dev')"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\b(fatal )?error:", line):
            return line
    return lines[0] if lines else "compiler failed without a message"


def start(args: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start the workload with ARGS; stdout is a text pipe unless told otherwise."""
    binary = build()
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    if "text" not in popen_kwargs and "universal_newlines" not in popen_kwargs:
        popen_kwargs["text"] = True
    return subprocess.Popen([str(binary), *map(str, args)], **popen_kwargs)


def run(args: Sequence[str], timeout: float = 60, env: Optional[dict] = None) -> dict:
    """Run the workload to completion and return its parsed JSON summary.

    Raises WorkloadError (with the workload's stderr) on a non-zero exit.
    """
    binary = build()
    try:
        proc = subprocess.run(
            [str(binary), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as err:
        raise WorkloadError(f"the rseq workload did not finish within {timeout} s") from err
    if proc.returncode != 0:
        raise WorkloadError(
            f"the rseq workload exited with status {proc.returncode}: {proc.stderr.strip()}",
            exit_code=proc.returncode if proc.returncode > 0 else 1,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )
    return parse_summary(proc.stdout)


def parse_summary(text: str) -> dict:
    """Parse the workload's JSON summary (str or bytes) and check its version."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        summary = json.loads(text)
    except ValueError as err:
        raise ValueError(f"the rseq workload summary is not valid JSON: {err}") from err
    if not isinstance(summary, dict):
        raise ValueError("the rseq workload summary is not a JSON object")
    version = summary.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"unsupported rseq workload summary schema_version {version!r}")
    return summary


def main_argv(argv: list[str]) -> int:
    """`rseqtop workload ARGS...`: exec the workload binary with ARGS.

    exec (not a child process) so that SIGINT / SIGTERM reach the workload
    directly and its exit status is ours.
    """
    binary = build()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(str(binary), [BINARY_NAME, *argv])
    return 0  # not reached
