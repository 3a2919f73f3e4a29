"""Tables: one row per kernel (boot, exit status, time) and kernel x check.

Checks come from the files the command leaves in its kernel's output
directory ($RSEQTOP_KERNELS_OUT inside the VM):

- junit.xml: pytest's JUnit XML (``pytest --junitxml=$RSEQTOP_KERNELS_OUT/junit.xml``).
  Each <testcase> is a check; a ``record_property("figure", "...")`` in the
  test becomes that check's figure. (pytest warns that record_property does
  not fit the default xunit2 family but writes the properties anyway;
  ``-o junit_family=legacy`` silences the warning.)
- results.json, when there is no junit.xml:
  ``{"checks": [{"name": ..., "status": "passed|failed|skipped|error", "figure": ...}]}``
  (or just the list).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .vm import VMResult

# status -> short cell text
SHORT = {"passed": "PASS", "failed": "FAIL", "error": "ERR", "skipped": "SKIP", "xfailed": "XFAIL"}
# worst first, to merge duplicate entries (pytest may report a teardown error apart)
_RANK = {"error": 0, "failed": 1, "skipped": 2, "xfailed": 3, "passed": 4}

Check = Tuple[str, str, Optional[str]]  # (check_name, status, figure)


class ResultsError(Exception):
    pass


def _testcase_status(tc: ET.Element) -> str:
    if tc.find("error") is not None:
        return "error"
    if tc.find("failure") is not None:
        return "failed"
    sk = tc.find("skipped")
    if sk is not None:
        return "xfailed" if sk.get("type") == "pytest.xfail" else "skipped"
    return "passed"


def parse_junit(path: Path) -> List[Check]:
    """(check_name, status, figure) for every <testcase> of a pytest JUnit XML file.

    status is passed, failed, error, skipped or xfailed; figure joins the
    testcase's ``figure`` properties with "; " (None when it has none).
    A name shared by tests of different classes/modules gets the last part
    of its classname in front ("TestExporter.test_scrape").
    """
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise ResultsError(f"cannot read {path}: {e}") from None
    raw: List[Tuple[str, str, str, Optional[str]]] = []
    for tc in root.iter("testcase"):
        figs = [p.get("value", "") for p in tc.iter("property") if p.get("name") == "figure"]
        raw.append((tc.get("classname", ""), tc.get("name", "?"), _testcase_status(tc), "; ".join(figs) if figs else None))
    classes_of: Dict[str, set] = {}
    for cls, name, _, _ in raw:
        classes_of.setdefault(name, set()).add(cls)
    merged: Dict[str, List] = {}
    for cls, name, status, fig in raw:
        key = name if len(classes_of[name]) == 1 else f"{cls.rsplit('.', 1)[-1]}.{name}"
        if key in merged:
            old = merged[key]
            if _RANK[status] < _RANK[old[0]]:
                old[0] = status
            old[1] = old[1] or fig
        else:
            merged[key] = [status, fig]
    return [(k, v[0], v[1]) for k, v in merged.items()]


def load_checks(outdir) -> List[Check]:
    """Checks written by the command into one kernel's output directory.

    Reads outdir/junit.xml (pytest JUnit XML), else outdir/results.json;
    returns [] when there is neither. Raises ResultsError for an unreadable file.
    """
    outdir = Path(outdir)
    junit = outdir / "junit.xml"
    if junit.is_file():
        return parse_junit(junit)
    rj = outdir / "results.json"
    if rj.is_file():
        try:
            data = json.loads(rj.read_text())
            items = data["checks"] if isinstance(data, dict) else data
            out = []
            for it in items:
                st = str(it.get("status", "error")).lower()
                st = {"pass": "passed", "fail": "failed", "skip": "skipped", "ok": "passed"}.get(st, st)
                if st not in _RANK:
                    st = "error"
                fig = it.get("figure")
                out.append((str(it["name"]), st, None if fig is None else str(fig)))
            return out
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ResultsError(f"cannot read {rj}: {e}") from None
    return []


def check_ok(status: str, allow_skips: bool = False) -> bool:
    return status in ("passed", "xfailed") or (allow_skips and status == "skipped")


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text, columns padded, first column left-aligned, a rule under the header."""
    cols = len(header)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(cols)]
    lines = []
    for n, r in enumerate([header, *rows]):
        lines.append("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def kernel_label(res: VMResult) -> str:
    """Column label: the exact `uname -r` from inside the VM, else suite:expected."""
    return res.uname or f"{res.suite}:{res.release}?"


def render_summary(results: Sequence[VMResult], checks: Optional[Dict[str, List[Check]]] = None) -> str:
    """One row per kernel: suite, uname -r, boot, exit status, seconds, checks passed."""
    header = ["suite", "uname -r", "boot", "exit", "boot s", "cmd s", "total s", "checks"]
    rows = []
    for r in results:
        cs = (checks or {}).get(r.suite, [])
        npass = sum(1 for _, st, _ in cs if st == "passed")
        rows.append(
            [
                r.suite,
                r.uname or (f"({r.release})" if r.release != "?" else "-"),
                "OK" if r.booted else "FAIL",
                ("timeout" if r.timed_out else "-") if r.exit_status is None else str(r.exit_status),
                "-" if r.boot_seconds is None else f"{r.boot_seconds:.1f}",
                "-" if r.command_seconds is None else f"{r.command_seconds:.1f}",
                f"{r.total_seconds:.1f}",
                f"{npass}/{len(cs)}" if cs else "-",
            ]
        )
    return render_table(header, rows)


def render_checks(columns: Sequence[Tuple[str, Sequence[Check]]], figure_width: int = 18) -> str:
    """Kernel x check table: rows = checks (in first-seen order), columns = kernels.

    columns: [(kernel label, checks of that kernel)]; a cell is PASS, FAIL,
    ERR, SKIP or XFAIL followed by the figure (cut to figure_width), "-"
    where that kernel has no such check. "" when there are no checks.
    """
    names: List[str] = []
    cells: Dict[Tuple[str, int], str] = {}
    for i, (_, cs) in enumerate(columns):
        for name, status, fig in cs:
            if name not in names:
                names.append(name)
            cell = SHORT.get(status, status.upper())
            if fig:
                cell += " " + _short(fig, figure_width)
            cells[(name, i)] = cell
    if not names:
        return ""
    header = ["check", *[label for label, _ in columns]]
    # the "test_" prefix says nothing in a table of tests
    rows = [[_short(n[5:] if n.startswith("test_") else n, 64), *[cells.get((n, i), "-") for i in range(len(columns))]]
            for n in names]
    return render_table(header, rows)
