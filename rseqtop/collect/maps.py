"""BPF maps over bare file descriptors, with the part of bcc's table
interface that rseqtop uses (Key, Leaf, map_fd, max_entries, [key],
get, items, values, clear, del): the lean collector (rseqtop.collect.handoff)
reads the maps a loader process handed over without loading libbcc.

Key and value types come from bcc's JSON type descriptions (what bcc's
BPF._decode_table_type reads), made in the loader and decoded here."""

from __future__ import annotations

import ctypes
from typing import Optional

from rseqtop.kernel import bpfsys

# include/uapi/linux/bpf.h: per-CPU maps return one value per possible CPU
PERCPU_TYPES = {5, 6, 10}  # BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
ARRAY_TYPES = {2, 6}  # BPF_MAP_TYPE_ARRAY, PERCPU_ARRAY: entries cannot be deleted

_SCALARS = {
    "_Bool": ctypes.c_bool, "char": ctypes.c_char, "signed char": ctypes.c_byte, "unsigned char": ctypes.c_ubyte,
    "short": ctypes.c_short, "unsigned short": ctypes.c_ushort, "int": ctypes.c_int, "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long, "unsigned long": ctypes.c_ulong, "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong, "__int128": ctypes.c_int64 * 2,
    "unsigned __int128": ctypes.c_uint64 * 2,
}
_AGGREGATES = ("struct", "union", "struct_packed")


def decode_type(desc):
    """A ctypes type from bcc's description: a scalar's name, or [name,
    [[field, type], [field, type, [n]] (array), [field, type, bits], [name,
    fields, kind] (nested)...], kind]."""
    if isinstance(desc, str):
        try:
            return _SCALARS[desc]
        except KeyError:
            raise ValueError(f"unknown BPF map type {desc!r}") from None
    fields, anon = [], []
    for f in desc[1]:
        if len(f) == 2:
            fields.append((f[0], decode_type(f[1])))
        elif len(f) == 3 and isinstance(f[2], list):
            fields.append((f[0], decode_type(f[1]) * f[2][0]))
        elif len(f) == 3 and isinstance(f[2], int):
            fields.append((f[0], decode_type(f[1]), f[2]))
        elif len(f) == 3 and f[2] in _AGGREGATES:
            name = f[0] or f"__anon{len(anon)}"
            if not f[0]:
                anon.append(name)
            fields.append((name, decode_type(f)))
        else:
            raise ValueError(f"cannot decode BPF map field {f!r}")
    kind = desc[2] if len(desc) > 2 else "struct"
    attrs = {"_anonymous_": anon, "_fields_": fields}
    if kind == "struct_packed":
        attrs["_pack_"] = 1
    return type(str(desc[0]), (ctypes.Union if kind == "union" else ctypes.Structure,), attrs)


class MapTable:
    def __init__(self, name: str, fd: int, map_type: int, key_type, leaf_type, max_entries: int):
        self.name = name
        self.map_fd = fd
        self.map_type = map_type
        self.max_entries = max_entries
        self.Key = key_type
        self.sLeaf = leaf_type
        self.Leaf = leaf_type
        if map_type in PERCPU_TYPES:
            # the kernel rounds each CPU's value up to 8 bytes
            if ctypes.sizeof(leaf_type) % 8:
                raise ValueError(f"per-CPU map {name}: value of {ctypes.sizeof(leaf_type)} bytes is not 8-aligned")
            self.Leaf = leaf_type * bpfsys.possible_cpus()

    def _key(self, key):
        return self.Key(key) if isinstance(key, int) else key

    def get(self, key, default=None):
        value = self.Leaf()
        return value if bpfsys.lookup(self.map_fd, self._key(key), value) else default

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value) -> None:
        bpfsys.update(self.map_fd, self._key(key), value)

    def __delitem__(self, key) -> None:
        if not bpfsys.delete(self.map_fd, self._key(key)):
            raise KeyError(key)

    def keys(self) -> list:
        out, prev = [], None
        while True:
            key = self.Key()
            if not bpfsys.next_key(self.map_fd, prev, key):
                return out
            out.append(key)
            prev = key

    def items(self) -> list:
        out = []
        for key in self.keys():
            value = self.get(key)
            if value is not None:  # deleted meanwhile
                out.append((key, value))
        return out

    def values(self) -> list:
        return [v for _, v in self.items()]

    def clear(self) -> None:
        if self.map_type in ARRAY_TYPES:
            raise TypeError(f"map {self.name} is an array: entries cannot be deleted")
        for key in self.keys():
            bpfsys.delete(self.map_fd, key)


def table(spec: dict, fd: int) -> MapTable:
    """A MapTable from the loader's description of one map (see
    rseqtop.collect.attach.describe_maps)."""
    key: Optional[type] = decode_type(spec["key"]) if spec["key"] else ctypes.c_int
    return MapTable(spec["name"], fd, spec["type"], key, decode_type(spec["leaf"]), spec["max_entries"])
