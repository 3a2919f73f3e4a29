"""HTTP(S) serving for `rseqtop export`: landing page, /-/healthy, /-/ready, metrics.

One thread per connection (a slow client holds only its own thread), a
per-connection socket timeout, the TLS handshake done in that thread (never
in the accept loop), and a plain "400" to clients that speak HTTP to a TLS
port, as Go's net/http does.

The metrics body comes from `registry` in this process, or, when
`metrics_source` is set (the privilege-separated HTTP process of `rseqtop
export`, see privsep.py), from an object whose `metrics(key)` returns
(HTTP status, body, content type) for a format key from `negotiate()`.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from prometheus_client.exposition import choose_encoder

from rseqtop import __version__
from rseqtop.errors import UserError
from rseqtop.exporter import exposition, gcpause
from rseqtop.exporter.webconfig import Authenticator, WebConfig

log = logging.getLogger("rseqtop.export")

PLAIN_TO_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
                b"Client sent an HTTP request to an HTTPS server.\n")


def negotiate(accept: Optional[str]) -> str:
    """The format an Accept header asks for, as a key for render(): "text"
    (classic 0.0.4) or the full OpenMetrics content type (version, escaping)."""
    ctype = choose_encoder(accept)[1]
    return ctype if "openmetrics" in ctype else "text"


def render(registry, accept: Optional[str]) -> tuple:
    """(body, content type) of the registry for an Accept header or a negotiate() key."""
    encoder, ctype = choose_encoder(accept)
    with gcpause.paused():
        if "openmetrics" in ctype:
            return encoder(registry), ctype
        # the classic text format, written without per-sample re-validation
        return exposition.encode(registry), exposition.CONTENT_TYPE


def parse_listen_address(text: str) -> tuple:
    """Go-style host:port -> (host, port); ':9436' means all interfaces."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise UserError(f"--web.listen-address {text!r}: expected HOST:PORT or :PORT", exit_code=2)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise UserError(f"--web.listen-address {text!r}: bad port {port!r}", exit_code=2) from None
    return host, number


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, address: tuple, registry, telemetry_path: str = "/metrics",
                 web: Optional[WebConfig] = None, conn_timeout: float = 30.0,
                 ready: Optional[Callable[[], bool]] = None):
        host, port = address
        self.address_family = socket.AF_INET
        if host in ("", "::") and socket.has_ipv6:
            self.address_family = socket.AF_INET6
            host = "::"
        elif ":" in host:
            self.address_family = socket.AF_INET6
        elif host and not _is_ipv4(host):
            try:
                info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
                self.address_family, host = info[0], info[4][0]
            except OSError as err:
                raise UserError(f"--web.listen-address: cannot resolve {host!r}: {err}", exit_code=2) from None
        self.registry = registry
        self.telemetry_path = telemetry_path
        self.web = web or WebConfig()
        self.auth = Authenticator(self.web.users)
        self.conn_timeout = conn_timeout
        self.ready_event = threading.Event()
        self.ready_check = ready
        self.metrics_source = None  # set in the privilege-separated HTTP process
        try:
            super().__init__((host, port), Handler)
        except OSError as err:
            raise UserError(f"cannot listen on {host or '*'}:{port}: {err.strerror or err}; "
                            f"choose another --web.listen-address") from None

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def is_ready(self) -> bool:
        return self.ready_event.is_set() and (self.ready_check is None or self.ready_check())

    def finish_request(self, request, client_address):
        request.settimeout(self.conn_timeout)
        conn = request
        try:
            if self.web.ssl_context is not None:
                try:
                    first = request.recv(1, socket.MSG_PEEK)
                except OSError:
                    return
                if not first:
                    return
                if first != b"\x16":  # not a TLS handshake record: someone speaking plain HTTP
                    try:
                        request.sendall(PLAIN_TO_TLS)
                    except OSError:
                        pass
                    return
                try:
                    conn = self.web.ssl_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as err:
                    log.debug("TLS handshake with %s failed: %s", client_address[0], err)
                    return
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            if conn is not request:
                try:
                    conn.close()
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
        return host.count(".") == 3
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"
    server_version = f"rseqtop/{__version__}"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet; debug level only
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8", extra: Optional[dict] = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**self.server.web.headers, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        sans = self.server.web.client_allowed_sans
        if sans:
            cert = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
            names = {v for kind, v in (cert or {}).get("subjectAltName", ())}
            if not names & set(sans):
                self._send(403, b"client certificate not allowed\n")
                return False
        if not self.server.auth.check(self.headers.get("Authorization")):
            self._send(401, b"Unauthorized\n", extra={"WWW-Authenticate": 'Basic realm="rseqtop"'})
            return False
        return True

    def do_GET(self):
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == self.server.telemetry_path:
            return self._metrics()
        if path == "/":
            return self._send(200, self._landing(), "text/html; charset=utf-8")
        if path == "/-/healthy":
            return self._send(200, b"Healthy\n")
        if path == "/-/ready":
            if self.server.is_ready():
                return self._send(200, b"Ready\n")
            return self._send(503, b"Not ready: the BPF probes are not attached yet\n")
        self._send(404, b"404 page not found\n")

    do_HEAD = do_GET

    def _refuse(self):
        self._send(405, b"Method Not Allowed\n", extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _metrics(self):
        source = self.server.metrics_source
        if source is not None:
            try:
                code, body, ctype = source.metrics(negotiate(self.headers.get("Accept")))
            except Exception as err:  # the collector process is gone or stuck
                log.error("the collector process did not answer: %s", type(err).__name__)
                return self._send(503, b"the collector process is not answering\n")
            if code != 200:
                return self._send(code, body, ctype)
            return self._send_metrics(body, ctype)
        try:
            body, ctype = render(self.server.registry, self.headers.get("Accept"))
        except Exception as err:  # the collector logs and counts its own errors; this is a last resort
            log.error("building the metrics failed: %s: %s", type(err).__name__, err)
            return self._send(500, f"error building the metrics: {type(err).__name__}\n".encode())
        self._send_metrics(body, ctype)

    def _send_metrics(self, body: bytes, ctype: str):
        extra = {}
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body, compresslevel=1)
            extra["Content-Encoding"] = "gzip"
        self._send(200, body, ctype, extra)

    def _landing(self) -> bytes:
        path = html.escape(self.server.telemetry_path)
        ready = "ready" if self.server.is_ready() else "not ready (attaching probes)"
        return (f"<!DOCTYPE html><html><head><title>rseqtop exporter</title></head><body>"
                f"<h1>rseqtop exporter</h1><p>eBPF metrics for Linux restartable sequences (rseq), "
                f"version {html.escape(__version__)}; {ready}.</p>"
                f"<ul><li><a href=\"{path}\">Metrics</a></li><li><a href=\"/-/healthy\">/-/healthy</a></li>"
                f"<li><a href=\"/-/ready\">/-/ready</a></li></ul></body></html>\n").encode()

