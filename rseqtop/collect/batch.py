"""Reading a whole BPF hash map in a few system calls (BPF_MAP_LOOKUP_BATCH,
Linux 5.6+) into reused buffers, as raw bytes per entry: the reader compares
them with the previous poll's and converts only what changed."""

from __future__ import annotations

import ctypes
import errno

from rseqtop.kernel import bpfsys

CHUNK = 1024  # entries per system call; the buffers hold one chunk


class BatchTable:
    """table: bcc's or rseqtop.collect.maps.MapTable (map_fd, Key, Leaf,
    max_entries, items())."""

    def __init__(self, table, chunk: int = CHUNK):
        self.table = table
        self._chunk = min(chunk, max(1, table.max_entries))
        self.key_size = ctypes.sizeof(table.Key)
        self.value_size = ctypes.sizeof(table.Leaf)
        self._keys = (table.Key * self._chunk)()
        self._values = (table.Leaf * self._chunk)()
        self.batched = True  # False once the kernel refused: entry by entry from then on

    def raw(self) -> list:
        """[(key bytes, value bytes)] of every entry."""
        if self.batched:
            try:
                return self._batched()
            except _Unsupported:
                self.batched = False
        return [(bytes(k), bytes(v)) for k, v in self.table.items()]

    def _batched(self) -> list:
        out = []
        token = ctypes.c_uint32(0)
        ks, vs = self.key_size, self.value_size
        first = True
        while True:
            n, err = bpfsys.lookup_batch(self.table.map_fd, None if first else token, token, self._keys,
                                         self._values, self._chunk)
            if n:
                keys = ctypes.string_at(self._keys, n * ks)
                values = ctypes.string_at(self._values, n * vs)
                out.extend((keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]) for i in range(n))
            if err == 0:
                if n == 0:  # no progress (concurrent inserts): what was read
                    return out
                first = False
                continue
            if err == errno.ENOENT:  # the end
                return out
            if first and err in (errno.EINVAL, errno.ENOTSUP, 524, errno.EPERM):  # 524: ENOTSUPP
                raise _Unsupported()
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {errno.errorcode.get(err, err)}")


class _Unsupported(Exception):
    pass
