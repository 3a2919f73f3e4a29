"""Privilege separation for `rseqtop export`.

Two processes (see docs/production.md, "Privileges"):

parent  attaches the BPF probes as root, then switches to the unprivileged
        user (--web.user) keeping only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
        (symbolization: /proc/PID/maps and binaries of other users'
        processes). It reads the BPF maps through the file descriptors it
        already holds (no capability needed for that on 5.x+/6.x) and builds
        the exposition at request time. It never listens on the network.
child   forked before anything BPF is loaded (so it inherits no BPF file
        descriptor and no extra thread). It closes every inherited file
        descriptor except the listening socket and its end of a socketpair,
        switches to the unprivileged user, clears every capability (effective,
        permitted, inheritable, ambient, bounding set), sets no_new_privs and
        dies with the parent (PR_SET_PDEATHSIG). It serves HTTP(S) and asks
        the parent for the metrics body over the socketpair.

Protocol on the socketpair (SOCK_STREAM, both directions the same frame):
``!IIB`` = request id, payload length, kind/status; then the payload.
Requests: kind ``r`` (ready?), ``m`` (metrics; payload = format name,
``text`` or ``openmetrics``). Responses: status 0 ok, 1 not ready, 2 error;
a metrics payload is ``!H`` content-type length, content type, body.

Capabilities and user IDs are per thread on Linux. glibc applies set*id()
to every thread of the process, but not capset(); so the parent drops its
capabilities while the only threads it has are its own (the collector's
symbolizer thread is stopped and restarted around the drop, see
export_cmd), and any thread created afterwards inherits the reduced set.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import pwd
import signal
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from rseqtop.errors import UsageError, UserError
from rseqtop.kernel import linux
from rseqtop.kernel.linux import (
    CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SETGID, CAP_SETPCAP, CAP_SETUID, CAP_SYS_PTRACE,
)

log = logging.getLogger("rseqtop.export")

# What the parent keeps after attaching (measured: docs/production.md, "Privileges").
PARENT_KEEP = (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH)
# With --uprobes also CAP_PERFMON: a uprobe at the abort handlers of a file
# first mapped after start-up is a perf event (the BPF program is loaded).
UPROBES_KEEP = PARENT_KEEP + (CAP_PERFMON,)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

FRAME = struct.Struct("!IIB")
MAX_PAYLOAD = 1 << 30
OK, NOT_READY, ERROR = 0, 1, 2
KIND_READY, KIND_METRICS = ord("r"), ord("m")



class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc = linux.LIBC.prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return rc


def _capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    if linux.LIBC.capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def cap_last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def status(path: str = "/proc/thread-self/status") -> dict:
    """Credentials of this thread (or of any task, given its status path)."""
    return linux.proc_status(path)


def mask(caps: Iterable[int]) -> int:
    m = 0
    for c in caps:
        m |= 1 << c
    return m


@dataclass(frozen=True)
class Target:
    """Who the processes become after start-up; uid None = keep the current user."""
    uid: Optional[int]
    gid: Optional[int]
    name: str


def resolve_user(name: str) -> Target:
    """--web.user NAME|UID -> Target. Started as root: that user (never root).
    Started as another user: that user is kept (it cannot change anyway)."""
    if os.geteuid() != 0:
        return Target(None, None, pwd.getpwuid(os.geteuid()).pw_name if _has_pw(os.geteuid()) else str(os.geteuid()))
    try:
        pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise UsageError(f"--web.user {name!r}: no such user; give an unprivileged user such as nobody") from None
    if pw.pw_uid == 0:
        raise UsageError(f"--web.user {name!r} is root; give an unprivileged user such as nobody")
    caps = status()["CapEff"]
    missing = [n for c, n in ((CAP_SETUID, "CAP_SETUID"), (CAP_SETGID, "CAP_SETGID")) if not caps & (1 << c)]
    if missing:
        raise UserError(f"cannot switch to user {pw.pw_name}: missing {' and '.join(missing)}; "
                        f"add them to the capability set (see docs/production.md, Privileges)")
    return Target(pw.pw_uid, pw.pw_gid, pw.pw_name)


def _has_pw(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def drop(target: Target, keep: Iterable[int] = ()) -> None:
    """Become target's user with only `keep` (effective and permitted), no
    inheritable or ambient capabilities, a bounding set of `keep` where
    CAP_SETPCAP allows, no_new_privs and not dumpable. Applies to the calling
    thread's capabilities and to every thread's user IDs (glibc). Raises
    OSError when the kernel refuses; verifies the result."""
    keep_mask = mask(keep)
    current = status()
    if current["CapEff"] & (1 << CAP_SETPCAP):
        for cap in range(cap_last_cap() + 1):
            if not keep_mask & (1 << cap) and current["CapBnd"] & (1 << cap):
                prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if target.uid is not None and os.geteuid() != target.uid:
        if keep_mask:
            prctl(PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(target.gid, target.gid, target.gid)
        os.setresuid(target.uid, target.uid, target.uid)
        if keep_mask:
            prctl(PR_SET_KEEPCAPS, 0)
    have = status()["CapPrm"]
    _capset(keep_mask & have, keep_mask & have, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)
    after = status()
    extra = (after["CapEff"] | after["CapPrm"] | after["CapInh"] | after["CapAmb"]) & ~keep_mask
    if extra or (target.uid is not None and set(after["Uid"]) != {target.uid}) or after["NoNewPrivs"] != 1:
        raise OSError(errno.EPERM, f"privileges still held after dropping them: {after}")


def close_fds_except(keep: Iterable[int]) -> None:
    keep = sorted({0, 1, 2, *keep})
    lo = 0
    for fd in keep:
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)


# -- framing -------------------------------------------------------------------

def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> Optional[tuple]:
    head = _recv_exact(sock, FRAME.size)
    if head is None:
        return None
    rid, length, kind = FRAME.unpack(head)
    if length > MAX_PAYLOAD:
        raise OSError(errno.EMSGSIZE, f"frame of {length} bytes")
    payload = _recv_exact(sock, length) if length else b""
    if payload is None:
        return None
    return rid, kind, payload


def frames(sock: socket.socket):
    """Frames as they arrive, until the peer closes or the link fails."""
    try:
        while True:
            frame = recv_frame(sock)
            if frame is None:
                return
            yield frame
    except OSError:
        return


def send_frame(sock: socket.socket, rid: int, kind: int, payload: bytes = b"") -> None:
    sock.sendall(FRAME.pack(rid, len(payload), kind) + payload)


def pack_metrics(body: bytes, ctype: str) -> bytes:
    c = ctype.encode()
    return struct.pack("!H", len(c)) + c + body


def unpack_metrics(payload: bytes) -> tuple:
    (n,) = struct.unpack_from("!H", payload)
    return payload[2 + n:], payload[2:2 + n].decode()


# -- child side ----------------------------------------------------------------

class ParentGone(Exception):
    pass


class _Slot:
    __slots__ = ("key", "event", "status", "payload")

    def __init__(self, key):
        self.key = key
        self.event = threading.Event()
        self.status = ERROR
        self.payload = b""


class ParentLink:
    """The HTTP child's client for the parent. Concurrent requests for the
    same thing share one in-flight request (coalescing): 200 scrapes at once
    cost the parent one map read per format, not 200."""

    def __init__(self, sock: socket.socket, on_eof: Optional[Callable[[], None]] = None):
        self.sock = sock
        self.on_eof = on_eof
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict = {}
        self._inflight: dict = {}
        self._next = 1
        self.dead = False
        self._reader = threading.Thread(target=self._read, name="parent-link", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for rid, st, payload in frames(self.sock):
            with self._lock:
                slot = self._pending.pop(rid, None)
                if slot is not None and self._inflight.get(slot.key) is slot:
                    del self._inflight[slot.key]
            if slot is not None:
                slot.status, slot.payload = st, payload
                slot.event.set()
        with self._lock:
            self.dead = True
            slots = list(self._pending.values())
            self._pending.clear()
            self._inflight.clear()
        for s in slots:
            s.event.set()
        if self.on_eof is not None:
            self.on_eof()

    def request(self, kind: int, arg: bytes = b"", timeout: float = 30.0) -> tuple:
        key = (kind, arg)
        with self._lock:
            if self.dead:
                raise ParentGone()
            slot = self._inflight.get(key)
            if slot is None:
                slot = self._inflight[key] = _Slot(key)
                rid = self._next
                self._next = (self._next + 1) & 0xFFFFFFFF or 1
                self._pending[rid] = slot
                with self._send_lock:
                    try:
                        send_frame(self.sock, rid, kind, arg)
                    except OSError:
                        self._pending.pop(rid, None)
                        self._inflight.pop(key, None)
                        raise ParentGone() from None
        if not slot.event.wait(timeout):
            raise TimeoutError("the collector process did not answer")
        if self.dead and not slot.payload and slot.status == ERROR:
            raise ParentGone()
        return slot.status, slot.payload

    def ready(self) -> bool:
        try:
            st, _ = self.request(KIND_READY, timeout=5.0)
        except (ParentGone, TimeoutError):
            return False
        return st == OK

    def metrics(self, key: str) -> tuple:
        """key from server.negotiate() -> (HTTP status, body, content type)"""
        st, payload = self.request(KIND_METRICS, key.encode())
        if st == OK:
            body, ctype = unpack_metrics(payload)
            return 200, body, ctype
        return (503 if st == NOT_READY else 500), payload, "text/plain; charset=utf-8"


def run_child(server, sock: socket.socket, target: Target, parent_pid: int) -> None:
    """In the forked child: drop everything, then serve until the parent goes.
    Never returns (os._exit)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops us
        signal.signal(signal.SIGTERM, lambda s, f: os._exit(0))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        close_fds_except([server.socket.fileno(), sock.fileno()])
        drop(target, ())
        # after drop(): a credential change clears the parent-death signal
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was set
            os._exit(1)
        link = ParentLink(sock, on_eof=lambda: os._exit(0 if os.getppid() != parent_pid else 1))
        server.metrics_source = link
        server.ready_event.set()
        server.ready_check = link.ready
        log.debug("HTTP process %d serving as uid %d without capabilities", os.getpid(), os.getuid())
        server.serve_forever(poll_interval=0.2)
        code = 0
    except BaseException as err:  # one line, never a traceback, then the parent reports our exit
        log.error("HTTP process: %s: %s", type(err).__name__, err)
    finally:
        os._exit(code)


# -- parent side ---------------------------------------------------------------

class ChildLink:
    """The parent's side: a thread reads requests. Readiness is answered by
    that thread at once; metrics requests are handed to `submit` (the main
    thread builds them, with its capabilities) unless not ready yet."""

    def __init__(self, sock: socket.socket, is_ready: Callable[[], bool],
                 submit: Callable[[int, str], None], on_eof: Callable[[], None]):
        self.sock = sock
        self.is_ready = is_ready
        self.submit = submit
        self.on_eof = on_eof
        self._send_lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, name="child-link", daemon=True)

    def start(self) -> "ChildLink":
        self.thread.start()
        return self

    def reply(self, rid: int, st: int, payload: bytes = b"") -> None:
        with self._send_lock:
            try:
                send_frame(self.sock, rid, st, payload)
            except OSError:
                pass  # the child is gone; the reader sees EOF

    def _read(self) -> None:
        for rid, kind, payload in frames(self.sock):
            if kind == KIND_READY:
                self.reply(rid, OK if self.is_ready() else NOT_READY)
            elif kind == KIND_METRICS:
                if not self.is_ready():
                    self.reply(rid, NOT_READY, b"Not ready: the BPF probes are not attached yet\n")
                else:
                    self.submit(rid, payload.decode("ascii", "replace"))
            else:
                self.reply(rid, ERROR, b"unknown request\n")
        self.on_eof()
