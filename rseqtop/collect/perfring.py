"""The new-site perf rings without bcc: one BPF-output perf event per online
CPU, mapped here and installed into the program's PERF_EVENT_ARRAY map,
read as the kernel's perf ring format (include/uapi/linux/perf_event.h)."""

from __future__ import annotations

import mmap
import os
import select
import struct
from typing import Callable

from rseqtop.kernel import bpfsys

PERF_RECORD_LOST, PERF_RECORD_SAMPLE = 2, 9
HEADER = struct.Struct("=IHH")  # struct perf_event_header: type, misc, size
U64 = struct.Struct("=Q")
# struct perf_event_mmap_page: data_head, data_tail, data_offset, data_size
DATA_HEAD, DATA_TAIL, DATA_OFFSET, DATA_SIZE = 1024, 1032, 1040, 1048


class Ring:
    def __init__(self, fd: int, pages: int):
        self.fd = fd
        page = mmap.PAGESIZE
        self.mm = mmap.mmap(fd, (pages + 1) * page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # kernels before 4.1 leave these 0: the data follows the first page
        self.offset = U64.unpack_from(self.mm, DATA_OFFSET)[0] or page
        self.size = U64.unpack_from(self.mm, DATA_SIZE)[0] or pages * page

    def drain(self, on_sample: Callable[[bytes], None]) -> int:
        """Hand each sample's raw data to on_sample; returns records lost."""
        mm, off, size = self.mm, self.offset, self.size
        head = U64.unpack_from(mm, DATA_HEAD)[0]
        tail = U64.unpack_from(mm, DATA_TAIL)[0]
        lost = 0
        while tail < head:
            # records are 8-byte aligned and the data size a power of two: a header never wraps
            kind, _, length = HEADER.unpack_from(mm, off + tail % size)
            if length < HEADER.size:
                break  # a corrupt ring: skip to the head
            start = tail % size
            if start + length <= size:
                rec = mm[off + start:off + start + length]
            else:
                rec = mm[off + start:off + size] + mm[off:off + start + length - size]
            if kind == PERF_RECORD_SAMPLE:
                (raw,) = struct.unpack_from("=I", rec, HEADER.size)
                on_sample(rec[HEADER.size + 4:HEADER.size + 4 + raw])
            elif kind == PERF_RECORD_LOST:
                lost += U64.unpack_from(rec, HEADER.size + 8)[0]
            tail += length
        U64.pack_into(mm, DATA_TAIL, head)
        return lost

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class PerfRings:
    """The rings of a BPF_PERF_OUTPUT map (a MapTable), read by poll()."""

    def __init__(self, table, on_sample: Callable[[bytes], None], pages: int = 8):
        self.on_sample = on_sample
        self.lost = 0
        self.rings: dict = {}
        self.epoll = select.epoll()
        try:
            for cpu in bpfsys.online_cpus():
                ring = Ring(bpfsys.open_bpf_output(cpu), pages)
                self.rings[ring.fd] = ring
                table[cpu] = table.Leaf(ring.fd)
                self.epoll.register(ring.fd, select.EPOLLIN)
        except Exception:
            self.close()
            raise

    def poll(self, timeout_ms: int) -> None:
        for fd, _ in self.epoll.poll(timeout_ms / 1000):
            ring = self.rings.get(fd)
            if ring is not None:
                self.lost += ring.drain(self.on_sample)

    def close(self) -> None:
        self.epoll.close()
        rings, self.rings = self.rings, {}
        for ring in rings.values():
            ring.close()
