"""`rseqtop annotate -p PID [SECTION]`: a critical section's instructions with
their source lines and where threads were interrupted in it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from rseqtop.commands.options import (
    add_syscalls_arg,
    flat_pids,
    pid_list,
    positive_float,
)
from rseqtop.errors import UserError

EPILOG = """examples:
  rseqtop annotate -p 1234                  # every section of pid 1234 that aborted in 1 s
  rseqtop annotate -p 1234 rseq_op_delay    # one section, by its function symbol
  rseqtop annotate -p 1234 0x55d0c0de5a14   # one section, by its start_ip
  rseqtop annotate -p 1234 -D 10 --json     # watch for 10 s; JSON (docs/live-view.md)

SECTION is a start address (0x... or decimal), or a name: the symbol as the
live view shows it (binary!symbol+0xOFF), binary!symbol, or symbol. Only
sections that aborted while rseqtop watched are known (their start_ip,
post_commit_ip and abort_ip come from the kernel's abort events).
Source lines come from the binary's DWARF line table, or from its debug file
found by build-id (/usr/lib/debug/.build-id/) or .gnu_debuglink."""

DEFAULT_DURATION = 1.0


def configure(parser) -> None:
    parser.add_argument("-p", "--pid", dest="pids", type=pid_list, action="append", metavar="PID", required=True,
                        help="the process whose critical sections to show")
    parser.add_argument("section", nargs="?", metavar="SECTION",
                        help="start address or name of one section (default: all that aborted)")
    parser.add_argument("-D", "--duration", type=positive_float, default=DEFAULT_DURATION, metavar="SECONDS",
                        help=f"seconds to count interrupted offsets (default {DEFAULT_DURATION:g})")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    add_syscalls_arg(parser)


def _parse_address(text: str):
    try:
        return int(text, 0)
    except ValueError:
        return None


def match_sites(sites, section: str) -> list:
    """The sites SECTION names (see EPILOG), most aborting first."""
    from rseqtop.present.annotate import order_sites

    addr = _parse_address(section)
    if addr is not None:
        return [s for s in order_sites(sites) if s.start_ip == addr]
    out = []
    for s in order_sites(sites):
        full = s.symbol
        without_offset = full.rsplit("+", 1)[0]
        name = without_offset.split("!", 1)[1] if "!" in without_offset else None
        if section in (full, without_offset, name):
            out.append(s)
    return out


def run(args) -> int:
    from rseqtop.collect import Collector

    pids = flat_pids(args)
    if len(pids) != 1:
        raise UserError("annotate shows one process: give one -p PID", exit_code=2)
    pid = pids[0]
    if args.ebpf:
        sys.stdout.write(Collector(pids=[pid]).generate())
        return 0
    if not _alive(pid):
        raise UserError(f"no process with pid {pid} (check it with 'ps -p {pid}')", exit_code=2)
    collector = Collector(pids=[pid], threads="none", syscalls=args.syscalls)
    try:
        collector.attach()
        sys.stderr.write(f"Counting rseq aborts of pid {pid} for {args.duration:g} s...\n")
        sys.stderr.flush()
        time.sleep(args.duration)
        snap = collector.poll()
    except KeyboardInterrupt:
        snap = collector.poll() if collector.bpf is not None else None
    finally:
        collector.close()
    if not _alive(pid):
        raise UserError(f"process {pid} exited while rseqtop watched it: its code can no longer be read "
                        "(annotate a running process)")
    sites = snap.sites_of(pid) if snap is not None else ()
    proc = snap.process(pid) if snap is not None else None
    return show(pid, proc.comm if proc else "", sites, args.section, args.json, args.duration)


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def show(pid: int, comm: str, sites, section, as_json: bool, duration: float, annotator=None, out=None) -> int:
    """Annotate SITES (those SECTION names) and print them; the part of
    `run` after collection (tests call it with recorded sites)."""
    from rseqtop.present import annotate as present
    from rseqtop.present.textsafe import printable
    from rseqtop.symbols.annotate import AnnotateError, Annotator

    out = out or sys.stdout
    if section is not None:
        chosen = match_sites(sites, section)
        if not chosen:
            seen = ", ".join(printable(s.symbol) for s in present.order_sites(sites)) or "none"
            raise UserError(f"no aborts of a section named {printable(section)!s} in pid {pid} in {duration:g} s "
                            f"(sections that aborted: {seen}; try a longer --duration)")
    else:
        chosen = present.order_sites(sites)
        if not chosen:
            raise UserError(f"no rseq aborts in pid {pid} in {duration:g} s: nothing to annotate "
                            "(try a longer --duration while the process is busy)")
    annotator = annotator or Annotator()
    done = []
    for site in chosen:
        try:
            done.append(present.Annotated(site, annotator(pid, site.start_ip, site.post_commit_offset,
                                                          site.abort_ip)))
        except AnnotateError as err:
            done.append(present.Annotated(site, None, str(err)))
    if as_json:
        rec = {"schema_version": present.SCHEMA_VERSION, "pid": pid, "comm": comm, "duration_s": duration,
               "sections": [present.json_record(a) for a in done]}
        out.write(json.dumps(rec, ensure_ascii=True) + "\n")
    else:
        out.write(f"pid {pid} {printable(comm)}: {len(done)} critical section(s) that aborted in {duration:g} s\n")
        for a in done:
            out.write("\n" + present.text(a))
    out.flush()
    return 0


__all__ = ["configure", "match_sites", "run", "show"]
