"""`rseqtop export`: serve Prometheus metrics about rseq aborts.

Two processes (privilege separation, rseqtop/exporter/privsep.py): the
listening socket is bound first, then the HTTP process is forked before
anything BPF is loaded; it switches to --web.user with no capabilities at
all and serves at once (/-/healthy answers at once). This process attaches
the probes, then switches to the same user keeping only CAP_SYS_PTRACE and
CAP_DAC_READ_SEARCH (symbolization), and answers the HTTP process's requests
for metrics by reading the BPF maps at request time. /-/ready turns 200 when
the probes are attached and this process answers. If attaching fails, or
either process dies, the command exits non-zero. See docs/production.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import signal
import socket
import sys
import threading
import time

from rseqtop.commands.options import (
    add_storm_args, add_syscalls_arg, add_uprobes_arg, flat_pids, pid_list, positive_int, storm_rule,
)
from rseqtop.errors import UsageError, UserError
from rseqtop.exporter import DEFAULT_LISTEN, DEFAULT_PORT
from rseqtop.kernel import linux

EPILOG = f"""\
examples:
  rseqtop export                                  # all processes, :{DEFAULT_PORT}/metrics
  rseqtop export --web.listen-address=127.0.0.1:{DEFAULT_PORT}
  rseqtop export --web.config.file=web.yml        # TLS and/or basic auth (exporter-toolkit format)
  rseqtop export --labels pid --max-series 500    # per-process series, capped
  rseqtop export --comm '^envoy$' --series-ttl 30m

The default port {DEFAULT_PORT} was chosen next to cloudflare/ebpf_exporter's 9435
(which often runs on the same nodes)."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, zero_ok: bool = False) -> float:
    """Go/Prometheus-style duration ("10m", "1h30m", "45s") or plain seconds -> seconds
    (0 only when zero_ok)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise argparse.ArgumentTypeError(f"bad duration {text!r} (examples: 90s, 10m, 1h)") from None
    if not (value > 0 or (zero_ok and value == 0)) or value == float("inf"):  # also nan
        raise argparse.ArgumentTypeError(f"duration must be {'0 or ' if zero_ok else ''}positive and finite: "
                                         f"{text!r}")
    return value


def parse_interval(text: str) -> float:
    """A duration, or 0 for never."""
    return parse_duration(text, zero_ok=True)


def configure(parser: argparse.ArgumentParser) -> None:
    web = parser.add_argument_group("web")
    web.add_argument("--web.listen-address", dest="listen", default=DEFAULT_LISTEN, metavar="ADDR",
                     help=f"address to listen on (default {DEFAULT_LISTEN}: all interfaces)")
    web.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics", metavar="PATH",
                     help="path of the metrics (default /metrics)")
    web.add_argument("--web.config.file", dest="web_config", default=None, metavar="FILE",
                     help="exporter-toolkit web config: TLS and basic auth (bcrypt)")
    web.add_argument("--web.user", dest="web_user", default="nobody", metavar="USER",
                     help="unprivileged user (name or uid) both processes switch to after start-up when "
                          "started as root; the HTTP process keeps no capability (default nobody)")
    lab = parser.add_argument_group("series")
    lab.add_argument("--labels", choices=("comm", "pid", "tid"), default="comm",
                     help="comm: comm + container labels, processes summed (default); "
                          "pid: one series set per process; tid: also per thread")
    lab.add_argument("--max-series", type=positive_int, default=2000, metavar="N",
                     help="most label sets kept (per level); refused ones are counted in "
                          "rseqtop_series_dropped_total (default 2000)")
    lab.add_argument("--series-ttl", type=parse_duration, default=600.0, metavar="DURATION",
                     help="forget a label set when its processes are gone this long (default 10m)")
    lab.add_argument("--top-sites", type=positive_int, default=10, metavar="N",
                     help="critical sections with their own series per label set (default 10)")
    lab.add_argument("--poll-interval", type=parse_interval, default=1.0, metavar="DURATION",
                     help="between scrapes, read the maps when the last read is this old, so that dead "
                          "processes leave them (their counts kept) however rarely Prometheus scrapes; "
                          "0: only at scrapes (default 1s)")
    flt = parser.add_argument_group("filters")
    flt.add_argument("-p", "--pid", dest="pids", type=pid_list, action="append", default=None,
                     metavar="PID[,PID...]", help="only these processes (repeatable)")
    flt.add_argument("--comm", default=None, metavar="REGEX", help="only processes whose comm matches")
    flt.add_argument("--cgroup", dest="cgroups", action="append", default=None, metavar="DIR",
                     help="only tasks in this cgroup v2 directory (repeatable)")
    add_syscalls_arg(parser)
    add_uprobes_arg(parser)
    add_storm_args(parser)
    parser.add_argument("--log.level", dest="log_level", choices=("debug", "info", "warn", "error"),
                        default="info", help="log level (default info)")
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, format="ts=%(asctime)s level=%(levelname)s msg=%(message)r",
                        level={"warn": logging.WARNING}.get(level, getattr(logging, level.upper())))
    logging.Formatter.default_msec_format = "%s.%03d"


def run(args) -> int:
    _setup_logging(args.log_level)
    linux.one_malloc_arena()  # both processes: RSS that stays flat (docs/production.md, Memory)
    log = logging.getLogger("rseqtop.export")
    from rseqtop.exporter.server import parse_listen_address

    if not args.telemetry_path.startswith("/") or args.telemetry_path in ("/", "/-/healthy", "/-/ready"):
        raise UsageError(f"--web.telemetry-path {args.telemetry_path!r}: give a path such as /metrics")
    address = parse_listen_address(args.listen)
    web = None
    if args.web_config:  # read now, while the files are readable (the HTTP process could not)
        from rseqtop.exporter import webconfig

        web = webconfig.load(args.web_config)

    from rseqtop.collect import Collector
    from rseqtop.collect.loader import check_privileges

    # only labels=tid has per-thread series; process totals never need threads
    source = Collector(pids=flat_pids(args) or None, comm=args.comm, cgroups=args.cgroups, syscalls=args.syscalls,
                       threads="all" if args.labels == "tid" else "none", uprobes=args.uprobes,
                       storm=storm_rule(args),
                       # a dead process's final counts live on in its label
                       # set (retired, RseqCollector): the maps need not keep
                       # it past the read after the one that saw it dead,
                       # and churn then costs memory for one read's dead
                       # processes, not for up to 4,096 of them
                       keep_dead_seconds=0,
                       lean=not args.uprobes)  # without bcc (memory) unless probes come and go
    if args.ebpf:
        print(source.generate())
        return 0

    from prometheus_client import CollectorRegistry, ProcessCollector

    from rseqtop.exporter import privsep
    from rseqtop.exporter.metrics import RseqCollector
    from rseqtop.exporter.server import ExporterServer, render

    check_privileges()  # one clear line before anything is forked
    target = privsep.resolve_user(args.web_user)
    registry = CollectorRegistry()
    rc = RseqCollector(source, labels=args.labels, max_series=args.max_series, series_ttl=args.series_ttl,
                       top_sites=args.top_sites)
    server = ExporterServer(address, registry, args.telemetry_path, web)  # bound here: low ports work
    # Inherited by every thread created from now on (the link, the symbolizer): no exec can gain privileges.
    privsep.prctl(privsep.PR_SET_NO_NEW_PRIVS, 1)
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sys.stderr.flush()
    parent_pid = os.getpid()
    child = os.fork()
    if child == 0:  # the HTTP process: single-threaded here, no BPF loaded yet
        parent_end.close()
        privsep.run_child(server, child_end, target, parent_pid)  # never returns
    child_end.close()
    server.server_close()  # only the HTTP process holds the listening socket

    attached = threading.Event()
    stop = threading.Event()
    requests: queue.Queue = queue.Queue()
    child_gone = threading.Event()

    def on_eof():
        child_gone.set()
        requests.put(None)

    def on_signal(signum, frame):
        stop.set()
        requests.put(None)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    link = privsep.ChildLink(parent_end, attached.is_set, lambda rid, key: requests.put((rid, key)), on_eof).start()
    scheme = "https" if server.web.tls else "http"
    log.info("listening on %s://%s:%d%s (tls=%s, basic_auth=%s; HTTP process %d as %s)", scheme,
             address[0] or "*", server.port, args.telemetry_path, server.web.tls, bool(server.web.users),
             child, target.name)
    try:
        try:
            source.attach()
        except UserError:
            raise
        except Exception as err:  # a missing kernel feature must not end in a traceback
            raise UserError(f"attaching the BPF probes failed: {type(err).__name__}: {err}") from None
        registry.register(rc)
        ProcessCollector(registry=registry)
        _drop_parent(source, target, log, privsep.UPROBES_KEEP if args.uprobes else privsep.PARENT_KEEP)
        attached.set()
        log.info("ready: %d probes attached (%s labels, max %d label sets, series ttl %gs)",
                 len(source.probes), args.labels, args.max_series, args.series_ttl)
        while not stop.is_set() and not child_gone.is_set():
            _answer(requests, link, registry, render, log, min(1.0, args.poll_interval or 1.0))
            rc.tick(args.poll_interval)
        if child_gone.is_set() and not stop.is_set():
            raise UserError(f"the HTTP process {child} exited unexpectedly ({_reap(child, 1.0)}); stopping")
        log.info("stopping")
    finally:
        if not child_gone.is_set() or _alive(child):
            _stop_child(child)
        parent_end.close()
        with rc.lock:
            source.close()
    return 0


def _drop_parent(source, target, log, keep) -> None:
    """Keep only what reading maps and symbolizing needs (and with --uprobes
    attaching uprobes). Capabilities are per thread: pause the collector's
    symbolizer thread, drop in this thread, restart it (it inherits the
    reduced set), then check every thread."""
    from rseqtop.exporter import privsep

    source.pause_watcher()
    try:
        privsep.drop(target, keep)
    except OSError as err:
        raise UserError(f"dropping privileges after attaching failed: {err}") from None
    source.resume_watcher()
    allowed = privsep.mask(keep)
    for tid in os.listdir("/proc/self/task"):
        try:
            st = privsep.status(f"/proc/self/task/{tid}/status")
        except OSError:
            continue
        held = (st["CapEff"] | st["CapPrm"] | st["CapInh"] | st["CapAmb"]) & ~allowed
        if held or (target.uid is not None and set(st["Uid"]) != {target.uid}):
            raise UserError(f"thread {tid} still holds privileges after the drop (capabilities {held:#x}, "
                            f"uids {st['Uid']}); refusing to serve")
    log.info("privileges dropped: collector runs as %s with CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH%s", target.name,
             ", CAP_PERFMON (--uprobes)" if len(keep) > len(privsep.PARENT_KEEP) else "")


def _answer(requests: queue.Queue, link, registry, render, log, wait: float = 1.0) -> None:
    """Build the metrics for waiting requests, in this thread (it holds the
    capabilities symbolization needs); one build per format for a batch.
    Returns after at most `wait` seconds without a request."""
    try:
        item = requests.get(timeout=wait)
    except queue.Empty:
        return
    batch = [item]
    while True:
        try:
            batch.append(requests.get_nowait())
        except queue.Empty:
            break
    by_key: dict = {}
    for it in batch:
        if it is not None:
            by_key.setdefault(it[1], []).append(it[0])
    from rseqtop.exporter import privsep

    for key, rids in by_key.items():
        try:
            body, ctype = render(registry, key)
            st, payload = privsep.OK, privsep.pack_metrics(body, ctype)
        except Exception as err:  # the collector logs and counts its own errors; this is a last resort
            log.error("building the metrics failed: %s: %s", type(err).__name__, err)
            st, payload = privsep.ERROR, f"error building the metrics: {type(err).__name__}\n".encode()
        for rid in rids:
            link.reply(rid, st, payload)
    linux.release_free_memory()  # after the replies: not on the scrape's path


def _alive(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def _reap(pid: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, st = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "already reaped"
        if done:
            if os.WIFSIGNALED(st):
                return f"killed by {signal.Signals(os.WTERMSIG(st)).name}"
            return f"exit status {os.WEXITSTATUS(st)}"
        if time.monotonic() > deadline:
            return "still running"
        time.sleep(0.02)


def _stop_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if _reap(pid, 1.0) == "still running":
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid, 1.0)
