"""One self-contained HTML page from a Recording: inline CSS and SVG, no
script and no network (its Content-Security-Policy forbids both, so even a
name that escaped escaping could not run). Every number shown comes from
the recording's final totals or its series; every text from the recording
goes through svg.esc. Numbers tests read back carry data-value attributes.
"""

from __future__ import annotations

import time

from rseqtop import __version__
from rseqtop.recording.reader import Process, Recording, Section
from rseqtop.report import flame, svg
from rseqtop.report.svg import esc

TOP = 8  # processes and sections drawn
MAX_BINS = 64  # offsets drawn per section; the rest are summed as "other"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
NO_STACKS = "no stacks recorded (record with --stacks)"

STYLE = """
body{font-family:sans-serif;margin:24px auto;max-width:920px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:14px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;word-break:break-all}.legend span{display:inline-block;margin-right:14px;font-size:12px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px}.warn{background:#fff4d6;padding:6px 10px}
.placeholder{color:#666;font-style:italic}.meta td:first-child{color:#666}
"""


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def proc_name(p: Process) -> str:
    return f"{p.comm} (pid {p.pid}{f', #{p.incarnation + 1}' if p.incarnation else ''})"


def section_name(s: Section) -> str:
    return f"{s.symbol} (pid {s.pid})"


def cause_text(causes: dict, total: int) -> str:
    parts = sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} {100 * n / total:.1f}%" for name, n in parts) if total else ""


def top_cause(causes: dict) -> str:
    return max(causes.items(), key=lambda kv: (kv[1], kv[0]))[0] if causes else ""


def _legend(names: list) -> str:
    items = "".join(f'<span><i class="sw" style="background:{svg.PALETTE[i % len(svg.PALETTE)]}"></i>'
                    f"{esc(n)}</span>" for i, n in enumerate(names))
    return f'<div class="legend">{items}</div>'


def _rate_chart(items: list, name, start: float, what: str) -> str:
    series = [(name(x), [(t - start, r) for t, r in x.series.rates()]) for x in items]
    if not any(pts for _, pts in series):
        return '<p class="placeholder">one sample only: rates need two (record for longer than -d)</p>'
    return svg.line_chart(series, "seconds since the start", f"{what} aborts/s") + _legend([n for n, _ in series])


def _more(shown: int, total: int, what: str) -> str:
    return f"<p>and {total - shown} more {what} (see the table)</p>" if total > shown else ""


def _meta(rec: Recording) -> str:
    h = rec.header
    rows = [("host", h["host"]), ("kernel", h["kernel"]), ("rseq era", rec.era),
            ("recorded", f"{when(rec.first_time)}, {rec.last_time - rec.first_time:.1f} s, {rec.samples} samples "
                         f"every {h['interval_s']:g} s"),
            ("watching", h["watching"]), ("recorded by", f"rseqtop {h['rseqtop']} (format version {h['version']})")]
    if rec.unavailable_causes:
        rows.append(("causes this kernel cannot see", ", ".join(rec.unavailable_causes) + " (n/a, not 0)"))
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
    out = f'<table class="meta">{body}</table>'
    warnings = []
    if rec.events_lost:
        warnings.append(f"{rec.events_lost:,} abort events lost (ring buffer full; counts are not affected)")
    if rec.maps_dropped:
        warnings.append(f"{rec.maps_dropped:,} map inserts dropped (a map was full: some counts are missing)")
    if rec.probe_misses:
        warnings.append(f"{rec.probe_misses:,} probe runs skipped by the kernel (events not seen)")
    for kind, n in sorted(rec.skipped_kinds.items()):
        warnings.append(f"{n:,} lines of kind {kind!r} skipped: this rseqtop does not read them")
    return out + "".join(f'<p class="warn">{esc(w)}</p>' for w in warnings)


def _processes(procs: list, rec: Recording) -> str:
    head = ('<tr><th class="n">PID</th><th>COMM</th><th class="n">ABORTS</th><th class="n">PEAK/s</th>'
            '<th class="n">MEAN/s</th><th>CAUSES</th><th>TOP SECTION</th></tr>')
    span = (rec.last_time - rec.first_time) or None
    rows = []
    for p in procs:
        rates = [r for _, r in p.series.rates()]
        best = max(p.sections.values(), key=lambda s: (s.aborts, -s.start_ip), default=None)
        rows.append(f'<tr data-pid="{p.pid}"><td class="n">{p.pid}</td><td>{esc(p.comm)}</td>'
                    f'<td class="n" data-value="{p.aborts}">{p.aborts:,}</td>'
                    f'<td class="n">{svg.num(max(rates)) if rates else "-"}</td>'
                    f'<td class="n">{svg.num((p.aborts - p.series.totals[0]) / span) if span else "-"}</td>'
                    f'<td>{esc(cause_text(p.totals.get("causes", {}), p.aborts))}</td>'
                    f'<td><code>{esc(best.symbol) if best else ""}</code></td></tr>')
    return f'<table id="processes">{head}{"".join(rows)}</table>'


def _causes(rec: Recording) -> str:
    causes = sorted(rec.causes().items(), key=lambda kv: (-kv[1], kv[0]))
    if not causes:
        return "<p>no aborts recorded</p>"
    total = sum(n for _, n in causes)
    rows = "".join(f'<tr data-cause="{esc(name)}"><td>{esc(name)}</td><td class="n" data-value="{n}">{n:,}</td>'
                   f'<td class="n">{100 * n / total:.1f}%</td></tr>' for name, n in causes)
    return (svg.bar_chart(causes, "aborts by cause") +
            f'<table id="causes"><tr><th>CAUSE</th><th class="n">ABORTS</th><th class="n">SHARE</th></tr>{rows}'
            "</table>")


def _preempters(sections: list) -> str:
    """Only for recordings that have per-section preempters."""
    with_data = [s for s in sections if s.preempters]
    if not with_data:
        return ""
    parts = ["<h2>Preempters</h2><p>What ran on the CPU when a thread was preempted inside the section.</p>"]
    for s in with_data:
        rows = "".join(f'<tr><td class="n">{pid}</td><td>{esc(comm)}</td><td class="n" data-value="{n}">{n:,}</td>'
                       "</tr>" for pid, comm, n in sorted(s.preempters, key=lambda e: (-e[2], e[0]))[:20])
        parts.append(f"<h3><code>{esc(section_name(s))}</code></h3><table class=\"preempters\">"
                     f'<tr><th class="n">PID</th><th>COMM</th><th class="n">COUNT</th></tr>{rows}</table>')
    return "".join(parts)


def offset_bins(offsets: dict) -> list:
    """[(label, count)] by offset; beyond MAX_BINS offsets the least hit are summed as "other"."""
    items = sorted(offsets.items())
    if len(items) > MAX_BINS:
        keep = set(sorted(offsets, key=lambda o: (-offsets[o], o))[:MAX_BINS - 1])
        rest = sum(n for o, n in items if o not in keep)
        return [(f"+{o:#x}", n) for o, n in items if o in keep] + [("other", rest)]
    return [(f"+{o:#x}", n) for o, n in items]


def _offsets(sections: list) -> str:
    parts = []
    for s in sections:
        bins = offset_bins(s.offsets)
        rows = "".join(f'<tr><td><code>{esc(label)}</code></td><td class="n" data-value="{n}">{n:,}</td></tr>'
                       for label, n in bins)
        parts.append(f"<h3><code>{esc(section_name(s))}</code>: {s.aborts:,} aborts</h3>"
                     + (svg.histogram(bins, f"interrupted offsets of {s.symbol}", "offset from the section's start")
                        if bins else "<p>no offsets recorded</p>")
                     + f'<details><summary>counts</summary><table class="offsets" data-start-ip="{s.start_ip}">'
                     f'<tr><th>OFFSET</th><th class="n">ABORTS</th></tr>{rows}</table></details>')
    return "".join(parts) or "<p>no sections with aborts</p>"


def _flame(rec: Recording) -> str:
    if not rec.stacks:
        return f'<p class="placeholder" id="no-stacks">{NO_STACKS}</p>'
    stacks = flame.stacks_of(rec.stack_rows, rec.stacks_dropped)
    total = sum(n for _, n in stacks)
    lost = sum(r.count for r in rec.stack_rows if r.lost) + rec.stacks_dropped
    graph = flame.flame_graph(stacks)
    if not graph:
        return '<p class="placeholder" id="no-stacks">stacks recorded, but no aborts</p>'
    return (f'<p>User call stacks of <b id="stack-aborts" data-value="{total}">{total:,}</b> aborts '
            f'(each frame as wide as its aborts; hover for counts), of which <span id="lost-stacks" '
            f'data-value="{lost}">{lost:,}</span> without a stack. <code>rseqtop report FILE --folded</code> '
            f"prints them for flamegraph.pl or speedscope.</p>"
            f'<div class="chart" id="flame-graph">{graph}</div>')


def render(rec: Recording) -> str:
    procs = sorted(rec.processes, key=lambda p: (-p.aborts, p.pid, p.incarnation))
    procs = [p for p in procs if p.aborts] or procs
    sections = sorted((s for s in rec.sections() if s.aborts), key=lambda s: (-s.aborts, s.pid, s.start_ip))
    start = rec.first_time
    total = rec.total_aborts()
    title = f"rseqtop report: {rec.header['host']}, {when(start)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{STYLE}</style></head><body>
<h1>{esc(title)}</h1>
{_meta(rec)}
<h2>Summary</h2>
<p>Total aborts: <b id="total-aborts" data-value="{total}">{total:,}</b> in {plural(len(procs), "process")}</p>
{_processes(procs, rec)}
<h2>Abort rate per process</h2>
{_rate_chart(procs[:TOP], proc_name, start, "process")}{_more(min(TOP, len(procs)), len(procs), "processes")}
<h2>Abort rate of the top critical sections</h2>
{_rate_chart(sections[:TOP], section_name, start, "section") if sections else "<p>no sections with aborts</p>"}
<h2>Causes</h2>
{_causes(rec)}
{_preempters(sections[:TOP])}
<h2>Where sections were interrupted</h2>
<p>Interrupted offset (from the section's start) and the aborts there, for the top sections.</p>
{_offsets(sections[:TOP])}
<h2>Flame graph</h2>
{_flame(rec)}
<p style="color:#888;font-size:12px">made by rseqtop {esc(__version__)} from {esc(rec.path)}</p>
</body></html>
"""
