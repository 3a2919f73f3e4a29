"""Run a command on real Debian kernels under QEMU (TCG) with virtme-ng.

Entry point: scripts/kernels. Parts:
  fetch    newest kernel + headers of a Debian suite, downloaded with a
           private apt configuration and extracted into a cache
  vm       boot one extracted kernel on the host's root filesystem and run a
           shell command in it
  results  per-kernel summary table, and the kernel x check table read from
           the pytest JUnit XML each run may leave in its output directory
  cli      argument parsing and wiring (``python -m kernelmatrix``)
"""

import sys
import time

_T0 = time.monotonic()


class UserError(Exception):
    """A mistake or missing prerequisite, reported as one line (no traceback)."""


def log(msg: str) -> None:
    """One progress line on stderr, prefixed with the seconds since start."""
    print(f"[kernels {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)
