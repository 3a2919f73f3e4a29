import os
from pathlib import Path

from rseqtop.kernel import kheaders


def make(tree: Path, files: dict):
    for rel, text in files.items():
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_find_generic_picks_newest_matching_pair(tmp_path):
    for v in ("6.1.0-47", "6.1.0-56", "6.1.0-9"):
        make(tmp_path / f"linux-headers-{v}-common", {"include/linux/x.h": v})
        make(tmp_path / f"linux-headers-{v}-amd64", {"include/generated/autoconf.h": v})
    make(tmp_path / "linux-headers-7.0.0-1-common", {"include/linux/x.h": "orphan"})  # no arch dir
    common, arch = kheaders.find_generic(tmp_path, "x86_64")
    assert common.name == "linux-headers-6.1.0-56-common"
    assert arch.name == "linux-headers-6.1.0-56-amd64"


def test_merge_tree_overlays_arch_on_common(tmp_path):
    common, arch, dest = tmp_path / "c", tmp_path / "a", tmp_path / "m"
    make(common, {"include/linux/a.h": "common", "arch/x86/include/asm/b.h": "common", "Makefile": "common"})
    make(arch, {"include/generated/autoconf.h": "arch", "arch/x86/include/generated/asm/c.h": "arch",
                "Makefile": "arch"})
    kheaders.merge_tree([common, arch], dest)
    assert (dest / "include/linux/a.h").read_text() == "common"
    assert (dest / "include/generated/autoconf.h").read_text() == "arch"
    assert (dest / "arch/x86/include/asm/b.h").read_text() == "common"
    assert (dest / "arch/x86/include/generated/asm/c.h").read_text() == "arch"
    assert (dest / "Makefile").read_text() == "arch"
    # merged, not copied: the big -common tree is only linked
    assert os.path.islink(dest / "include/linux")


def test_merged_tree_is_cached_and_never_in_lib_modules(tmp_path, monkeypatch):
    monkeypatch.setenv("RSEQTOP_CACHE_DIR", str(tmp_path / "cache"))
    common, arch = tmp_path / "linux-headers-1-common", tmp_path / "linux-headers-1-amd64"
    make(common, {"include/linux/a.h": "c"})
    make(arch, {"include/generated/g.h": "a"})
    first = kheaders.merged_generic_tree(common, arch)
    assert str(first).startswith(str(tmp_path / "cache"))
    stamp = (first / ".rseqtop-merged").stat().st_mtime_ns
    assert kheaders.merged_generic_tree(common, arch) == first
    assert (first / ".rseqtop-merged").stat().st_mtime_ns == stamp


def test_locate_prefers_env_then_exact(monkeypatch, tmp_path):
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))
    assert kheaders.locate("6.18.0").kind == "env"
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    src = kheaders.locate("0.0.0-no-such-kernel", build_generic=False)
    assert src.kind in ("kheaders", "generic", "missing")
