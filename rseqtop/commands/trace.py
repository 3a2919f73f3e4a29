"""`rseqtop trace`: one line (or JSON object) per rseq abort, from the ring buffer."""

from __future__ import annotations

import json
import re
import signal
import sys
import time

from rseqtop.commands.options import add_filter_args, add_storm_args, add_uprobes_arg, check_filters, flat_pids, storm_rule
from rseqtop.model.snapshot import cause_name
from rseqtop.present.textsafe import printable

EPILOG = """examples:
  rseqtop trace                    # every rseq abort on the system
  rseqtop trace -p 1234            # aborts of one process
  rseqtop trace --comm '^envoy'    # aborts of processes whose thread name matches
  rseqtop trace --json | jq .      # one JSON object per abort (docs/live-view.md)
  rseqtop trace --uprobes -p 1234  # and, every second, each thread's new user-detected aborts

Lost events (ring buffer full) are reported on stderr as they happen."""

SCHEMA_VERSION = 1
HEADER = f"{'TIME':<15} {'COMM':<16} {'PID':>7} {'TID':>7} {'CPU':>3}  {'CAUSE':<22} {'SITE':<40} OFFSET"
LOSS_CHECK_SECONDS = 1.0


def configure(parser) -> None:
    add_filter_args(parser)
    add_storm_args(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per abort")
    add_uprobes_arg(parser)


def decode_comm(raw) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", errors="backslashreplace")


class Tracer:
    """Formats abort events; counts what it printed per pid (for tests and the summary)."""

    def __init__(self, collector, out, as_json: bool, pids: set, comm: str | None, storm_aborts: int = 16):
        self.collector = collector
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

    def show(self, ev) -> None:
        comm = decode_comm(ev.comm)
        if self.pids and ev.tgid not in self.pids:
            return
        if self.comm and not self.comm.search(comm):
            return
        wall = ev.ts_ns / 1e9 + self.clock_offset
        site = self.collector.symbolize(ev.tgid, ev.start_ip)
        cause = cause_name(ev.cause)
        # within an abort storm: the thread's run of consecutive aborts here met the rule
        storm = ev.run >= self.storm_aborts
        if self.as_json:
            record = {"schema_version": SCHEMA_VERSION, "time": round(wall, 6), "ts_ns": ev.ts_ns, "comm": comm,
                      "pid": ev.tgid, "tid": ev.tid, "cpu": ev.cpu, "cause": cause, "site": site,
                      "start_ip": ev.start_ip, "abort_ip": ev.abort_ip, "offset": ev.offset, "run": ev.run,
                      "storm": storm}
            self.out.write(json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n")
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1e6) % 1000000:06d}"
            self.out.write(f"{stamp:<15} {printable(comm):<16} {ev.tgid:>7} {ev.tid:>7} {ev.cpu:>3}  "
                           f"{cause:<22} {printable(site):<40} +{ev.offset:#x}"
                           f"{f'  STORM (run {ev.run})' if storm else ''}\n")
        self.printed += 1

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
    # polled for its loss count (and with --uprobes the threads' user-detected aborts)
    collector = Collector(pids=pids or None, emit_events=True, threads="all" if args.uprobes else "none",
                          uprobes=args.uprobes, storm=storm_rule(args))
    out = sys.stdout
    tracer = Tracer(collector, out, args.json, set(pids), args.comm, args.storm_aborts)

    def on_signal(signum, frame):
        tracer.stop = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    lost_seen = 0
    try:
        collector.attach()
        collector.open_events(tracer.on_event)
        lost_seen = collector.poll().self_stats.events_lost
        sys.stderr.write("Tracing rseq aborts... Ctrl-C to end.\n")
        sys.stderr.flush()
        if not args.json:
            out.write(HEADER + "\n")
        out.flush()
        next_check = time.monotonic() + LOSS_CHECK_SECONDS
        while not tracer.stop:
            collector.poll_events(100)
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
    if lost > seen:
        sys.stderr.write(f"rseqtop trace: {lost - seen} abort events lost (ring buffer full; {lost} in total)\n")
        sys.stderr.flush()
    return lost


__all__ = ["run", "configure", "Tracer"]
