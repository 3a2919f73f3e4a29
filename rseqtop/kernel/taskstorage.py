"""Read a BPF task-storage map from user space: the key is a pidfd of the
thread (PIDFD_THREAD, Linux 6.9+). Plain bpf(2) through libc, so that bcc
stays confined to the collector."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Optional

from rseqtop.kernel import linux

# None on an architecture whose number rseqtop does not know: no task
# storage there (the hash variant works everywhere).
SYS_BPF = linux.syscall_number("bpf")
BPF_MAP_LOOKUP_ELEM = 1
PIDFD_THREAD = os.O_EXCL  # include/uapi/linux/pidfd.h


class _LookupAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def thread_pidfds_supported() -> bool:
    """Whether pidfd_open takes PIDFD_THREAD (a non-leader thread's pidfd),
    on an architecture whose bpf(2) number is known."""
    if SYS_BPF is None:
        return False
    try:
        fd = os.pidfd_open(threading.get_native_id(), PIDFD_THREAD)
    except (OSError, AttributeError):
        return False
    os.close(fd)
    return True


def lookup(map_fd: int, tid: int, value) -> Optional[object]:
    """Fill `value` (a ctypes instance) with thread tid's entry; None when
    the thread is gone or has no entry."""
    try:
        pidfd = os.pidfd_open(tid, PIDFD_THREAD)
    except OSError:
        return None
    try:
        key = ctypes.c_int(pidfd)
        attr = _LookupAttr(map_fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0)
        # syscall(2) reads longs from its varargs
        if linux.LIBC.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(BPF_MAP_LOOKUP_ELEM), ctypes.byref(attr),
                         ctypes.c_long(ctypes.sizeof(attr))) != 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ESRCH, errno.EBADF):
                return None
            raise OSError(err, os.strerror(err))
        return value
    finally:
        os.close(pidfd)
