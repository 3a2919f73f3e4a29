"""The annotated view of one critical section, shared by `rseqtop annotate`
(text and JSON) and the live view's drill-down: each instruction of the
section with its source line and how often a thread was interrupted there
(the snapshot's per-offset abort counts), then the abort handler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rseqtop.model.snapshot import SiteStats
from rseqtop.present.rows import cause_split
from rseqtop.present.textsafe import printable

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class InsnRow:
    offset: int  # from start_ip
    insn: object  # rseqtop.symbols.annotate.Insn
    interrupted: int  # aborts whose interrupted IP was this instruction
    share: Optional[float]  # percent of the section's aborts


@dataclass(frozen=True)
class Annotated:
    site: SiteStats
    listing: object  # rseqtop.symbols.annotate.Listing, or None when error is set
    error: str = ""

    def rows(self) -> list:
        """One InsnRow per instruction of the section."""
        if self.listing is None:
            return []
        counts = dict(self.site.offsets)
        base = self.listing.start_vaddr
        return [InsnRow(i.vaddr - base, i, counts.get(i.vaddr - base, 0), self._share(counts.get(i.vaddr - base, 0)))
                for i in self.listing.section]

    def _share(self, n: int) -> Optional[float]:
        return 100.0 * n / self.site.aborts if self.site.aborts else None

    def stray_offsets(self) -> tuple:
        """(offset, aborts) the kernel reported at no instruction's first byte
        of this listing (the file changed since it was mapped, or it was not
        disassembled: a section longer than the worker's limit)."""
        if self.listing is None:
            return ()
        starts = {i.vaddr - self.listing.start_vaddr for i in self.listing.section}
        return tuple((off, n) for off, n in self.site.offsets if off not in starts)

    def unattributed(self) -> int:
        """Aborts without an interrupted offset (the offsets map was full)."""
        return max(0, self.site.aborts - sum(n for _, n in self.site.offsets))


def order_sites(sites) -> list:
    """Most aborting first, then by address."""
    return sorted(sites, key=lambda s: (-s.aborts, s.start_ip))


def _share_text(share: Optional[float]) -> str:
    return "-" if share is None else f"{share:.0f}%"


def header_lines(a: Annotated) -> list:
    s = a.site
    post = s.start_ip + s.post_commit_offset
    lines = [(f"{printable(s.symbol)}  start_ip {s.start_ip:#x}  post_commit_ip {post:#x} "
              f"(+{s.post_commit_offset:#x})  abort_ip {s.abort_ip:#x}"),
             f"aborts {s.aborts}  causes: {cause_split(s.causes, limit=6) or '-'}"]
    if a.listing is not None:
        where = (f"lines from {printable(a.listing.debug_file)}" if a.listing.debug_file
                 else f"no source lines: {a.listing.debug_note}")
        lines.append(f"binary {printable(a.listing.module)}  {where}")
    return lines


def _insn_text(i, a: Annotated) -> str:
    """The instruction; a direct branch's target (a file address in the
    listing) as its run-time address, and its offset when inside the section."""
    op = i.op_str
    if op.startswith("0x") and i.mnemonic.startswith(("j", "call", "b")):
        try:
            target = int(op, 16)
        except ValueError:
            target = None
        if target is not None:
            off = target - a.listing.start_vaddr
            op = f"{target + a.site.start_ip - a.listing.start_vaddr:#x}"
            if 0 <= off < a.site.post_commit_offset:
                op += f" <+{off:#x}>"
    return printable(f"{i.mnemonic} {op}".strip())


def table_lines(a: Annotated) -> list:
    """The listing as text lines (no header)."""
    if a.error:
        return [f"cannot annotate: {printable(a.error)}"]
    rows = a.rows()
    width = max([len(printable(r.insn.source)) for r in rows] + [len("SOURCE")])
    lines = [f"{'SOURCE':<{width}}  {'OFFSET':>7}  {'INSTRUCTION':<44} {'INTERRUPTED':>11} {'SHARE':>5}"]
    for r in rows:
        lines.append(f"{printable(r.insn.source):<{width}}  {'+' + hex(r.offset):>7}  {_insn_text(r.insn, a):<44} "
                     f"{r.interrupted:>11} {_share_text(r.share):>5}")
    post = a.site.post_commit_offset
    lines.append(f"{'':<{width}}  {'+' + hex(post):>7}  (post_commit_ip: the commit is done)")
    if a.listing.truncated:
        lines.append(f"(the section is longer than what was disassembled: the first "
                     f"{rows[-1].offset + rows[-1].insn.size if rows else 0} bytes are shown)")
    stray = a.stray_offsets()
    if stray:
        text = " ".join(f"+{off:#x} {n}" for off, n in stray)
        lines.append(f"interrupted at no instruction start of this listing (file changed?): {text}")
    if a.unattributed():
        lines.append(f"aborts without an offset (offsets map full): {a.unattributed()}")
    handler = list(a.listing.abort) + list(a.listing.handler)
    if handler:
        sig = a.listing.signature
        lines.append("")
        lines.append(f"abort handler (abort_ip {a.site.abort_ip:#x}"
                     + (f", signature {sig:#010x} before it" if sig is not None else "") + "):")
        base = a.listing.abort[0].vaddr if a.listing.abort else 0
        for k, i in enumerate(handler):
            if k == len(a.listing.abort):
                lines.append(f"{'':<{width}}  -> {i.vaddr - base + a.site.abort_ip:#x}")
            addr = i.vaddr - base + a.site.abort_ip
            lines.append(f"{printable(i.source):<{width}}  {addr:#x}  {_insn_text(i, a)}")
    return lines


def text(a: Annotated) -> str:
    return "\n".join(header_lines(a) + table_lines(a)) + "\n"


def _insn_json(i, runtime: int) -> dict:
    return {"address": runtime, "bytes": i.raw, "mnemonic": i.mnemonic, "operands": i.op_str,
            "file": i.file or None, "dir": i.dir or None, "line": i.line or None}


def json_record(a: Annotated) -> dict:
    s = a.site
    rec = {"section": s.symbol, "start_ip": s.start_ip, "post_commit_ip": s.start_ip + s.post_commit_offset,
           "abort_ip": s.abort_ip, "aborts": s.aborts, "causes": dict(s.causes), "error": a.error or None}
    if a.listing is None:
        return rec
    listing = a.listing
    rec.update(binary=listing.module, file_start=listing.start_vaddr, debug_file=listing.debug_file,
               debug_note=listing.debug_note or None, truncated=listing.truncated)
    rec["instructions"] = [dict(_insn_json(r.insn, s.start_ip + r.offset), offset=r.offset,
                                interrupted=r.interrupted, share_percent=r.share) for r in a.rows()]
    rec["stray_offsets"] = {str(off): n for off, n in a.stray_offsets()}
    rec["aborts_without_offset"] = a.unattributed()
    base = listing.abort[0].vaddr if listing.abort else 0
    rec["abort_handler"] = {
        "signature": listing.signature,
        "at_abort_ip": [_insn_json(i, i.vaddr - base + s.abort_ip) for i in listing.abort],
        # where abort_ip's jump lands (run-time addresses: the listing's
        # file addresses plus the load bias of abort_ip)
        "target": [_insn_json(i, i.vaddr - base + s.abort_ip) for i in listing.handler],
    }
    return rec
