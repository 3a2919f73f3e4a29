"""Process slots (struct rseqtop_slot_hot in bpf/rseqtop.h): each live
process's threads summed in the kernel as events happen, read with one map
entry per process instead of a pass over every thread.

The kernel takes a slot from free_slots when a process's first thread is
tracked; user space fills free_slots before the programs are attached and
gives a dead process's slot back a poll after it saw the process gone
(SlotTable.read), so that no program still holding the number can count
into the next process's slot."""

from __future__ import annotations

import ctypes
import struct

from rseqtop.collect.batch import BatchTable
from rseqtop.collect.records import LiveRecord
from rseqtop.kernel import bpfsys
from rseqtop.model.snapshot import COUNT_FIELDS, Counts

PROC_KEY = struct.Struct("=II")  # struct rseqtop_proc_key: tgid, gen
HOT = struct.Struct("=2Q")  # struct rseqtop_slot_hot: updates, preempts
MASK = (1 << 64) - 1


def fill(free_slots_fd: int, n: int) -> None:
    """Push every slot, n - 1 first, so that the kernel pops 0 first and the
    slots in use stay at the low end (what SlotTable.read reads)."""
    for i in reversed(range(n)):
        bpfsys.update(free_slots_fd, None, ctypes.c_uint32(i))


class SlotTable:
    """Reads the slots of a loaded program (bcc's tables or
    rseqtop.collect.maps.MapTable) and gives back those of dead processes."""

    def __init__(self, bpf, ncodes: int, cause_pairs):
        self._proc_slot = BatchTable(bpf["proc_slot"])
        self._hot_fd = bpf["slot_hot"].map_fd
        self._rare_fd = bpf["slot_rare"].map_fd
        self._free_fd = bpf["free_slots"].map_fd
        self._gen = bpf["proc_gen"]
        self._cause_pairs = cause_pairs
        self._ncpus = bpfsys.possible_cpus()
        self._rare = struct.Struct(f"=2Q{len(COUNT_FIELDS) + ncodes}Q")  # struct rseqtop_live
        if self._rare.size != ctypes.sizeof(bpf["slot_rare"].Leaf):
            raise RuntimeError("struct rseqtop_live changed: update rseqtop.collect.slots")
        self._dying: set = set()  # (key bytes, slot) seen dead at the previous read

    def read(self) -> tuple:
        """A LiveRecord per process with a slot (its live threads' counts),
        then gives back the slots of processes seen dead twice in a row."""
        entries = [(kb, int.from_bytes(vb, "little") - 1) for kb, vb in self._proc_slot.raw()]
        if not entries:
            self._dying = set()
            return ()
        n = max(slot for _, slot in entries) + 1
        hot = self._array(self._hot_fd, n, HOT.size * self._ncpus)
        rare = self._array(self._rare_fd, n, self._rare.size)
        out, dying = [], set()
        k = len(COUNT_FIELDS)
        for kb, slot in entries:
            v = self._rare.unpack_from(rare, slot * self._rare.size)
            base = slot * HOT.size * self._ncpus
            updates = preempts = 0
            for cpu in range(self._ncpus):
                u, p = HOT.unpack_from(hot, base + cpu * HOT.size)
                updates += u
                preempts += p
            threads = v[1]
            # counts: aborts, updates, preempts, migrations, signals, membarrier_ipis (COUNT_FIELDS)
            scalars = [v[2], updates & MASK, preempts & MASK] + list(v[5:2 + k])
            pid, gen = PROC_KEY.unpack(kb)
            if threads == 0 and self._dead(pid, gen):
                dying.add((kb, slot))
            out.append(LiveRecord(pid, gen, threads, Counts(*scalars, causes=self._cause_pairs(v[2 + k:]))))
        for kb, slot in dying & self._dying:
            self._give_back(kb, slot)
        self._dying = dying - self._dying
        return tuple(out)

    def _array(self, fd: int, n: int, value_size: int) -> bytes:
        """Entries 0..n-1 of an array map, values only (one system call)."""
        keys = (ctypes.c_uint32 * n)()
        values = ctypes.create_string_buffer(n * value_size)
        token = ctypes.c_uint32(0)
        got, err = bpfsys.lookup_batch(fd, None, token, keys, values, n)
        if got != n and err:
            raise OSError(err, "BPF_MAP_LOOKUP_BATCH on a slot array")
        return values.raw

    def _dead(self, pid: int, gen: int) -> bool:
        """Process (pid, gen) is gone for good: its pid's generation moved
        on (no thread can join it any more)."""
        now = self._gen.get(self._gen.Key(pid))
        return now is not None and now.value > gen

    def _give_back(self, key: bytes, slot: int) -> None:
        k = self._proc_slot.table.Key.from_buffer_copy(key)
        try:
            del self._proc_slot.table[k]
        except KeyError:
            return
        i = ctypes.c_uint32(slot)
        bpfsys.update(self._hot_fd, i, ctypes.create_string_buffer(HOT.size * self._ncpus))
        bpfsys.update(self._rare_fd, i, ctypes.create_string_buffer(self._rare.size))
        bpfsys.update(self._free_fd, None, i)
