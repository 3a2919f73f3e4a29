"""Where rseqtop's shipped sources and caches live, by absolute path.

Installed from a wheel, bpf/ sits inside the package (force-included by
pyproject.toml); in a source checkout it sits at the repository's top.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def bpf_dir() -> Path:
    for candidate in (PACKAGE_DIR / "bpf", PACKAGE_DIR.parent / "bpf"):
        if (candidate / "rseqtop.bpf.c").is_file():
            return candidate
    raise FileNotFoundError("rseqtop's BPF sources are missing; reinstall rseqtop")


def csrc_dir() -> Path:
    """The bundled workload's C sources: workload.h and the .c files that
    rseqtop.workload compiles together (always inside the package)."""
    return PACKAGE_DIR / "csrc"


def cache_dir() -> Path:
    """A writable cache: RSEQTOP_CACHE_DIR, /var/cache/rseqtop for root, else XDG."""
    env = os.environ.get("RSEQTOP_CACHE_DIR")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/var/cache/rseqtop")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "rseqtop"
    path.mkdir(parents=True, exist_ok=True)
    return path
