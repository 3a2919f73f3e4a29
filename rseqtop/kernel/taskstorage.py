"""Read a BPF task-storage map from user space: the key is a pidfd of the
thread (PIDFD_THREAD, Linux 6.9+). Plain bpf(2) through libc, so that bcc
stays confined to the loader."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Optional

from rseqtop.kernel import bpfsys

# None on an architecture whose number rseqtop does not know: no task
# storage there (the hash variant works everywhere).
SYS_BPF = bpfsys.SYS_BPF
PIDFD_THREAD = os.O_EXCL  # include/uapi/linux/pidfd.h


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
        try:
            found = bpfsys.lookup(map_fd, ctypes.c_int(pidfd), value)
        except OSError as err:
            if err.errno in (errno.ESRCH, errno.EBADF):
                return None
            raise
        return value if found else None
    finally:
        os.close(pidfd)
