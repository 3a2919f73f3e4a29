"""Find kernel headers for bcc, or build a merged tree from generic ones.

bcc compiles BPF C against kernel headers. Order of preference:
1. the distribution's exact package (/lib/modules/$(uname -r)/build);
2. the kernel's own /sys/kernel/kheaders.tar.xz (bcc unpacks it itself);
3. the newest generic Debian headers (/usr/src/linux-headers-*-common plus
   the matching arch directory), merged by symlinks into rseqtop's cache and
   handed to bcc with BCC_KERNEL_SOURCE. /lib/modules is never written.
Because generic headers do not match the running kernel, the BPF programs
only read tracepoint arguments, never kernel structs.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rseqtop import paths

DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
KHEADERS_TARBALL = Path("/sys/kernel/kheaders.tar.xz")


@dataclass(frozen=True)
class HeaderSource:
    kind: str  # "exact", "kheaders", "generic", "env" or "missing"
    path: Optional[Path]
    detail: str


def _version_key(name: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def find_generic(src_root: Path = Path("/usr/src"), machine: Optional[str] = None) -> Optional[tuple[Path, Path]]:
    """Newest (common, arch) pair of Debian header directories, if any."""
    arch = DEBIAN_ARCH.get(machine or platform.machine(), machine or platform.machine())
    pairs = []
    for common in src_root.glob("linux-headers-*-common"):
        stem = common.name[: -len("-common")]
        arch_dir = src_root / f"{stem}-{arch}"
        if arch_dir.is_dir() and (common / "include").is_dir():
            pairs.append((common, arch_dir))
    if not pairs:
        return None
    return max(pairs, key=lambda p: _version_key(p[0].name))


def merge_tree(sources: list[Path], dest: Path) -> None:
    """Overlay `sources` into `dest` with symlinks; later sources win on files.

    Only directories present in more than one source are made real, so the
    merge of Debian's 75 MB -common tree costs a few hundred symlinks.
    """
    dest.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[Path]] = {}
    for src in sources:
        for child in sorted(src.iterdir()):
            entries.setdefault(child.name, []).append(child)
    for name, children in entries.items():
        target = dest / name
        dirs = [c for c in children if c.is_dir()]
        if len(dirs) > 1 and len(dirs) == len(children):
            merge_tree(dirs, target)
        else:
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(children[-1].resolve())


def merged_generic_tree(common: Path, arch_dir: Path) -> Path:
    dest = paths.cache_dir() / "kheaders" / arch_dir.name
    stamp = dest / ".rseqtop-merged"
    want = f"{common.resolve()}\n{arch_dir.resolve()}\n"
    if stamp.is_file() and stamp.read_text() == want:
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    if tmp.exists():
        _rmtree_links(tmp)
    merge_tree([common, arch_dir], tmp)
    (tmp / ".rseqtop-merged").write_text(want)
    if dest.exists():
        _rmtree_links(dest)
    os.replace(tmp, dest)
    return dest


def _rmtree_links(path: Path) -> None:
    # The tree holds only symlinks and the directories made for them; never
    # follow a link (it points into /usr/src).
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.rmdir(full)
    os.rmdir(path)


def locate(release: Optional[str] = None, build_generic: bool = True) -> HeaderSource:
    """Decide which headers bcc will use; builds the merged tree if needed."""
    release = release or platform.release()
    env = os.environ.get("BCC_KERNEL_SOURCE")
    # A merged tree of our own (exported by a parent rseqtop) is not a user
    # choice: describe it as what it is.
    if env and not Path(env).resolve().is_relative_to((paths.cache_dir() / "kheaders").resolve()):
        return HeaderSource("env", Path(env), f"BCC_KERNEL_SOURCE={env}")
    exact = Path("/lib/modules") / release / "build"
    if (exact / "include").is_dir() or (exact / "Makefile").is_file():
        return HeaderSource("exact", exact, f"exact headers for {release} ({exact})")
    if KHEADERS_TARBALL.exists():
        return HeaderSource("kheaders", KHEADERS_TARBALL, f"kernel's own {KHEADERS_TARBALL}")
    generic = find_generic()
    if generic:
        common, arch_dir = generic
        tree = merged_generic_tree(common, arch_dir) if build_generic else None
        return HeaderSource(
            "generic",
            tree,
            f"generic headers {arch_dir.name} (kernel is {release}), merged into {tree or '(not built)'}",
        )
    return HeaderSource("missing", None, "no kernel headers found")


def fix_hint(release: Optional[str] = None) -> str:
    release = release or platform.release()
    return (f"install linux-headers-{release}, or the generic headers "
            f"(apt-get install linux-headers-{DEBIAN_ARCH.get(platform.machine(), 'amd64')})")


def export_for_bcc(source: HeaderSource) -> None:
    """Point bcc at the chosen tree (must run before bcc compiles anything)."""
    if source.kind == "generic" and source.path is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(source.path)
