"""Static SVG charts, written by hand: a line chart (rates over time), a
horizontal bar chart (causes) and a histogram (interrupted offsets).

Hand-written rather than a plotting library: three simple chart types need
~150 lines, no dependency (matplotlib and numpy are tens of MB for this),
the output is a few KB per chart instead of embedded glyph paths, it is the
same bytes on every run, and every string that reaches the page goes
through esc() here, where a test can see it.
"""

from __future__ import annotations

import html
import math

from rseqtop.present.textsafe import printable

# Observable's 10-colour categorical palette (distinct for the common kinds
# of colour blindness), as many as the charts draw series.
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5",
           "#9c6b4e", "#9498a0")
FONT = 'font-family="sans-serif" font-size="11"'


def esc(text) -> str:
    """Text from a recording (attacker-controlled comms, symbols) made inert:
    control characters as \\xNN, then HTML-escaped (quotes too: it is also
    used inside attributes)."""
    return html.escape(printable(str(text)), quote=True)


def num(v: float) -> str:
    """A number for an axis or a label: 1234567 -> 1.23M, 0.5 -> 0.5."""
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def nice_ticks(top: float, n: int = 5) -> list:
    """0 and round steps (1, 2, 5 x 10^k) up to at least `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _svg(width: int, height: int, label: str, body: list) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}" {FONT}>'
            + "".join(body) + "</svg>")


def line_chart(series: list, x_label: str, y_label: str, width: int = 880, height: int = 260) -> str:
    """series: [(name, [(x, y), ...])], drawn in PALETTE order."""
    left, right, top, bottom = 56, 12, 10, 34
    pw, ph = width - left - right, height - top - bottom
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x0, x1 = (min(0.0, min(xs)), max(xs)) if xs else (0.0, 1.0)  # from 0: the start of the recording
    if x1 <= x0:
        x1 = x0 + 1.0
    yt = nice_ticks(max(ys) if ys else 0.0)
    y1 = yt[-1]

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - y / y1 * ph

    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>']
    for y in yt:
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
                    f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{num(y)}</text>')
    for x in nice_ticks(x1 - x0, 8):
        if x0 + x <= x1:
            body.append(f'<text x="{sx(x0 + x):.1f}" y="{top + ph + 14}" text-anchor="middle">{num(x)}</text>')
    body.append(f'<text x="{left + pw / 2:.0f}" y="{height - 4}" text-anchor="middle">{esc(x_label)}</text>'
                f'<text x="12" y="{top + ph / 2:.0f}" text-anchor="middle" '
                f'transform="rotate(-90 12 {top + ph / 2:.0f})">{esc(y_label)}</text>')
    for i, (name, pts) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8">'
                    f'<title>{esc(name)}</title></polyline>')
        if len(pts) == 1:
            x, y = pts[0]
            body.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>')
    return _svg(width, height, y_label, body)


def bar_chart(bars: list, label: str, width: int = 880) -> str:
    """Horizontal bars: [(name, value)], biggest first as given."""
    row, left, right = 22, 180, 90
    height = row * len(bars) + 8
    top_value = max((v for _, v in bars), default=0) or 1
    total = sum(v for _, v in bars) or 1
    body = []
    for i, (name, v) in enumerate(bars):
        y = 4 + i * row
        w = (width - left - right) * v / top_value
        body.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{esc(name)}</text>'
                    f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" '
                    f'fill="{PALETTE[i % len(PALETTE)]}"><title>{esc(name)}: {v:,}</title></rect>'
                    f'<text x="{left + w + 6:.1f}" y="{y + 14}">{v:,} ({100 * v / total:.1f}%)</text>')
    return _svg(width, height, label, body)


def histogram(bins: list, label: str, x_label: str, width: int = 880, height: int = 200) -> str:
    """Vertical bars in the order given: [(bin label, count)]."""
    left, right, top, bottom = 56, 12, 10, 46
    pw, ph = width - left - right, height - top - bottom
    yt = nice_ticks(max((v for _, v in bins), default=0))
    y1 = yt[-1]
    slot = min(48.0, pw / max(1, len(bins)))  # a few offsets stay bars, not slabs
    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#ccc"/>']
    for y in yt:
        sy = top + ph - y / y1 * ph
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy:.1f}" y2="{sy:.1f}" stroke="#eee"/>'
                    f'<text x="{left - 4}" y="{sy + 4:.1f}" text-anchor="end">{num(y)}</text>')
    every = max(1, math.ceil(len(bins) / (pw / 44)))  # labels that fit
    for i, (name, v) in enumerate(bins):
        h = v / y1 * ph
        x = left + i * slot
        body.append(f'<rect x="{x + slot * 0.1:.1f}" y="{top + ph - h:.1f}" width="{slot * 0.8:.1f}" '
                    f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{esc(name)}: {v:,}</title></rect>')
        if i % every == 0:
            body.append(f'<text x="{x + slot / 2:.1f}" y="{top + ph + 14}" text-anchor="middle">{esc(name)}</text>')
    body.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle">{esc(x_label)}</text>')
    return _svg(width, height, label, body)
