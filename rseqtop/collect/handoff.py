"""Probes without bcc in this process: a loader process
(rseqtop.collect.attach) compiles and attaches the program and hands over
the file descriptors of its maps, programs and attachments, then exits.
This process reads the maps with plain bpf(2) (rseqtop.collect.maps) and
reads the new-site events from perf rings it opens itself
(rseqtop.collect.perfring), so it never maps libbcc and LLVM (about 85 MB
of code, and the compiler's heap). `rseqtop export` collects this way.

What the bcc path has and this one has not: the abort event stream
(`rseqtop trace`) and mm_cid on demand, which no exporter metric uses."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import rseqtop
from rseqtop.collect import maps
from rseqtop.collect.loader import Probes
from rseqtop.collect.perfring import PerfRings
from rseqtop.errors import UserError

MAX_MESSAGE = 1 << 20  # the loader's reply, and its request
# The maps this process uses (the loader hands over those the program has).
MAPS = ("counters", "cpu_aborts", "config", "watch_pids", "watch_cgroups", "threads", "dead_threads", "procs",
        "proc_gen", "sites", "offsets", "pcounts", "new_sites", "hot", "proc_live", "preempters", "proc_slot",
        "free_slots", "slot_hot", "slot_rare", "aborters")


def run_loader(request: dict) -> tuple:
    """Start the loader process with `request`: (its reply, the fds it sent)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    package_root = str(Path(rseqtop.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        with mine:
            try:
                proc = subprocess.Popen([sys.executable, "-m", "rseqtop.collect.attach", str(theirs.fileno())],
                                        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
            except OSError as err:
                raise UserError(f"cannot start the BPF loader process ({sys.executable}): {err.strerror}") from None
            theirs.close()  # the loader's end: EOF here when it dies
            mine.send(json.dumps(request).encode())
            msg, fds, _, _ = socket.recv_fds(mine, MAX_MESSAGE, 1024)
            status = proc.wait()
    finally:
        theirs.close()
    if not msg:
        raise UserError(f"the BPF loader process died ({_exit_text(status)}) before handing over the probes; "
                        f"see 'rseqtop doctor'")
    reply = json.loads(msg)
    if "error" in reply:
        for fd in fds:
            os.close(fd)
        raise UserError(reply["error"])
    return reply, fds


def _exit_text(status: int) -> str:
    return f"killed by signal {-status}" if status < 0 else f"exit status {status}"


class HandedProbes(Probes):
    """Probes (rseqtop.collect.loader) whose program a loader process loaded."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._fds: list = []  # everything handed over, closed by close()
        self._programs: list = []  # (name, fd)
        self._rings: Optional[PerfRings] = None

    def _load(self, text: str) -> None:
        reply, fds = run_loader({"source": text, "maps": list(MAPS), "iterator": self.plan.hot_storage,
                                 "attach": [list(a) for a in self.plan.attachments()]})
        self._fds = fds
        specs = reply["maps"]
        n_maps, n_progs = len(specs), len(reply["programs"])
        self.bpf = {spec["name"]: maps.table(spec, fd) for spec, fd in zip(specs, fds)}
        self._programs = list(zip(reply["programs"], fds[n_maps:n_maps + n_progs]))
        if reply["iterator"]:
            self.hot_iter_link = fds[-1]
        if self.plan.hot_storage and "hot" in self.bpf:
            self.hot_fd = self.bpf["hot"].map_fd

    def close(self) -> None:
        self.pause_watcher()
        if self._rings is not None:
            self._rings.close()
            self._rings = None
        self.hot_fd = self.hot_iter_link = None
        self.bpf = None
        fds, self._fds, self._programs = self._fds, [], []
        for fd in fds:  # the attachments' last references: this detaches
            os.close(fd)

    def programs(self) -> list:
        return list(self._programs)

    def _set_mm_cid(self, on: bool) -> None:
        if on:
            raise RuntimeError("mm_cid on demand needs the bcc collector (Collector(lean=False))")

    def watch_sites(self, on_site: Callable[[int, int, int], None]) -> None:
        key_type = self.bpf["sites"].Key

        def on_sample(data: bytes) -> None:
            key = key_type.from_buffer_copy(data[:ctypes.sizeof(key_type)])
            on_site(key.tgid, key.gen, key.start_ip)

        # opened now, as root: the rings' locked memory is charged before the privilege drop
        self._rings = PerfRings(self.bpf["new_sites"], on_sample, pages=8)
        self.resume_watcher()

    def _new_sites_poller(self) -> Optional[Callable]:
        """The rings this process reads itself (None until they are open)."""
        return self._rings.poll if self._rings is not None else None

    def open_events(self, callback: Callable) -> None:
        raise RuntimeError("the abort event stream needs the bcc collector (Collector(lean=False))")

    def poll_events(self, timeout_ms: int) -> None:
        raise RuntimeError("the abort event stream needs the bcc collector (Collector(lean=False))")
