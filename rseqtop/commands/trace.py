"""`rseqtop trace`: one line (or JSON object) per rseq abort, from the ring
buffer; with --events, a timeline of the watched threads' preemptions,
migrations, signals and membarrier IPIs as well."""

from __future__ import annotations

import argparse
import heapq
import json
import os
import re
import signal
import sys
import time

from rseqtop.commands.options import add_filter_args, add_storm_args, add_uprobes_arg, check_filters, flat_pids, storm_rule
from rseqtop.errors import UserError
from rseqtop.kernel import linux
from rseqtop.kernel.bpfgen import header_constants
from rseqtop.model.snapshot import cause_name
from rseqtop.present.textsafe import printable

EPILOG = """examples:
  rseqtop trace                    # every rseq abort on the system
  rseqtop trace -p 1234            # aborts of one process
  rseqtop trace --comm '^envoy'    # aborts of processes whose thread name matches
  rseqtop trace --json | jq .      # one JSON object per abort (docs/live-view.md)
  rseqtop trace --uprobes -p 1234  # and, every second, each thread's new user-detected aborts
  rseqtop trace -p 1234 --events abort,preempt,migrate,signal,membarrier
                                   # the timeline of one process's threads

Lost events (ring buffer full) are reported on stderr as they happen."""

SCHEMA_VERSION = 1
HEADER = f"{'TIME':<15} {'COMM':<16} {'PID':>7} {'TID':>7} {'CPU':>3}  {'CAUSE':<22} {'SITE':<40} OFFSET"
LOSS_CHECK_SECONDS = 1.0

_K = header_constants()
# --events names -> RSEQTOP_EV_* codes
EVENT_KINDS = {name: _K[f"RSEQTOP_EV_{name.upper()}"] for name in ("abort", "preempt", "migrate", "signal",
                                                                   "membarrier")}
KIND_NAMES = {code: name for name, code in EVENT_KINDS.items()}
PREEMPTER_UNKNOWN = _K["RSEQTOP_PREEMPTER_UNKNOWN"]
TIMELINE_HEADER = f"{'TIME':<15} {'COMM':<16} {'PID':>7} {'TID':>7} {'CPU':>3}  {'EVENT':<10} DETAIL"
# A preemption is sent when its preempter leaves the CPU, after events of
# the thread that came later (it may run elsewhere meanwhile): the timeline
# holds events this long and prints them in time order.
HOLD_NS = 250_000_000


def event_list(text: str) -> frozenset:
    kinds = frozenset(part.strip() for part in text.split(","))
    unknown = sorted(kinds - set(EVENT_KINDS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown event {unknown[0]!r} (choose from {','.join(EVENT_KINDS)})")
    return kinds


def kind_bits(kinds) -> int:
    """The BPF config's event_kinds: the non-abort kinds wanted."""
    return sum(1 << EVENT_KINDS[k] for k in kinds if k != "abort")


def pids_by_comm(pattern: str, proc: str = "/proc") -> list:
    """Processes whose name matches now: the kernel's pid filter for --comm
    when non-abort events are asked for (they are never sent system-wide)."""
    regex = re.compile(pattern)
    found = []
    for entry in os.listdir(proc):
        comm = linux.proc_comm(int(entry), proc) if entry.isdigit() else None
        if comm is not None and regex.search(comm):  # (None: gone meanwhile)
            found.append(int(entry))
    return sorted(found)


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"SIG{signo}"


def configure(parser) -> None:
    add_filter_args(parser)
    add_storm_args(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per abort")
    add_uprobes_arg(parser)
    parser.add_argument("--events", type=event_list, default=frozenset({"abort"}), metavar="KIND[,KIND...]",
                        help=f"what to stream: {','.join(EVENT_KINDS)} (default abort); other kinds than abort "
                             f"need -p or --comm and are streamed for those processes' threads only")


def decode_comm(raw) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", errors="backslashreplace")


class Tracer:
    """Formats abort events (or, with kinds other than abort, the timeline);
    counts what it printed."""

    def __init__(self, collector, out, as_json: bool, pids: set, comm: str | None, storm_aborts: int = 16,
                 kinds=frozenset({"abort"})):
        self.collector = collector
        self.kinds = frozenset(EVENT_KINDS[k] for k in kinds)
        # the abort stream as it always was, or the timeline (an EVENT column, time-ordered)
        self.timeline = kinds != {"abort"}
        self.held: list = []  # timeline: (ts_ns, seq, line) not printed yet
        self.seq = 0
        self.out = out
        self.as_json = as_json
        self.pids = pids
        self.comm = re.compile(comm) if comm else None
        self.clock_offset = time.time() - time.monotonic()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        self.printed = 0
        self.user_seen: dict = {}  # (pid, tid) -> user-detected aborts shown
        self.storm_aborts = storm_aborts
        self.stop = False  # set by SIGINT/SIGTERM or a closed stdout
        self.error: BaseException | None = None

    def on_event(self, ev) -> None:
        """Ring buffer callback: must never raise (bcc calls exit() if it does)."""
        if self.stop:
            return
        try:
            self.show(ev)
        except BrokenPipeError:
            self.stop = True
        except BaseException as err:  # re-raised by the main loop
            self.error = err
            self.stop = True

    def header(self) -> str:
        return TIMELINE_HEADER if self.timeline else HEADER

    def show(self, ev) -> None:
        comm = decode_comm(ev.comm)
        if self.pids and ev.tgid not in self.pids:
            return
        if self.comm and not self.comm.search(comm):
            return
        kind = getattr(ev, "kind", EVENT_KINDS["abort"])
        if kind not in self.kinds:
            return
        if not self.timeline:
            self.out.write(self.abort_line(ev, comm))
            self.printed += 1
            return
        self.seq += 1
        heapq.heappush(self.held, (ev.ts_ns, self.seq, self.timeline_line(ev, comm, kind)))

    def release(self, now_ns: int | None = None) -> None:
        """Print the held timeline events older than HOLD_NS (all: now_ns None)."""
        while self.held and (now_ns is None or self.held[0][0] <= now_ns - HOLD_NS):
            self.out.write(heapq.heappop(self.held)[2])
            self.printed += 1

    def stamp(self, ts_ns: int) -> tuple:
        wall = ts_ns / 1e9 + self.clock_offset
        return wall, time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1e6) % 1000000:06d}"

    def timeline_line(self, ev, comm: str, kind: int) -> str:
        name = KIND_NAMES.get(kind, f"kind{kind}")
        if name == "abort":
            return self.abort_line(ev, comm, timeline=True)
        wall, stamp = self.stamp(ev.ts_ns)
        if name == "preempt" and ev.next_tid == PREEMPTER_UNKNOWN:
            # the switch to its successor was not seen (see bpf note_successor)
            fields = {"next_pid": None, "next_tid": None, "next_comm": None}
            detail = "by ? (not seen)"
        elif name == "preempt":
            next_comm = decode_comm(ev.next_comm)
            fields = {"next_pid": ev.next_tgid, "next_tid": ev.next_tid, "next_comm": next_comm}
            detail = f"by {printable(next_comm)} pid {ev.next_tgid} tid {ev.next_tid}"
        elif name == "migrate":
            fields = {"from_cpu": ev.from_cpu, "to_cpu": ev.to_cpu}
            detail = f"cpu {ev.from_cpu} -> {ev.to_cpu}"
        elif name == "signal":
            fields = {"signo": ev.signo, "signal": signal_name(ev.signo)}
            detail = f"{ev.signo} ({signal_name(ev.signo)})"
        elif name == "membarrier":
            fields = {"ipi": "rseq"}  # the MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ IPI that hit the thread
            detail = "rseq IPI"
        else:
            fields, detail = {}, ""
        if self.as_json:
            record = {"schema_version": SCHEMA_VERSION, "event": name, "time": round(wall, 6), "ts_ns": ev.ts_ns,
                      "comm": comm, "pid": ev.tgid, "tid": ev.tid, "cpu": ev.cpu, **fields}
            return json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n"
        return (f"{stamp:<15} {printable(comm):<16} {ev.tgid:>7} {ev.tid:>7} {ev.cpu:>3}  "
                f"{name:<10} {detail}\n")

    def abort_record(self, ev, comm: str) -> dict:
        wall = ev.ts_ns / 1e9 + self.clock_offset
        site = self.collector.symbolize(ev.tgid, ev.start_ip)
        cause = cause_name(ev.cause)
        # within an abort storm: the thread's run of consecutive aborts here met the rule
        storm = ev.run >= self.storm_aborts
        return {"schema_version": SCHEMA_VERSION, "time": round(wall, 6), "ts_ns": ev.ts_ns, "comm": comm,
                "pid": ev.tgid, "tid": ev.tid, "cpu": ev.cpu, "cause": cause, "site": site,
                "start_ip": ev.start_ip, "abort_ip": ev.abort_ip, "offset": ev.offset, "run": ev.run,
                "storm": storm}

    def abort_line(self, ev, comm: str, timeline: bool = False) -> str:
        """Today's abort line or object; in the timeline with its event name."""
        r = self.abort_record(ev, comm)
        if self.as_json:
            if timeline:
                r["event"] = "abort"
            return json.dumps(r, ensure_ascii=True, separators=(",", ":")) + "\n"
        _, stamp = self.stamp(ev.ts_ns)
        event = f"{'abort':<10} " if timeline else ""
        return (f"{stamp:<15} {printable(comm):<16} {ev.tgid:>7} {ev.tid:>7} {ev.cpu:>3}  "
                f"{event}{r['cause']:<22} {printable(r['site']):<40} +{ev.offset:#x}"
                f"{f'  STORM (run {ev.run})' if r['storm'] else ''}\n")

    def show_user_aborts(self, snap) -> None:
        """--uprobes: a line per thread whose user-detected aborts grew since
        the last call (they come from a map, not from events: no time or
        CPU of their own)."""
        for t in snap.threads:
            if t.user_aborts is None or (self.pids and t.pid not in self.pids):
                continue
            if self.comm and not self.comm.search(t.comm):
                continue
            new = t.user_aborts - self.user_seen.get((t.pid, t.tid), 0)
            if new <= 0:
                continue
            self.user_seen[(t.pid, t.tid)] = t.user_aborts
            wall = snap.wall
            if self.as_json:
                record = {"schema_version": SCHEMA_VERSION, "time": round(wall, 6), "comm": t.comm, "pid": t.pid,
                          "tid": t.tid, "user_aborts": new, "user_aborts_total": t.user_aborts,
                          "aborts_total": t.counts.aborts}
                self.out.write(json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n")
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1e6) % 1000000:06d}"
                self.out.write(f"{stamp:<15} {printable(t.comm):<16} {t.pid:>7} {t.tid:>7} {'-':>3}  "
                               f"{'user x' + str(new):<22} {'(own cpu_id check)':<40} -\n")


def run(args) -> int:
    from rseqtop.collect import Collector

    pids = flat_pids(args)
    if args.ebpf:
        sys.stdout.write(Collector(pids=pids or None, emit_events=True, uprobes=args.uprobes).generate())
        return 0
    check_filters(args)
    kinds = args.events
    others = sorted(kinds - {"abort"}, key=list(EVENT_KINDS).index)
    if others and not pids:
        if not args.comm:
            raise UserError(f"--events {','.join(others)} needs -p PID or --comm REGEX (those events are "
                            f"streamed for the watched processes only, never system-wide)", exit_code=2)
        pids = pids_by_comm(args.comm)
        if not pids:
            raise UserError(f"no running process matches --comm {args.comm!r}: start it first, or give -p PID "
                            f"(--events {','.join(others)} watches the processes that match at start)", exit_code=2)
    # polled for its loss count (and with --uprobes the threads' user-detected aborts)
    collector = Collector(pids=pids or None, emit_events=True, threads="all" if args.uprobes else "none",
                          uprobes=args.uprobes, storm=storm_rule(args), event_kinds=kind_bits(kinds))
    out = sys.stdout
    tracer = Tracer(collector, out, args.json, set(pids), args.comm, args.storm_aborts, kinds)

    def on_signal(signum, frame):
        tracer.stop = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    lost_seen = 0
    try:
        collector.attach()
        collector.open_events(tracer.on_event)
        lost_seen = collector.poll().self_stats.events_lost
        what = "rseq aborts" if not tracer.timeline else f"rseq events ({','.join(sorted(kinds))}) of " \
            f"pid {','.join(map(str, pids))}"
        sys.stderr.write(f"Tracing {what}... Ctrl-C to end.\n")
        sys.stderr.flush()
        if not args.json:
            out.write(tracer.header() + "\n")
        out.flush()
        next_check = time.monotonic() + LOSS_CHECK_SECONDS
        while not tracer.stop:
            collector.poll_events(100)
            tracer.release(time.monotonic_ns())
            out.flush()
            if time.monotonic() >= next_check:
                lost_seen = report_losses(collector, lost_seen, tracer)
                next_check = time.monotonic() + LOSS_CHECK_SECONDS
    except BrokenPipeError:
        tracer.stop = True
    finally:
        try:
            if collector.bpf is not None and tracer.error is None:
                tracer.stop = False
                collector.poll_events(0)  # what is already in the ring buffer
                tracer.release()
                out.flush()
                report_losses(collector, lost_seen, tracer)
        except BrokenPipeError:
            pass
        finally:
            collector.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
    if tracer.error is not None:
        raise tracer.error
    return 0


def report_losses(collector, seen: int, tracer=None) -> int:
    snap = collector.poll()
    if tracer is not None and snap.self_stats.uprobes:
        tracer.show_user_aborts(snap)
        tracer.out.flush()
    lost = snap.self_stats.events_lost
    timeline = tracer is not None and tracer.timeline
    if lost > seen:
        what = "events" if timeline else "abort events"  # one count for all kinds
        sys.stderr.write(f"rseqtop trace: {lost - seen} {what} lost (ring buffer full; {lost} in total)\n")
        sys.stderr.flush()
    return lost


__all__ = ["run", "configure", "Tracer"]
