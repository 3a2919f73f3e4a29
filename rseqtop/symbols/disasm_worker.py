"""The bounded worker behind `rseqtop annotate`: disassembly (capstone) and
DWARF line tables (pyelftools) of one critical section.

Watched processes choose the files they map, and neither pyelftools nor
capstone was written for hostile input (pyelftools can be made to loop, to
recurse deeply or to decompress a bomb). So this module never runs inside
rseqtop: `rseqtop.symbols.annotate` starts it as a child process
(`python -c ... run_worker()`), hands it the binary as an open file
descriptor and a JSON request on stdin, and reads one JSON object from
stdout. The child limits itself (RLIMIT_AS, RLIMIT_CPU, no core files)
before it imports either library, and the parent kills it after a timeout.
Whatever goes wrong inside comes back as {"error": "one line"}.

Request: {"fd": N, "start": file offset of start_ip, "length":
post_commit_offset, "abort": file offset of abort_ip or null, "path": the
binary's path in the process, "root": that process's root directory,
"debug_dirs": global debug directories (/usr/lib/debug)}.

Reply: {"machine", "debug_file" (where line numbers came from, or null),
"debug_note" (why there are none), "section": [insn], "truncated",
"signature" (the 4 bytes before abort_ip, as an integer), "abort": [insn],
"handler": [insn] (where abort_ip's jump lands)}; insn = {"vaddr",
"size", "bytes", "mnemonic", "op_str", "file", "dir", "line"}.
"""

from __future__ import annotations

import binascii
import json
import os
import resource
import sys

# Limits the worker sets on itself (the parent adds a wall-clock timeout).
AS_LIMIT = 1 << 30          # address space: pyelftools' decompression, capstone
CPU_LIMIT = 10              # seconds of CPU
MAX_SECTION = 4096          # bytes of a section disassembled at most (real ones: < 256)
MAX_HANDLER_INSNS = 24      # instructions shown from abort_ip, and where it jumps to
MAX_DEBUGLINK_FILE = 1 << 30  # a debuglink candidate's CRC is checked only below this size
MAX_CUS = 100_000           # compilation units scanned when there are no aranges


def _limit_self() -> None:
    for res, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_AS, AS_LIMIT),
                       (resource.RLIMIT_CPU, CPU_LIMIT)):
        _soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, hard if hard != resource.RLIM_INFINITY else value))


class Refused(Exception):
    """A binary this worker does not handle (the message says why)."""


# ------------------------------------------------------------------ ELF

def _segments(elf) -> list:
    segs = []
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD":
            segs.append((seg["p_offset"], seg["p_vaddr"], seg["p_filesz"]))
    if not segs:
        raise Refused("no loadable segments")
    return segs


def _offset_to_vaddr(segs: list, offset: int) -> int:
    for off, vaddr, size in segs:
        if off <= offset < off + size:
            return offset - off + vaddr
    # a mapping starts at a page boundary before its segment's first byte
    for off, vaddr, size in segs:
        if (off & ~0xFFF) <= offset < off + size:
            return offset - off + vaddr
    raise Refused(f"file offset {offset:#x} is in no loadable segment")


def _vaddr_to_offset(segs: list, vaddr: int):
    for off, va, size in segs:
        if va <= vaddr < va + size:
            return vaddr - va + off
    return None


def _read(fileobj, offset: int, length: int) -> bytes:
    fileobj.seek(offset)
    return fileobj.read(length)


# ------------------------------------------------------------------ disassembly

_ARCH = {"EM_X86_64": ("CS_ARCH_X86", "CS_MODE_64"), "EM_AARCH64": ("CS_ARCH_ARM64", "CS_MODE_ARM")}
_ENDS = {"jmp", "ret", "retq", "ud2", "b", "br", "hlt"}  # control does not fall through


def _disassembler(elf):
    import capstone

    machine = elf["e_machine"]
    if machine not in _ARCH:
        raise Refused(f"machine {machine} is not supported (x86-64 and arm64 are)")
    arch, mode = _ARCH[machine]
    md = capstone.Cs(getattr(capstone, arch), getattr(capstone, mode))
    md.skipdata = True  # data between instructions shows as .byte, not a stop
    return md


def _insns(md, code: bytes, vaddr: int, limit: int = 0, stop_at_end: bool = False) -> list:
    out = []
    for insn in md.disasm(code, vaddr):
        out.append({"vaddr": insn.address, "size": insn.size, "bytes": insn.bytes.hex(),
                    "mnemonic": insn.mnemonic, "op_str": insn.op_str})
        if (limit and len(out) >= limit) or (stop_at_end and insn.mnemonic in _ENDS):
            break
    return out


def _direct_target(insn: dict):
    if insn["mnemonic"] not in ("jmp", "b"):
        return None
    text = insn["op_str"].lstrip("#")
    try:
        return int(text, 16) if text.startswith("0x") else None
    except ValueError:
        return None


# ------------------------------------------------------------------ DWARF

def _build_id(elf):
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_NOTE":
            continue
        for note in sec.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID" and isinstance(note["n_desc"], str):
                return note["n_desc"]
    return None


def _debuglink(elf):
    sec = elf.get_section_by_name(".gnu_debuglink")
    if sec is None:
        return None
    data = sec.data()
    name, _, rest = data.partition(b"\0")
    if not name or b"/" in name or len(name) > 255:
        return None
    pad = (4 - (len(name) + 1) % 4) % 4
    crc = rest[pad:pad + 4]
    if len(crc) != 4:
        return None
    return name.decode("utf-8", "surrogateescape"), int.from_bytes(crc, "little")


def _open_regular(path: str):
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _crc32(f) -> int:
    crc = 0
    f.seek(0)
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            return crc
        crc = binascii.crc32(chunk, crc)


def _debug_elf(elf, req: dict):
    """(ELFFile with line tables, where it came from) or (None, why not)."""
    from elftools.elf.elffile import ELFFile

    if elf.get_section_by_name(".debug_line") is not None or elf.get_section_by_name(".zdebug_line") is not None:
        return elf, req.get("path") or "the binary"
    root = req.get("root") or ""
    dirs = [d for d in req.get("debug_dirs", []) if isinstance(d, str)]
    tried = []
    build_id = _build_id(elf)
    if build_id and len(build_id) > 2 and all(c in "0123456789abcdef" for c in build_id):
        for base in dirs:
            for prefix in ("", root):
                path = f"{prefix}{base}/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
                f = _open_regular(path)
                tried.append(path)
                if f is not None:
                    dbg = ELFFile(f)
                    if dbg.get_section_by_name(".debug_line") is not None:
                        return dbg, path
    link = _debuglink(elf)
    binary = req.get("path") or ""
    if link and binary.startswith("/"):
        name, crc = link
        here = os.path.dirname(binary)
        for path in [f"{root}{here}/{name}", f"{root}{here}/.debug/{name}"] + \
                    [f"{prefix}{base}{here}/{name}" for base in dirs for prefix in ("", root)]:
            f = _open_regular(path)
            tried.append(path)
            if f is None:
                continue
            if os.fstat(f.fileno()).st_size > MAX_DEBUGLINK_FILE or _crc32(f) != crc:
                continue
            dbg = ELFFile(f)
            if dbg.get_section_by_name(".debug_line") is not None:
                return dbg, path
    if not build_id and not link:
        return None, "no debug info, build-id or .gnu_debuglink in the binary"
    return None, "no debug info in the binary and no separate debug file found"


class _Lines:
    """addr -> (dir, file, line) from the DWARF line programs."""

    def __init__(self, dwarf) -> None:
        self.dwarf = dwarf
        self._cache: dict = {}  # CU offset -> sorted rows
        try:
            self.aranges = dwarf.get_aranges()
        except Exception:
            self.aranges = None

    def _rows(self, cu):
        rows = self._cache.get(cu.cu_offset)
        if rows is not None:
            return rows
        rows = []
        lp = self.dwarf.line_program_for_CU(cu)
        if lp is not None:
            version = lp.header["version"]
            files = lp["file_entry"]
            dirs = lp["include_directory"]
            prev = None
            for entry in lp.get_entries():
                st = entry.state
                if st is None:
                    continue
                if prev is not None and not prev.end_sequence:
                    rows.append((prev.address, st.address, self._name(files, dirs, version, prev.file),
                                 prev.line))
                prev = st
            rows.sort(key=lambda r: (r[0], r[1]))
        self._cache[cu.cu_offset] = rows
        return rows

    @staticmethod
    def _name(files, dirs, version, index):
        i = index if version >= 5 else index - 1
        if not 0 <= i < len(files):
            return ("", "?")
        fe = files[i]
        name = fe.name.decode("utf-8", "replace") if isinstance(fe.name, bytes) else str(fe.name)
        d = fe.dir_index if version >= 5 else fe.dir_index - 1
        dname = ""
        if 0 <= d < len(dirs):
            raw = dirs[d]
            dname = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return (dname, name)

    def _cus(self, addr: int):
        if self.aranges is not None:
            off = self.aranges.cu_offset_at_addr(addr)
            if off is not None:
                return [self.dwarf.get_CU_at(off)]
        cus = []
        for n, cu in enumerate(self.dwarf.iter_CUs()):
            if n >= MAX_CUS:
                break
            cus.append(cu)
        return cus

    def at(self, addr: int):
        for cu in self._cus(addr):
            best = None
            for lo, hi, name, line in self._rows(cu):
                if lo <= addr < hi and lo < hi:
                    best = (name, line)  # the last row that starts at or before addr wins
                elif lo > addr:
                    break
            if best is not None:
                return best
        return None


def _add_lines(lines, insns: list) -> None:
    for insn in insns:
        hit = lines.at(insn["vaddr"]) if lines is not None else None
        if hit:
            (d, name), line = hit
            insn.update(dir=d, file=name, line=line)
        else:
            insn.update(dir="", file="", line=0)


# ------------------------------------------------------------------ main

def annotate(req: dict) -> dict:
    from elftools.elf.elffile import ELFFile

    f = os.fdopen(int(req["fd"]), "rb")
    elf = ELFFile(f)
    md = _disassembler(elf)
    segs = _segments(elf)
    length = int(req["length"])
    if length <= 0:
        raise Refused(f"the section is {length} bytes long")
    truncated = length > MAX_SECTION
    length = min(length, MAX_SECTION)
    start_off = int(req["start"])
    start = _offset_to_vaddr(segs, start_off)
    code = _read(f, start_off, length)
    section = _insns(md, code, start)
    out = {"machine": elf["e_machine"], "start_vaddr": start, "section": section, "truncated": truncated,
           "signature": None, "abort": [], "handler": []}
    if req.get("abort") is not None:
        abort_off = int(req["abort"])
        abort = _offset_to_vaddr(segs, abort_off)
        if abort_off >= 4:
            sig = _read(f, abort_off - 4, 4)
            out["signature"] = int.from_bytes(sig, "little") if len(sig) == 4 else None
        out["abort"] = _insns(md, _read(f, abort_off, 16 * MAX_HANDLER_INSNS), abort,
                              MAX_HANDLER_INSNS, stop_at_end=True)
        target = _direct_target(out["abort"][-1]) if out["abort"] else None
        target_off = _vaddr_to_offset(segs, target) if target is not None else None
        if target_off is not None:
            out["handler"] = _insns(md, _read(f, target_off, 16 * MAX_HANDLER_INSNS), target,
                                    MAX_HANDLER_INSNS, stop_at_end=True)
    dbg, where = _debug_elf(elf, req)
    lines = None
    if dbg is not None:
        lines = _Lines(dbg.get_dwarf_info(relocate_dwarf_sections=False))
        out["debug_file"], out["debug_note"] = where, ""
    else:
        out["debug_file"], out["debug_note"] = None, where
    for key in ("section", "abort", "handler"):
        _add_lines(lines, out[key])
    return out


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_worker() -> None:
    _limit_self()
    sys.setrecursionlimit(2000)
    try:
        req = json.loads(sys.stdin.read(1 << 16))
        reply = annotate(req)
    except Refused as err:
        reply = {"error": str(err)}
    except MemoryError:
        reply = {"error": f"the binary needs more than {AS_LIMIT >> 20} MiB to read (malformed?)"}
    except RecursionError:
        reply = {"error": "the binary's debug info nests too deeply (malformed?)"}
    except Exception as err:  # pyelftools and capstone raise many kinds on malformed files
        reply = {"error": f"malformed binary ({_one_line(err)})"}
    sys.stdout.write(json.dumps(reply))
    sys.stdout.flush()


if __name__ == "__main__":
    run_worker()
