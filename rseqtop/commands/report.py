"""`rseqtop report FILE -o report.html`: a recording (rseqtop record) as one
self-contained HTML page (no script, no network)."""

from __future__ import annotations

import os
import sys

from rseqtop.errors import UserError

EPILOG = """examples:
  rseqtop record -o rec.jsonl --duration 60 && rseqtop report rec.jsonl -o report.html
  rseqtop record -o rec.jsonl --stacks -d 5 && rseqtop report rec.jsonl --folded > aborts.folded

The page has the abort rate over time per process and per top critical
section, the causes, the interrupted offsets of the top sections and, when
the recording has them, preempters and stacks. A malformed recording is
refused with one line saying what is wrong (docs/recording.md)."""


def configure(parser) -> None:
    parser.add_argument("recording", metavar="FILE", help="a recording written by 'rseqtop record'")
    parser.add_argument("-o", "--output", metavar="HTML", help="the page to write (replaced)")
    parser.add_argument("--folded", action="store_true",
                        help="print the abort call stacks (record --stacks) as folded text, one "
                             "'frame;frame;frame count' line per stack, root first (flamegraph.pl, speedscope)")


def run(args) -> int:
    from rseqtop.recording import reader
    from rseqtop.report import page

    if args.folded == bool(args.output):
        raise UserError("give one of -o HTML (the page) or --folded (stacks as text)", exit_code=2)
    rec = reader.read(args.recording)
    if args.folded:
        if not rec.stacks:
            raise UserError(f"{args.recording}: no stacks recorded (record with --stacks)")
        from rseqtop.report import flame

        sys.stdout.write(flame.folded(rec.stack_rows, rec.stacks_dropped))
        return 0
    text = page.render(rec)
    tmp = f"{args.output}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.output)  # a reader of the old page never sees half a new one
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UserError(f"cannot write {args.output}: {err.strerror}", exit_code=2) from None
    sys.stderr.write(f"rseqtop: wrote {args.output} ({len(text.encode()):,} bytes)\n")
    return 0
