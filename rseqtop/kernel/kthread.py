"""Is a task a kernel thread? Decided in user space, from the PF_KTHREAD
bit of its flags in /proc/TID/stat (the BPF side reads no task struct).
The idle task (tid 0, "swapper/N") is the kernel's own."""

from __future__ import annotations

from typing import Optional

PF_KTHREAD = 0x00200000


def parse_stat_flags(text: str) -> Optional[int]:
    """The flags field of a /proc/PID/stat line (the comm, in parentheses,
    may itself hold spaces and parentheses: fields count from the last)."""
    rest = text.rsplit(")", 1)[-1].split()
    try:
        return int(rest[6])  # state ppid pgrp session tty_nr tpgid flags
    except (IndexError, ValueError):
        return None


def is_kernel_thread(tid: int, tgid: Optional[int] = None) -> Optional[bool]:
    """None when the task is gone (or /proc does not say). With its tgid,
    the thread's own /proc/TGID/task/TID/stat is read: /proc/TID/stat sums
    over every thread of the process (ms with thousands of threads)."""
    if tid == 0:
        return True
    if tgid and tgid != tid:
        return False  # a kernel thread leads its own thread group: no /proc read for a process's threads
    path = f"/proc/{tgid}/task/{tid}/stat" if tgid else f"/proc/{tid}/stat"
    try:
        with open(path) as f:
            flags = parse_stat_flags(f.read())
    except OSError:
        return None
    return None if flags is None else bool(flags & PF_KTHREAD)


class KthreadCache:
    """is_kernel_thread per (process, comm), asked once: a poll sees the
    same few preempters again and again, each a process and a thread name
    whose latest thread changes (a kernel thread is its own process; a
    recycled pid has, as a rule, another name; an unknown answer is asked
    again)."""

    def __init__(self, probe=is_kernel_thread, limit: int = 65536):
        self.probe = probe
        self.limit = limit
        self.known: dict = {}

    def __call__(self, tid: int, comm: str, tgid: Optional[int] = None) -> Optional[bool]:
        key = (tgid or tid, comm)
        if key in self.known:
            return self.known[key]
        got = self.probe(tid, tgid)
        if got is not None:
            if len(self.known) >= self.limit:
                self.known.clear()
            self.known[key] = got
        return got
