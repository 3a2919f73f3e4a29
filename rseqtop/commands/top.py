"""`rseqtop [top]`: the live view (TUI), or `-b` plain tables / `--json` lines."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from rseqtop.commands.options import (
    add_filter_args, add_storm_args, add_syscalls_arg, add_uprobes_arg, check_filters, flat_pids, positive_float,
    positive_int, storm_rule, watching,
)
from rseqtop.commands.polling import Terminated, install_sigterm, poll_loop
from rseqtop.errors import UserError
from rseqtop.model.source import SnapshotSource

EPILOG = """examples:
  rseqtop                      # live view of every process with rseq aborts
  rseqtop demo                 # run the bundled workload and watch it
  rseqtop -p 1234,5678         # only these processes
  rseqtop --comm '^envoy'      # only processes whose name matches
  rseqtop -d 2                 # refresh every 2 seconds
  rseqtop -b -n 5              # five plain text tables, one per second (like top -b)
  rseqtop -b 5 3               # three tables, 5 seconds apart
  rseqtop --json -n 10 | jq .  # one JSON object per interval (docs/live-view.md)
  rseqtop -b -H                # threads instead of processes

keys in the live view: ? lists them all (q quits)."""


def configure(parser) -> None:
    add_filter_args(parser)
    parser.add_argument("-d", "--delay", type=positive_float, metavar="SECONDS",
                        help="seconds between refreshes (default 1)")
    parser.add_argument("-b", "--batch", action="store_true", help="print plain text tables, like top -b")
    parser.add_argument("--json", action="store_true", help="print one JSON object per interval")
    parser.add_argument("-n", "--count", type=positive_int, metavar="COUNT",
                        help="stop after COUNT intervals (batch and JSON)")
    parser.add_argument("-H", "--threads", action="store_true", help="threads instead of processes")
    parser.add_argument("-a", "--all", action="store_true",
                        help="also show processes (threads) with rseq but without aborts")
    parser.add_argument("-s", "--sort", default="aborts_s", metavar="COLUMN",
                        help="batch sort column: aborts_s (default), aborts, pid, comm, preempt_s, ratio, ...")
    add_syscalls_arg(parser)
    add_uprobes_arg(parser)
    add_storm_args(parser)
    # seconds of mm_cid sampling after each refresh (0: all the time), for
    # benchmarks/run's side-by-side rows; see rseqtop.collect.collector
    parser.add_argument("--mm-cid-window", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("interval", nargs="?", type=positive_float, help="same as -d")
    parser.add_argument("icount", nargs="?", type=positive_int, metavar="count", help="same as -n")


def make_collector(args, emit_events: bool = False):
    from rseqtop.collect import Collector

    window = getattr(args, "mm_cid_window", None)
    return Collector(pids=flat_pids(args) or None, comm=args.comm or None, emit_events=emit_events,
                     syscalls=getattr(args, "syscalls", False), uprobes=getattr(args, "uprobes", False),
                     storm=storm_rule(args),
                     **({"mm_cid_window": max(0.0, window)} if window is not None else {}))


def print_ebpf(args) -> int:
    sys.stdout.write(make_collector(args).generate())
    return 0


def run(args) -> int:
    delay = args.interval or args.delay or 1.0
    count = args.icount or args.count
    if args.ebpf:
        return print_ebpf(args)
    check_filters(args)
    if args.batch or args.json:
        from rseqtop.present.columns import PROCESS_COLUMNS, THREAD_COLUMNS

        keys = {c.key for c in (THREAD_COLUMNS if args.threads else PROCESS_COLUMNS)}
        if args.sort not in keys:
            raise UserError(f"unknown sort column '{args.sort}' (choose from {', '.join(sorted(keys))})", 2)
        return run_batch(make_collector(args), args, delay, count)
    if count:
        raise UserError("-n/count only applies to -b or --json", exit_code=2)
    if not sys.stdout.isatty():
        raise UserError("the live view needs a terminal; use -b (text) or --json", exit_code=2)
    from rseqtop.tui.launch import run_tui

    return run_tui(make_collector(args), delay, watching(args), threads=args.threads, include_idle=args.all)


def run_batch(source: SnapshotSource, args, delay: float, count: Optional[int], out=None) -> int:
    """Print an interval's table (or JSON line) every `delay` seconds.

    The first output comes right after attaching (totals so far, no rates
    yet) and counts towards COUNT, as top -b -n counts its first frame."""
    from rseqtop.present import textout

    out = out or sys.stdout

    def emit(model) -> None:
        if args.json:
            out.write(textout.json_line(model, include_idle=args.all))
        else:
            out.write(textout.batch_text(model, threads=args.threads, sort=args.sort, include_idle=args.all) + "\n")
        out.flush()

    install_sigterm()
    try:
        source.attach()
        shows_threads = args.json or args.threads
        source.want_threads(("all" if args.all else "aborting") if shows_threads else "none")
        if shows_threads:
            source.want_mm_cid(True)  # thread rows show it
        poll_loop(source, delay, count, emit)
    except (KeyboardInterrupt, Terminated):
        pass
    finally:
        source.close()
    return 0
