"""Batch output of `rseqtop -b` (plain text tables, like `top -b`) and
`rseqtop --json` (one JSON object per interval). Both read only snapshots
(through rseqtop.present) and show every comm and symbol through
textsafe.printable (text) or JSON string escapes with ensure_ascii (JSON: the
exact name, every control and non-ASCII character as \\uXXXX), so a hostile
process name cannot reach the terminal raw.
"""

from __future__ import annotations

import json
import time
from typing import Optional

from rseqtop.model.snapshot import CAUSE_OF_FIELD, COUNT_FIELDS, all_aborts, top_preempters
from rseqtop.present.columns import PROCESS_COLUMNS, THREAD_COLUMNS, signal_name, sort_rows, system_rates_text
from rseqtop.present.rows import TOP_PREEMPTERS, LiveModel

SCHEMA_VERSION = 1
BATCH_PROCESS_COLUMNS = tuple(c for c in PROCESS_COLUMNS if c.key != "trend")


def table(rows: list, columns) -> list:
    """Plain text lines: a header and one line per row, columns aligned."""
    cells = [[c.title for c in columns]] + [[c.fmt(r) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    out = []
    for line in cells:
        parts = [(v.rjust(w) if c.right else v.ljust(w)) for v, w, c in zip(line, widths, columns)]
        out.append("  ".join(parts).rstrip())
    return out


def summary_line(model: LiveModel) -> str:
    snap = model.cur
    sysr = model.system()
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.wall))
    cpu = model.self_cpu_percent()
    st = snap.self_stats
    return (f"rseqtop {stamp}  {system_rates_text(sysr, st.unavailable_causes)}  era {snap.era}  "
            f"probes {len(st.probes_attached)}  lost {st.events_lost}  "
            f"cpu {'-' if cpu is None else f'{cpu:.1f}%'}")


def batch_text(model: LiveModel, threads: bool = False, sort: str = "aborts_s",
               include_idle: bool = False) -> str:
    """One interval of `rseqtop -b`: a summary line, then the table."""
    lines = [summary_line(model)]
    if threads:
        rows = sort_rows(model.thread_rows(include_idle=include_idle), THREAD_COLUMNS,
                         sort if sort in {c.key for c in THREAD_COLUMNS} else "aborts_s")
        lines += table(rows, THREAD_COLUMNS)
    else:
        rows = sort_rows(model.process_rows(include_idle=include_idle), BATCH_PROCESS_COLUMNS, sort)
        lines += table(rows, BATCH_PROCESS_COLUMNS)
    if not rows:
        lines.append("(no rseq aborts yet; 'rseqtop demo' or 'rseqtop workload --threads 8 --in-cs-delay 200' "
                     "makes some)")
    return "\n".join(lines) + "\n"


def _unseen(out: dict, unavailable: tuple) -> dict:
    """Fields of causes this kernel cannot see are null, never 0."""
    for field, cause in CAUSE_OF_FIELD.items():
        if cause in unavailable:
            out[field] = None
    if "preempt" in unavailable and "aborts_per_100_preempts" in out:
        out["aborts_per_100_preempts"] = None
    return out


def _fields(x) -> dict:
    return {f: getattr(x, f) for f in COUNT_FIELDS}


def _rates(r, unavailable: tuple = ()) -> dict:
    return _unseen({**_fields(r), "aborts_per_100_preempts": r.abort_ratio}, unavailable)


def _counts(c, unavailable: tuple = ()) -> dict:
    return _unseen({**_fields(c), "causes": dict(c.causes)}, unavailable)


def _registrations(proc, counted: bool) -> Optional[dict]:
    """A process's rseq(2) calls; null when not counted (no --syscalls)."""
    if not counted or proc is None:
        return None
    return {"total": proc.registrations, "by_abi": {abi: n for abi, n in proc.registrations_by_abi},
            "unregistrations": proc.unregistrations, "errors": dict(proc.registration_errors)}


def _user_aborts(aborts: int, user_aborts) -> dict:
    """Kernel aborts (as `aborts` elsewhere), user-detected ones (--uprobes)
    and both: the last two null when not measured, never 0."""
    return {"aborts": aborts, "user_aborts": user_aborts, "all_aborts": all_aborts(aborts, user_aborts)}


def _diagnosis(row, unavailable: tuple) -> dict:
    """A process's or section's abort storms and preempters: the top
    TOP_PREEMPTERS (pid: thread id; kthread null when the task was gone
    before rseqtop could tell), the other known ones summed, the aborts
    whose preempter was not seen; all null when this kernel has no
    sched_switch."""
    if "preempt" in unavailable:
        preempters = other = unknown = None
    else:
        top, other, unknown = top_preempters(row.preempters, TOP_PREEMPTERS)
        preempters = [{"pid": e.pid, "tgid": e.tgid, "comm": e.comm, "kthread": e.kthread, "count": e.count}
                      for e in top]
    return {"storms": row.storms, "preempters": preempters, "preempters_other": other,
            "preempters_unknown": unknown}


def _thread(t, unavailable: tuple = ()) -> dict:
    """A thread's object: node null while its CPU is unknown, last_signal
    a name ("SIGUSR1") or null (none delivered, or signals unseen here)."""
    return {"tid": t.tid, "comm": t.comm, "cpu": t.cpu, "node": t.node if t.node >= 0 else None,
            "mm_cid": t.mm_cid,
            "last_signal": None if "signal" in unavailable else signal_name(t.last_signal),
            "alive": t.alive, "totals": _counts(t.counts, unavailable), "rates": _rates(t.rates, unavailable),
            **_user_aborts(t.counts.aborts, t.user_aborts)}


def json_record(model: LiveModel, include_idle: bool = False) -> dict:
    """One interval of `rseqtop --json` (schema in docs/live-view.md)."""
    snap = model.cur
    st = snap.self_stats
    na = st.unavailable_causes
    threads_by_pid: dict = {}
    for t in model.thread_rows(include_idle=include_idle):
        threads_by_pid.setdefault(t.pid, []).append(t)
    processes = []
    stats = {p.pid: p for p in snap.processes}
    for p in sort_rows(model.process_rows(include_idle=include_idle), PROCESS_COLUMNS, "pid"):
        processes.append({
            "pid": p.pid, "comm": p.comm, "alive": p.alive, "threads_live": p.threads,
            "totals": _counts(p.counts, na), "rates": _rates(p.rates, na), "top_cause": p.top_cause,
            "top_section": p.top_site,
            **_user_aborts(p.counts.aborts, p.user_aborts),
            "registrations": _registrations(stats.get(p.pid), st.syscall_accounting),
            **_diagnosis(p, na),
            "threads": [_thread(t, na) for t in threads_by_pid.get(p.pid, ())],
            "sections": [{"symbol": s.symbol, "start_ip": s.start_ip, **_user_aborts(s.aborts, s.user_aborts),
                          "aborts_per_s": s.aborts_per_s, "share_percent": s.share,
                          "causes": dict(s.causes),
                          "interrupted_offsets": {str(off): n for off, n in s.offsets}, **_diagnosis(s, na)}
                         for s in model.site_rows(p.pid)],
        })
    cpu = model.self_cpu_percent()
    return {
        "schema_version": SCHEMA_VERSION,
        "time": snap.wall,
        "interval_s": model.interval,
        "era": snap.era,
        "system": {"totals": _counts(snap.totals, na), "rates": _rates(model.system(), na)},
        "self": {"probes_attached": list(st.probes_attached), "probes_missing": list(st.probes_missing),
                 "unavailable_causes": list(na),
                 "events_lost": st.events_lost, "cpu_percent": cpu, "bpf_cpu_percent": model.bpf_cpu_percent(),
                 "maps_dropped": st.dropped(), "probe_misses": st.probe_misses,
                 "syscall_accounting": st.syscall_accounting, "uprobes": st.uprobes,
                 "handlers_probed": st.handlers_probed if st.uprobes else None},
        "processes": processes,
    }


def json_line(model: LiveModel, include_idle: bool = False) -> str:
    return json.dumps(json_record(model, include_idle), separators=(",", ":"), ensure_ascii=True) + "\n"
