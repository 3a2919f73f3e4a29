"""Command-line options and value types shared by the commands (top,
trace, export, demo): each command imports these, never another command."""

from __future__ import annotations

import argparse
import os
import re

from rseqtop.errors import UserError
from rseqtop.kernel.bpfgen import header_constants


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the delay must be a positive number of seconds, not {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def pid_list(text: str) -> list:
    pids = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) <= 0:
            raise argparse.ArgumentTypeError(f"'{part}' is not a process id (give -p PID[,PID...])")
        pids.append(int(part))
    return pids


def add_filter_args(parser) -> None:
    parser.add_argument("-p", "--pid", dest="pids", type=pid_list, action="append", metavar="PID[,PID...]",
                        help="only these processes (repeatable)")
    parser.add_argument("--comm", metavar="REGEX", help="only processes whose name matches this regular expression")
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)


def add_syscalls_arg(parser) -> None:
    parser.add_argument("--syscalls", action="store_true",
                        help="also count rseq registrations and membarrier calls, errors and latency (enables "
                             "syscall tracepoints, which put every system call on the machine on the kernel's "
                             "slower path: see docs/production.md)")


def add_uprobes_arg(parser) -> None:
    parser.add_argument("--uprobes", action="store_true",
                        help="also count user-detected aborts: a uprobe at each verified rseq abort handler "
                             "(RSEQ_SIG checked) sees the sections' own cpu_id-mismatch retries, which the kernel "
                             "never sees (costs a trap per handler run: see benchmarks/uprobe_cost.py)")


_K = header_constants()
STORM_ABORTS, STORM_INTERVAL = _K["RSEQTOP_STORM_K"], _K["RSEQTOP_STORM_NS"] / 1e9


def add_storm_args(parser) -> None:
    parser.add_argument("--storm-aborts", type=positive_int, default=STORM_ABORTS, metavar="K",
                        help=f"abort storm rule: K consecutive aborts of one thread in one critical section "
                             f"(default {STORM_ABORTS}) ...")
    parser.add_argument("--storm-interval", type=positive_float, default=STORM_INTERVAL, metavar="SECONDS",
                        help=f"... each less than SECONDS after the one before (default {STORM_INTERVAL}); "
                             f"each such run counts as one storm")


def storm_rule(args) -> tuple:
    """(K, T seconds) for rseqtop.collect.Collector(storm=...)."""
    return (args.storm_aborts, args.storm_interval)


def flat_pids(args) -> list:
    return sorted({p for group in (args.pids or ()) for p in group})


def check_filters(args) -> None:
    for pid in flat_pids(args):
        if not os.path.exists(f"/proc/{pid}"):
            raise UserError(f"no process with pid {pid} (check it with 'ps -p {pid}')", exit_code=2)
    if args.comm:
        try:
            re.compile(args.comm)
        except re.error as err:
            raise UserError(f"bad --comm regular expression {args.comm!r}: {err}", exit_code=2) from None


def watching(args) -> str:
    parts = []
    pids = flat_pids(args)
    if pids:
        parts.append("pid " + ",".join(map(str, pids)))
    if args.comm:
        parts.append(f"comm ~ /{args.comm}/")
    return " and ".join(parts) or "all processes"
