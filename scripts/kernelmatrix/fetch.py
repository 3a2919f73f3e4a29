"""Fetch the newest Debian kernel of a suite, with its headers, into a cache.

Why versions are picked at run time: Debian replaces a suite's kernel every
few weeks (stable point releases and security updates for bookworm and
trixie, every upload for sid and experimental) and removes the old .debs
from the archive. A hard-coded version would stop downloading within weeks,
and would test an old kernel instead of the one users get. So each run asks
the archive which kernels the suite carries *now* and takes the newest; the
result is cached by exact package version, so a suite that did not move
costs one small index check and nothing else.

Nothing here touches the host's apt state or /lib/modules: each suite has a
private apt configuration (own sources.list, lists, cache and an empty dpkg
status) under CACHE_ROOT/apt/SUITE, packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into
CACHE_ROOT/<release>_<version>/, where lib/modules/<release>/build and
source point (relative links) at the unpacked headers. A ``.complete`` stamp
marks a finished tree; the .debs are deleted once unpacked.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from . import UserError, log

CACHE_ROOT = Path(os.environ.get("RSEQTOP_KERNELS_CACHE", "/var/cache/rseqtop-kernels"))

# Suites one can ask for, in the order the table shows them.
SUITES: Dict[str, str] = {
    "bookworm": "Debian 12 (6.1)",
    "trixie": "Debian 13 (6.12)",
    "sid": "unstable (7.x)",
    "experimental": "experimental (release candidates)",
}
DEFAULT_SUITES = ("bookworm", "trixie", "sid")

ARCH = "amd64"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
STAMP = ".complete"

# linux-image-<ABI>-amd64: "6.1.0-50", "6.12.117+deb13", "7.2.13+deb14", "7.3".
# Flavours (-cloud-amd64, -rt-amd64), -dbg and -unsigned do not match.
_IMAGE_RE = re.compile(r"^linux-image-(\d[0-9a-z.+~]*(?:-\d+)?)-" + ARCH + r"$")


class FetchError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One unpacked kernel, ready to boot."""

    suite: str
    abi: str  # ABI name in package names: 6.1.0-50, 7.2.13+deb14
    version: str  # Debian package version: 6.1.176-1
    release: str  # uname -r: 6.1.0-50-amd64
    root: Path  # unpacked tree
    image: Path  # root/boot/vmlinuz-<release>
    moddir: Path  # root/[usr/]lib/modules/<release>, with build and source links
    packages: Tuple[str, ...]  # name=version of every unpacked .deb
    download_bytes: int  # bytes downloaded by this run (0 when cached)
    seconds: float  # time spent fetching and unpacking (0 when cached)

    @property
    def cached(self) -> bool:
        return self.download_bytes == 0


# --------------------------------------------------------------------------
# private apt


def _sources_entries() -> Iterable[Tuple[List[str], List[str], Optional[str]]]:
    """(uris, suites, signed_by) for every enabled entry of the host's sources."""
    etc = Path("/etc/apt")
    files = []
    if (etc / "sources.list").is_file():
        files.append(etc / "sources.list")
    d = etc / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: Dict[str, str] = {}
                key = None
                for line in stanza.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    if line[0].isspace() and key:
                        fields[key] += " " + line.strip()
                        continue
                    if ":" in line:
                        key, _, val = line.partition(":")
                        key = key.strip().lower()
                        fields[key] = val.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                yield fields.get("uris", "").split(), fields.get("suites", "").split(), fields.get("signed-by")
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    opts = m.group(1) or ""
                    sb = re.search(r"signed-by=(\S+?)\s*(?:\]|\s)", opts)
                    yield [m.group(2)], [m.group(3)], sb.group(1) if sb else None


def host_mirror() -> Tuple[str, str]:
    """(archive URI, keyring) of the Debian archive the host itself uses.

    The host's mirror is the one known to be reachable; it serves every
    suite (bookworm to experimental) from the same tree.
    """
    for uris, suites, signed_by in _sources_entries():
        if not any(s.split("-")[0] in SUITES for s in suites):
            continue
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                keyring = signed_by if signed_by and signed_by.startswith("/") and os.path.exists(signed_by) else DEFAULT_KEYRING
                return uri.rstrip("/"), keyring
    raise FetchError("no Debian archive found in the host's apt sources (/etc/apt/sources.list*): "
                     "scripts/kernels downloads kernels from the archive the host itself uses")


class AptRoot:
    """apt-get/apt-cache confined to CACHE_ROOT/apt/SUITE (one suite, amd64, main)."""

    def __init__(self, suite: str, cache_root: Path = CACHE_ROOT):
        self.suite = suite
        self.dir = cache_root / "apt" / suite
        self.conf = self.dir / "apt.conf"

    def setup(self) -> None:
        uri, keyring = host_mirror()
        d = self.dir
        for sub in ("parts", "prefs", "sources.list.d", "lists/partial", "cache/archives/partial", "state"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "state/status").touch()
        (d / "sources.list").write_text(f"deb [arch={ARCH} signed-by={keyring}] {uri} {self.suite} main\n")
        # Dir::Etc::parts points at an empty directory: the host's
        # apt.conf.d hooks (cache cleaning, packagekit, ...) must not run
        # for this private tree.  Valid-Until is not checked because the
        # archive may be served from a frozen copy, as on this project's
        # machines (the host's own configuration does the same); the
        # signatures are still checked.
        lines = {
            "Dir::Etc::main": d / "apt.conf",
            "Dir::Etc::parts": d / "parts",
            "Dir::Etc::preferences": d / "preferences",
            "Dir::Etc::preferencesparts": d / "prefs",
            "Dir::Etc::sourcelist": d / "sources.list",
            "Dir::Etc::sourceparts": d / "sources.list.d",
            "Dir::State": d / "state",
            "Dir::State::lists": d / "lists",
            "Dir::State::status": d / "state/status",
            "Dir::Cache": d / "cache",
            "APT::Architecture": ARCH,
            "Acquire::Languages": "none",
            "Acquire::Check-Valid-Until": "false",
            "Acquire::Check-Date": "false",
            "Acquire::Retries": "3",
            "Acquire::http::Timeout": "30",
            "APT::Sandbox::User": "root",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled": "false",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
        }
        text = "".join(f'{k} "{v}";\n' for k, v in lines.items())
        text += 'APT::Architectures { "%s"; };\n' % ARCH
        text += _host_proxy_config()
        if not self.conf.exists() or self.conf.read_text() != text:
            self.conf.write_text(text)

    def run(self, args: List[str], cwd: Optional[Path] = None, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, APT_CONFIG=str(self.conf), LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        p = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and p.returncode != 0:
            err = [l for l in p.stderr.splitlines() if l.startswith(("E:", "W:"))] or p.stderr.strip().splitlines() or ["?"]
            raise FetchError(f"{' '.join(args[:2])} for {self.suite} failed: {err[0]}")
        return p

    def update(self) -> None:
        self.setup()
        self.run(["apt-get", "update", "-q", "--error-on=any"])

    def pkgnames(self, prefix: str) -> List[str]:
        return self.run(["apt-cache", "pkgnames", prefix]).stdout.split()

    def show(self, names: List[str]) -> List[Dict[str, str]]:
        """Every record apt has for these package names (no error for unknown ones)."""
        if not names:
            return []
        out = self.run(["apt-cache", "show", "--", *names], check=False).stdout
        return [parse_record(s) for s in out.split("\n\n") if s.strip()]


def _host_proxy_config() -> str:
    """The host's apt proxy settings, if any, since its apt.conf.d is not read."""
    try:
        dump = subprocess.run(["apt-config", "dump"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    except OSError:
        return ""
    keep = [l for l in dump.splitlines() if re.match(r"^Acquire::(https?|ftp)::Proxy(::\S+)? ", l, re.I)]
    return "".join(l.rstrip(";") + ";\n" for l in keep)


def parse_record(text: str) -> Dict[str, str]:
    rec: Dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line[:1] in (" ", "\t") and key:
            rec[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, val = line.partition(":")
            rec[key] = val.strip()
    return rec


def dep_names(field: str) -> List[str]:
    """Package names in a Depends field, alternatives included, in order."""
    names = []
    for alt in re.split(r"[,|]", field or ""):
        alt = alt.strip()
        if alt:
            names.append(re.split(r"[\s(:\[]", alt, 1)[0])
    return names


def version_gt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


# --------------------------------------------------------------------------
# choosing packages


@dataclasses.dataclass(frozen=True)
class Candidate:
    suite: str
    abi: str
    version: str
    packages: Tuple[Tuple[str, str, int], ...]  # (name, version, size) to unpack

    @property
    def key(self) -> str:
        # the directory is exported to QEMU (-fsdev path=...) and named on
        # the guest's command line: keep it to plain characters
        return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{self.abi}-{ARCH}_{self.version}")


def choose(apt: AptRoot) -> Candidate:
    """The newest amd64 kernel of the suite and the packages that make it up.

    Two layouts exist. Up to trixie, linux-image-<abi>-amd64[-unsigned]
    holds /boot/vmlinuz and /lib/modules. From 7.x (sid, experimental)
    linux-image-<abi>-amd64 is a small package depending on
    linux-binary[-unsigned]-<abi>-amd64 (the image), linux-modules-<abi>-amd64
    and linux-base-<abi>-amd64 (config, System.map). Unsigned images are
    taken where they exist: QEMU boots without Secure Boot, and they are
    the same kernel.
    """
    images = [n for n in apt.pkgnames("linux-image-") if _IMAGE_RE.match(n)]
    recs = apt.show(images)
    best: Optional[Dict[str, str]] = None
    for r in recs:
        if r.get("Architecture") != ARCH or "Version" not in r:
            continue
        if best is None or version_gt(r["Version"], best["Version"]):
            best = r
    if best is None:
        raise FetchError(f"no linux-image-*-{ARCH} package found in {apt.suite}")
    name, version = best["Package"], best["Version"]
    abi = _IMAGE_RE.match(name).group(1)

    index: Dict[str, Dict[str, str]] = {}

    def record(pkg: str) -> Optional[Dict[str, str]]:
        if pkg not in index:
            for r in apt.show([pkg]):
                if r.get("Version") == version and r.get("Architecture") in (ARCH, "all"):
                    index[pkg] = r
                    break
            else:
                index[pkg] = {}
        return index[pkg] or None

    wanted: List[str] = []

    def add_closure(root: str, allowed: re.Pattern) -> None:
        todo = [root]
        while todo:
            pkg = todo.pop(0)
            if pkg in wanted:
                continue
            unsigned = pkg.replace("linux-binary-", "linux-binary-unsigned-", 1) if pkg.startswith("linux-binary-") and "-unsigned-" not in pkg else None
            if unsigned and record(unsigned):
                pkg = unsigned
            rec = record(pkg)
            if rec is None:
                raise FetchError(f"{apt.suite}: package {pkg} (= {version}) is not in the archive")
            wanted.append(pkg)
            for dep in dep_names(rec.get("Depends", "")) + dep_names(rec.get("Pre-Depends", "")):
                if abi in dep and allowed.match(dep) and dep not in wanted:
                    # linux-binary-X | linux-binary-unsigned-X style alternatives: first one wins
                    if dep.startswith("linux-binary-unsigned-") and any(w.startswith("linux-binary-") for w in wanted):
                        continue
                    todo.append(dep)

    image_unsigned = f"linux-image-{abi}-{ARCH}-unsigned"
    if record(image_unsigned):
        add_closure(image_unsigned, re.compile(r"^linux-(base|binary|modules)-"))
    else:
        add_closure(name, re.compile(r"^linux-(base|binary|modules)-"))
    add_closure(f"linux-headers-{abi}-{ARCH}", re.compile(r"^linux-headers-"))
    pkgs = tuple((p, version, int(index[p].get("Size", "0") or 0)) for p in wanted)
    return Candidate(apt.suite, abi, version, pkgs)


# --------------------------------------------------------------------------
# unpacking


def _find_moddir(root: Path, abi: str) -> Path:
    for base in (root / "lib/modules", root / "usr/lib/modules"):
        if base.is_dir():
            dirs = [d for d in base.iterdir() if d.is_dir() and not d.is_symlink() and d.name.startswith(abi)]
            # the image's own directory has modules (kernel/); a headers-only one has just build
            for d in dirs:
                if (d / "kernel").is_dir() or (d / "modules.order").exists():
                    return d
    raise FetchError(f"no lib/modules/{abi}-* directory with modules in the unpacked packages under {root}")


def _find_image(root: Path, moddir: Path, release: str) -> Path:
    """boot/vmlinuz-<release> up to trixie; <moddir>/vmlinuz[.unsigned] from 7.x."""
    for p in [root / f"boot/vmlinuz-{release}", moddir / "vmlinuz", moddir / "vmlinuz.unsigned", *sorted(moddir.glob("vmlinuz*"))]:
        if p.is_file():
            return p
    raise FetchError(f"no kernel image (boot/vmlinuz-{release} or {moddir.name}/vmlinuz) in the unpacked packages under {root}")


def _link_headers(root: Path, moddir: Path, release: str, abi: str) -> None:
    """lib/modules/<release>/build and source -> the unpacked headers (relative links).

    Relative links keep working wherever the tree is seen from: inside the
    guest, /lib/modules/<release> is itself a link to this directory.
    """
    build = root / f"usr/src/linux-headers-{release}"
    common = root / f"usr/src/linux-headers-{abi}-common"
    if not (build / "include").exists() and not (build / "Makefile").exists():
        raise FetchError(f"headers not found at {build} after unpacking")
    for name, target in (("build", build), ("source", common if common.is_dir() else build)):
        link = moddir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, moddir))
        if not link.resolve().is_dir():
            raise FetchError(f"{link} does not resolve to a directory")


def _depmod(moddir: Path, release: str) -> None:
    """modules.dep etc., which .debs leave to their postinst (virtme-ng needs them)."""
    depmod = shutil.which("depmod") or ("/sbin/depmod" if os.path.exists("/sbin/depmod") else None)
    if depmod is None:
        raise FetchError("depmod not found: install kmod (scripts/setup test does)")
    base = moddir.parent.parent.parent  # <base>/lib/modules/<release>
    p = subprocess.run([depmod, "-a", "-b", str(base), release], stderr=subprocess.PIPE, text=True)
    if p.returncode != 0 or not (moddir / "modules.dep").exists():
        raise FetchError(f"depmod failed for {moddir}: {p.stderr.strip()[:200]}")


def _load_stamp(d: Path, suite: str) -> Optional[Kernel]:
    try:
        data = json.loads((d / STAMP).read_text())
        k = Kernel(
            suite=suite,
            abi=data["abi"],
            version=data["version"],
            release=data["release"],
            root=d,
            image=d / data["image"],
            moddir=d / data["moddir"],
            packages=tuple(data["packages"]),
            download_bytes=0,
            seconds=0.0,
        )
    except (OSError, ValueError, KeyError):
        return None
    if k.image.is_file() and (k.moddir / "build").resolve().is_dir():
        return k
    return None


def fetch(suite: str, cache_root: Path = CACHE_ROOT, progress: Callable[[str], None] = log) -> Kernel:
    """Newest kernel of `suite`, unpacked under cache_root (downloaded only when not cached)."""
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}: choose from {', '.join(SUITES)}")
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / ".lock", "w") as lock:
        # one fetch at a time: apt's lists and the unpacking dirs are shared
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fetch_locked(suite, cache_root, progress)


def _fetch_locked(suite: str, cache_root: Path, progress: Callable[[str], None]) -> Kernel:
    t0 = time.monotonic()
    apt = AptRoot(suite, cache_root)
    try:
        apt.update()
        cand = choose(apt)
    except FetchError as e:
        # archive unreachable: the kernel this suite had last time will do
        try:
            last = cache_root / (apt.dir / "current").read_text().strip()
        except OSError:
            raise e from None
        k = _load_stamp(last, suite)
        if k is None:
            raise
        progress(f"{suite}: {e}; using the cached {k.release} ({k.version}), possibly no longer the newest")
        return k
    dest = cache_root / cand.key
    (apt.dir / "current").write_text(cand.key + "\n")
    k = _load_stamp(dest, suite)
    if k is not None:
        progress(f"{suite}: {k.release} ({k.version}) cached in {dest} ({time.monotonic() - t0:.1f}s to check)")
        _prune(cache_root, suite, cand.key)
        return k

    total = sum(s for _, _, s in cand.packages)
    progress(f"{suite}: downloading {cand.abi}-{ARCH} {cand.version}: {len(cand.packages)} packages, {total / 1e6:.0f} MB")
    work = cache_root / f".{cand.key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    debs = work / "debs"
    tree = work / "tree"
    debs.mkdir(parents=True)
    tree.mkdir()
    td = time.monotonic()
    apt.run(["apt-get", "download", "-q", *[f"{n}={v}" for n, v, _ in cand.packages]], cwd=debs)
    got = sorted(debs.glob("*.deb"))
    size = sum(p.stat().st_size for p in got)
    progress(f"{suite}: downloaded {size / 1e6:.0f} MB in {time.monotonic() - td:.1f}s; unpacking")
    if len(got) != len(cand.packages):
        raise FetchError(f"{suite}: apt-get download gave {len(got)} of {len(cand.packages)} packages")
    tu = time.monotonic()
    for deb in got:
        p = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise FetchError(f"dpkg-deb -x {deb.name} failed: {p.stderr.strip().splitlines()[-1:]}")
    moddir = _find_moddir(tree, cand.abi)
    release = moddir.name
    image = _find_image(tree, moddir, release)
    _link_headers(tree, moddir, release, cand.abi)
    _depmod(moddir, release)
    os.rename(tree, dest)
    shutil.rmtree(work, ignore_errors=True)
    stamp = {
        "suite": suite,
        "abi": cand.abi,
        "version": cand.version,
        "release": release,
        "image": str(image.relative_to(tree)),
        "moddir": str(moddir.relative_to(tree)),
        "packages": [f"{n}={v}" for n, v, _ in cand.packages],
        "download_bytes": size,
    }
    (dest / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    secs = time.monotonic() - t0
    progress(f"{suite}: {release} ready in {dest} (unpacked in {time.monotonic() - tu:.1f}s, {secs:.1f}s in all)")
    _prune(cache_root, suite, cand.key)
    k = _load_stamp(dest, suite)
    assert k is not None
    return dataclasses.replace(k, download_bytes=size, seconds=secs)


def _prune(cache_root: Path, suite: str, keep: str) -> None:
    """Delete this suite's older kernels that no suite currently points at."""
    current = set()
    for f in cache_root.glob("apt/*/current"):
        try:
            current.add(f.read_text().strip())
        except OSError:
            pass
    for stamp in cache_root.glob(f"*/{STAMP}"):
        d = stamp.parent
        if d.name == keep or d.name in current:
            continue
        try:
            if json.loads(stamp.read_text()).get("suite") == suite:
                log(f"{suite}: removing superseded {d}")
                shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            pass
