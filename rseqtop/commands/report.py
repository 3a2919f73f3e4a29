"""`rseqtop report FILE -o report.html`: a recording (rseqtop record) as one
self-contained HTML page (no script, no network)."""

from __future__ import annotations

import os
import sys

from rseqtop.errors import UserError

EPILOG = """examples:
  rseqtop record -o rec.jsonl --duration 60 && rseqtop report rec.jsonl -o report.html

The page has the abort rate over time per process and per top critical
section, the causes, the interrupted offsets of the top sections and, when
the recording has them, preempters and stacks. A malformed recording is
refused with one line saying what is wrong (docs/recording.md)."""


def configure(parser) -> None:
    parser.add_argument("recording", metavar="FILE", help="a recording written by 'rseqtop record'")
    parser.add_argument("-o", "--output", required=True, metavar="HTML", help="the page to write (replaced)")


def run(args) -> int:
    from rseqtop.recording import reader
    from rseqtop.report import page

    text = page.render(reader.read(args.recording))
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
