"""The bundled rseq workload: build it, run it, read its JSON summary.

The workload is a single C file shipped in the package
(`rseqtop/csrc/rseq_workload.c`). It is compiled on first use with the
system C compiler into ``cache_dir()/workload/<sha256[:16]>/rseq-workload``
and rebuilt whenever the source changes. `rseqtop workload ARGS...` execs the
binary with ARGS untouched, so `rseqtop workload --help` shows its own help.

API used by the collector tests::

    build(source=None) -> Path
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

SOURCE_NAME = "rseq_workload.c"
BINARY_NAME = "rseq-workload"
SCHEMA_VERSION = 1
CFLAGS = ["-O2", "-Wall", "-Wextra", "-pthread"]
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


def source_path() -> Path:
    return paths.csrc_dir() / SOURCE_NAME


def _find_compiler() -> str:
    for name in ("cc", "gcc"):
        found = shutil.which(name)
        if found:
            return found
    raise UserError(
        "no C compiler found to build the rseq workload: install gcc "
        "(e.g. 'apt-get install gcc')"
    )


def binary_path(source: Optional[Path] = None) -> Path:
    """Where the binary for this source lives in the cache (built or not)."""
    src = Path(source) if source is not None else source_path()
    digest = hashlib.sha256(src.read_bytes() + " ".join(cflags()).encode()).hexdigest()[:16]
    return paths.cache_dir() / "workload" / digest / BINARY_NAME


def build(source: Optional[Path] = None) -> Path:
    """Return the path of the workload binary, compiling it first if needed.

    Safe to call concurrently: each caller compiles to its own temporary name
    in the target directory and atomically renames it into place.
    """
    src = Path(source) if source is not None else source_path()
    if not src.is_file():
        raise UserError(f"workload source {src} is missing; reinstall rseqtop")
    target = binary_path(src)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    compiler = _find_compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{BINARY_NAME}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            [compiler, *cflags(), "-o", str(tmp), str(src)],
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
