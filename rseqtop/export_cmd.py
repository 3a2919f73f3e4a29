"""`rseqtop export`: serve Prometheus metrics about rseq aborts.

The HTTP server starts first (so /-/healthy answers at once); /-/ready turns
200 when the BPF probes are attached. If attaching fails, the command exits
non-zero at once. See docs/production.md.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading

from rseqtop.errors import UsageError, UserError
from rseqtop.exporter import DEFAULT_LISTEN, DEFAULT_PORT

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


def parse_duration(text: str) -> float:
    """Go/Prometheus-style duration ("10m", "1h30m", "45s") or plain seconds -> seconds."""
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
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return n


def _pid(text: str) -> int:
    n = _positive_int(text)
    return n


def configure(parser: argparse.ArgumentParser) -> None:
    web = parser.add_argument_group("web")
    web.add_argument("--web.listen-address", dest="listen", default=DEFAULT_LISTEN, metavar="ADDR",
                     help=f"address to listen on (default {DEFAULT_LISTEN}: all interfaces)")
    web.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics", metavar="PATH",
                     help="path of the metrics (default /metrics)")
    web.add_argument("--web.config.file", dest="web_config", default=None, metavar="FILE",
                     help="exporter-toolkit web config: TLS and basic auth (bcrypt)")
    lab = parser.add_argument_group("series")
    lab.add_argument("--labels", choices=("comm", "pid", "tid"), default="comm",
                     help="comm: comm + container labels, processes summed (default); "
                          "pid: one series set per process; tid: also per thread")
    lab.add_argument("--max-series", type=_positive_int, default=2000, metavar="N",
                     help="most label sets kept (per level); refused ones are counted in "
                          "rseqtop_series_dropped_total (default 2000)")
    lab.add_argument("--series-ttl", type=parse_duration, default=600.0, metavar="DURATION",
                     help="forget a label set when its processes are gone this long (default 10m)")
    lab.add_argument("--top-sites", type=_positive_int, default=10, metavar="N",
                     help="critical sections with their own series per label set (default 10)")
    flt = parser.add_argument_group("filters")
    flt.add_argument("-p", "--pid", dest="pids", type=_pid, action="append", default=None, metavar="PID",
                     help="only this process (repeatable)")
    flt.add_argument("--comm", default=None, metavar="REGEX", help="only processes whose comm matches")
    flt.add_argument("--cgroup", dest="cgroups", action="append", default=None, metavar="DIR",
                     help="only tasks in this cgroup v2 directory (repeatable)")
    parser.add_argument("--log.level", dest="log_level", choices=("debug", "info", "warn", "error"),
                        default="info", help="log level (default info)")
    parser.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, format="ts=%(asctime)s level=%(levelname)s msg=%(message)r",
                        level={"warn": logging.WARNING}.get(level, getattr(logging, level.upper())))
    logging.Formatter.default_msec_format = "%s.%03d"


def run(args) -> int:
    _setup_logging(args.log_level)
    log = logging.getLogger("rseqtop.export")
    from rseqtop.exporter.server import parse_listen_address

    if not args.telemetry_path.startswith("/") or args.telemetry_path in ("/", "/-/healthy", "/-/ready"):
        raise UsageError(f"--web.telemetry-path {args.telemetry_path!r}: give a path such as /metrics")
    address = parse_listen_address(args.listen)
    web = None
    if args.web_config:
        from rseqtop.exporter import webconfig

        web = webconfig.load(args.web_config)

    from rseqtop.collector import Collector

    source = Collector(pids=args.pids, comm=args.comm, cgroups=args.cgroups)
    if args.ebpf:
        print(source.generate())
        return 0

    from prometheus_client import CollectorRegistry, ProcessCollector

    from rseqtop.exporter.metrics import RseqCollector
    from rseqtop.exporter.server import ExporterServer, serve_in_thread

    registry = CollectorRegistry()
    rc = RseqCollector(source, labels=args.labels, max_series=args.max_series, series_ttl=args.series_ttl,
                       top_sites=args.top_sites)
    attached = threading.Event()
    server = ExporterServer(address, registry, args.telemetry_path, web, ready=attached.is_set)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serve_in_thread(server)
    scheme = "https" if server.web.tls else "http"
    log.info("listening on %s://%s:%d%s (tls=%s, basic_auth=%s)", scheme, address[0] or "*", server.port,
             args.telemetry_path, server.web.tls, bool(server.web.users))
    try:
        try:
            source.attach()
        except UserError:
            raise
        except Exception as err:  # a missing kernel feature must not end in a traceback
            raise UserError(f"attaching the BPF probes failed: {type(err).__name__}: {err}") from None
        registry.register(rc)
        ProcessCollector(registry=registry)
        server.ready_event.set()
        attached.set()
        log.info("ready: %d probes attached (%s labels, max %d label sets, series ttl %gs)",
                 len(source.probes), args.labels, args.max_series, args.series_ttl)
        while not stop.wait(1.0):
            pass
        log.info("stopping")
    finally:
        server.shutdown()
        server.server_close()
        with rc.lock:
            source.close()
    return 0
