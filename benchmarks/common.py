"""Pieces the benchmark scripts share."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until `rseqtop export` at `base` answers /-/ready with 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(base + "/-/ready", timeout=1).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"rseqtop export at {base} did not become ready")
        time.sleep(0.1)


def timed_get(url: str) -> tuple:
    """(seconds, body) of one GET."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t0, body
