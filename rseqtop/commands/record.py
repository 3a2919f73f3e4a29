"""`rseqtop record -o FILE`: write a snapshot every interval to a recording
(docs/recording.md) for `rseqtop report` to turn into an HTML page."""

from __future__ import annotations

import os
import sys

from rseqtop.commands.options import (
    add_filter_args, add_syscalls_arg, check_filters, flat_pids, positive_float, watching,
)
from rseqtop.commands.polling import Terminated, install_sigterm, poll_loop
from rseqtop.errors import UserError
from rseqtop.model.source import SnapshotSource

EPILOG = """examples:
  rseqtop record -o rec.jsonl --duration 60           # every process with rseq aborts, for a minute
  rseqtop record -o rec.jsonl -p 1234 -d 5            # one process, a sample every 5 s, until Ctrl-C
  rseqtop report rec.jsonl -o report.html             # one self-contained HTML page

The file is JSON Lines: a header, then one `rseqtop --json` object per
interval (docs/recording.md). Ctrl-C or SIGTERM ends a recording after one
last sample."""


def configure(parser) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the recording to write (replaced)")
    parser.add_argument("-d", "--delay", type=positive_float, default=1.0, metavar="SECONDS",
                        help="seconds between samples (default 1)")
    parser.add_argument("--duration", type=positive_float, metavar="SECONDS",
                        help="stop after this long (default: until Ctrl-C or SIGTERM)")
    add_filter_args(parser)
    add_syscalls_arg(parser)
    parser.add_argument("--stacks", action="store_true",
                        help="also record the user call stack of every abort (for the report's flame graph "
                             "and 'rseqtop report FILE --folded'); programs built with frame pointers")


def samples_for(duration, delay: float):
    """Samples a recording of `duration` seconds takes: one at the start,
    then one per interval (None: no end)."""
    return None if duration is None else max(1, round(duration / delay)) + 1


def record(source: SnapshotSource, out, delay: float, count, head: dict) -> int:
    """Attach, write the header, then a sample per interval; returns the
    number of samples written."""
    from rseqtop.recording import format as fmt

    last_stacks = None

    def emit(model) -> None:
        nonlocal last_stacks
        out.write(fmt.dumps(fmt.sample(model)))
        if head.get("stacks"):
            line = fmt.stacks(source.stack_table(), source.stacks.dropped, model.cur.wall)
            if line["stacks"] != last_stacks or line["dropped"]:
                out.write(fmt.dumps(line))  # totals since the start: the last line is the recording's
                last_stacks = line["stacks"]
        out.flush()  # a crash loses at most the line being written

    install_sigterm()
    written = 0
    try:
        source.attach()
        source.want_threads("none")  # processes and sections only: a recording stays small
        out.write(fmt.dumps(head))
        written = poll_loop(source, delay, count, emit, final=True)
    except (KeyboardInterrupt, Terminated):
        pass
    finally:
        source.close()
    return written


def run(args) -> int:
    from rseqtop.recording import format as fmt

    from rseqtop.collect import Collector

    source = Collector(pids=flat_pids(args) or None, comm=args.comm or None, syscalls=args.syscalls,
                       stacks=args.stacks)
    if args.ebpf:
        sys.stdout.write(source.generate())
        return 0
    check_filters(args)
    try:
        out = open(args.output, "w", encoding="ascii")
    except OSError as err:
        raise UserError(f"cannot write {args.output}: {err.strerror}", exit_code=2) from None
    with out:
        try:
            n = record(source, out, args.delay, samples_for(args.duration, args.delay),
                       fmt.header(args.delay, watching(args), stacks=args.stacks))
        except BaseException:
            if out.tell() == 0:  # failed before its header (not root, no tracepoints): leave no empty file
                os.unlink(args.output)
            raise
    sys.stderr.write(f"rseqtop: wrote {n} samples to {args.output}\n")
    return 0
