"""Abort call stacks (`record --stacks`) as folded text and as an SVG flame
graph.

Folded text is what flamegraph.pl, speedscope and inferno read: one line per
stack, `frame;frame;frame count`, root first. The root frame here is the
process (`comm [pid]`); a lost stack (the kernel could not take it) is
`comm [pid];[lost stack: EEXIST];section`, and aborts the recorder's full
map could not count are `[stack counts dropped] N`, so that the counts add
up to the aborts. Frame names come from the watched processes: control
characters are shown as \\xNN and a `;` (the separator) becomes `:`.

The flame graph is hand-written SVG like the other charts (rseqtop.report.svg):
root at the bottom, each frame's width proportional to its aborts, a
<title> per frame (hover) with the name and count, no script.
"""

from __future__ import annotations

import zlib

from rseqtop.present.textsafe import printable
from rseqtop.report.svg import _svg, esc

DROPPED = "[stack counts dropped]"
ROW = 17  # px per frame row
MIN_WIDTH = 0.5  # px: narrower frames are not drawn (their parent's width has them)
CHAR_PX = 6.6  # width of a character at 11 px sans-serif, roughly


def frame_text(name: str) -> str:
    """A frame as folded text allows it: printable, no `;`, one line."""
    return printable(name).replace(";", ":")


def _function(section: str) -> str:
    """"bin!func+0x1c" -> "bin!func" (the section's function)."""
    head, sep, _ = section.rpartition("+0x")
    return head if sep and "!" in head else section


def stacks_of(rows, dropped: int) -> list:
    """[(frames, count)]: each row's frames under its process, lost stacks
    under a [lost stack: WHY] frame, merged and sorted (same input, same
    output)."""
    merged: dict = {}
    for r in rows:
        root = f"{r.comm} [{r.pid}]"
        frames = (root, *r.frames) if not r.lost else (root, f"[lost stack: {r.lost}]", _function(r.section))
        key = tuple(frame_text(f) for f in frames)
        merged[key] = merged.get(key, 0) + r.count
    if dropped:
        merged[(DROPPED,)] = merged.get((DROPPED,), 0) + dropped
    return sorted((k, n) for k, n in merged.items() if n)


def folded(rows, dropped: int = 0) -> str:
    """Folded text, one stack per line."""
    return "".join(f"{';'.join(frames)} {n}\n" for frames, n in stacks_of(rows, dropped))


class _Node:
    __slots__ = ("name", "count", "children")

    def __init__(self, name: str):
        self.name = name
        self.count = 0
        self.children: dict = {}


def tree(stacks: list) -> _Node:
    root = _Node("all")
    for frames, n in stacks:
        root.count += n
        node = root
        for f in frames:
            node = node.children.setdefault(f, _Node(f))
            node.count += n
    return root


def _colour(name: str) -> str:
    """Warm colours as flame graphs have them, stable per name (crc32, not
    Python's per-run hash): the same input gives the same bytes."""
    h = zlib.crc32(name.encode("utf-8", "surrogateescape"))
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 120},{40 + (h >> 16) % 50})"


def _label(name: str, width: float) -> str:
    fits = int((width - 6) / CHAR_PX)
    if fits < 3:
        return ""
    return name if len(name) <= fits else name[: fits - 2] + ".."


def flame_graph(stacks: list, width: int = 880) -> str:
    """The SVG of [(frames, count)] (see stacks_of); "" without aborts."""
    root = tree(stacks)
    if root.count <= 0:
        return ""
    depth = 1 + max((len(f) for f, _ in stacks), default=0)
    height = depth * ROW + 4
    scale = (width - 2) / root.count
    body = []

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.count * scale
        if w < MIN_WIDTH:
            return
        y = height - 2 - (level + 1) * ROW
        pct = 100.0 * node.count / root.count
        body.append(f'<g class="frame" data-count="{node.count}"><title>{esc(node.name)}: {node.count:,} aborts '
                    f'({pct:.2f}%)</title><rect x="{x + 1:.2f}" y="{y}" width="{w:.2f}" height="{ROW - 1}" '
                    f'fill="{_colour(node.name)}" rx="2"/>')
        label = _label(node.name, w)
        if label:
            body.append(f'<text x="{x + 4:.2f}" y="{y + ROW - 5}">{esc(label)}</text>')
        body.append("</g>")
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, x, level + 1)
            x += child.count * scale

    draw(root, 0.0, 0)
    return _svg(width, height, "flame graph of aborts by call stack", body)
