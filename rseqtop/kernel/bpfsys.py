"""bpf(2) and perf_event_open(2) through libc, for the processes that must
not load libbcc (and with it LLVM): the exporter's collector reads and
writes maps, runs the task iterator and opens the new-site perf rings with
these, on file descriptors a short-lived loader process handed over
(rseqtop.collect.handoff)."""

from __future__ import annotations

import ctypes
import errno
import os

from rseqtop.kernel import linux

# None on an architecture whose number rseqtop does not know.
SYS_BPF = linux.syscall_number("bpf")
SYS_PERF_EVENT_OPEN = linux.syscall_number("perf_event_open")

MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24
ITER_CREATE = 33


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64), ("keys", ctypes.c_uint64),
                ("values", ctypes.c_uint64), ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _IterAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info of include/uapi/linux/bpf.h up to
    recursion_misses (5.12+); the kernel fills what it has of it."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16),
                ("ifindex", ctypes.c_uint32), ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("nr_jited_ksyms", ctypes.c_uint32),
                ("nr_jited_func_lens", ctypes.c_uint32), ("jited_ksyms", ctypes.c_uint64),
                ("jited_func_lens", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("jited_line_info_rec_size", ctypes.c_uint32),
                ("nr_prog_tags", ctypes.c_uint32), ("prog_tags", ctypes.c_uint64), ("run_time_ns", ctypes.c_uint64),
                ("run_cnt", ctypes.c_uint64), ("recursion_misses", ctypes.c_uint64)]


def _addr(obj) -> int:
    return 0 if obj is None else ctypes.addressof(obj)


def bpf(cmd: int, attr) -> int:
    """The system call; raises OSError with the kernel's errno."""
    if SYS_BPF is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown on {os.uname().machine}")
    # syscall(2) reads longs from its varargs
    res = linux.LIBC.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), ctypes.byref(attr),
                             ctypes.c_long(ctypes.sizeof(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def lookup(map_fd: int, key, value) -> bool:
    """Fill `value` (ctypes) with key's entry; False when there is none."""
    try:
        bpf(MAP_LOOKUP_ELEM, _ElemAttr(map_fd, 0, _addr(key), _addr(value), 0))
    except FileNotFoundError:
        return False
    return True


def update(map_fd: int, key, value, flags: int = 0) -> None:
    bpf(MAP_UPDATE_ELEM, _ElemAttr(map_fd, 0, _addr(key), _addr(value), flags))


def delete(map_fd: int, key) -> bool:
    """False when there was no such entry."""
    try:
        bpf(MAP_DELETE_ELEM, _ElemAttr(map_fd, 0, _addr(key), 0, 0))
    except FileNotFoundError:
        return False
    return True


def next_key(map_fd: int, key, out) -> bool:
    """The key after `key` (None: the first) into `out`; False at the end."""
    try:
        bpf(MAP_GET_NEXT_KEY, _ElemAttr(map_fd, 0, _addr(key), _addr(out), 0))
    except FileNotFoundError:
        return False
    return True


def lookup_batch(map_fd: int, in_token, out_token, keys, values, count: int) -> tuple:
    """One BPF_MAP_LOOKUP_BATCH: (entries read, errno or 0). The kernel
    reports entries read even when it fails (ENOENT: the end)."""
    attr = _BatchAttr(_addr(in_token), _addr(out_token), _addr(keys), _addr(values), count, map_fd, 0, 0)
    try:
        bpf(MAP_LOOKUP_BATCH, attr)
    except OSError as err:
        return attr.count, err.errno
    return attr.count, 0


def prog_stats(prog_fd: int) -> tuple:
    """(run_time_ns, run_cnt, recursion_misses) of a loaded program: one
    system call, where /proc/self/fdinfo costs a file open and read and a
    parse per program (a poll reads every program's)."""
    info = _ProgInfo()
    bpf(OBJ_GET_INFO_BY_FD, _InfoAttr(prog_fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return info.run_time_ns, info.run_cnt, info.recursion_misses


def iter_create(link_fd: int) -> int:
    """A readable fd that runs the iterator behind link_fd once."""
    return bpf(ITER_CREATE, _IterAttr(link_fd, 0))


# -- perf events ------------------------------------------------------------------

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3


class _PerfAttr(ctypes.Structure):
    # struct perf_event_attr up to wakeup_events (PERF_ATTR_SIZE_VER0 is 64)
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64)]


def open_bpf_output(cpu: int) -> int:
    """A perf event that BPF programs write to with bpf_perf_event_output on
    `cpu`, waking a reader at every record (what bcc's open_perf_buffer opens)."""
    if SYS_PERF_EVENT_OPEN is None:
        raise OSError(errno.ENOSYS, f"perf_event_open(2) number unknown on {os.uname().machine}")
    attr = _PerfAttr(type=PERF_TYPE_SOFTWARE, size=ctypes.sizeof(_PerfAttr), config=PERF_COUNT_SW_BPF_OUTPUT,
                     sample_period=1, sample_type=PERF_SAMPLE_RAW, wakeup_events=1)
    fd = linux.LIBC.syscall(ctypes.c_long(SYS_PERF_EVENT_OPEN), ctypes.byref(attr), ctypes.c_long(-1),
                            ctypes.c_long(cpu), ctypes.c_long(-1), ctypes.c_long(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open(cpu {cpu}): {os.strerror(err)}")
    return fd


def cpu_list(path: str) -> list:
    """CPUs of a sysfs list such as /sys/devices/system/cpu/possible ("0-3,6")."""
    with open(path) as f:
        text = f.read().strip()
    out = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def possible_cpus() -> int:
    """How many values a per-CPU map's lookup returns."""
    return len(cpu_list("/sys/devices/system/cpu/possible"))


def cpu_id_bound() -> int:
    """One more than the highest CPU number the kernel may run on."""
    return max(cpu_list("/sys/devices/system/cpu/possible")) + 1


def online_cpus() -> list:
    return cpu_list("/sys/devices/system/cpu/online")
