"""tracefs: find or mount it, and read tracepoint format files.

The BPF source is generated from the formats present at start-up, so this
module is the single place that knows how to read them.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rseqtop.errors import UserError
from rseqtop.kernel import linux

CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
MOUNT_HINT = "mount -t tracefs nodev /sys/kernel/tracing"


@dataclass(frozen=True)
class Field:
    decl: str
    name: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class Format:
    system: str
    event: str
    id: int
    fields: tuple[Field, ...]
    print_fmt: str

    def field(self, name: str) -> Optional[Field]:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def has(self, name: str) -> bool:
        return self.field(name) is not None


_FIELD_RE = re.compile(r"field:(?P<decl>[^;]*);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);")


def parse_format(system: str, event: str, text: str) -> Format:
    fields = []
    ident = 0
    print_fmt = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("ID:"):
            ident = int(line.split(":", 1)[1])
        elif line.startswith("print fmt:"):
            print_fmt = line.split(":", 1)[1].strip()
        else:
            m = _FIELD_RE.search(line)
            if m:
                decl = m.group("decl").strip()
                name = re.sub(r"\[.*\]$", "", decl.split()[-1]).lstrip("*")
                fields.append(Field(decl, name, int(m.group("off")), int(m.group("size")), m.group("signed") == "1"))
    return Format(system, event, ident, tuple(fields), print_fmt)


def _is_tracefs(path: Path) -> bool:
    return (path / "events").is_dir() and (path / "available_events").exists()


def find_root() -> Optional[Path]:
    for path in CANDIDATES:
        try:
            if _is_tracefs(path):
                return path
        except PermissionError:
            continue
    return None


def mount() -> Path:
    """Mount tracefs at /sys/kernel/tracing (root only)."""
    target = CANDIDATES[0]
    if linux.LIBC.mount(b"nodev", str(target).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise UserError(f"tracefs is not mounted and mounting it failed ({os.strerror(err)}); run: {MOUNT_HINT}")
    return target


def mounted_points(mounts_file: str = "/proc/self/mounts") -> list[Path]:
    try:
        with open(mounts_file) as f:
            return [Path(line.split()[1]) for line in f if len(line.split()) > 2 and line.split()[2] == "tracefs"]
    except OSError:
        return []


def ensure_root(may_mount: bool = True) -> Path:
    root = find_root()
    if root:
        return root
    points = mounted_points()
    if points:
        raise UserError(f"tracefs is mounted at {points[0]} but not readable by this user; run as root")
    if may_mount and os.geteuid() == 0:
        return mount()
    raise UserError(f"tracefs is not mounted; run as root: {MOUNT_HINT}")


class TraceFS:
    """Read-only view of a tracefs tree (a real one, or a fake in tests)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def format(self, system: str, event: str) -> Optional[Format]:
        path = self.root / "events" / system / event / "format"
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as err:
            raise UserError(f"cannot read {path}: {err.strerror}; run rseqtop as root") from None
        return parse_format(system, event, text)

    def has(self, system: str, event: str) -> bool:
        return (self.root / "events" / system / event).is_dir()
