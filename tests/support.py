"""Helpers shared by the tests. Test modules import this module, never each
other (tests/test_suite_layout.py checks that); fixtures built on these
helpers live in conftest.py."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
from prometheus_client import CollectorRegistry

from rseqtop.exporter import privsep, webconfig
from rseqtop.exporter.metrics import RseqCollector
from rseqtop.exporter.server import ExporterServer, render
from rseqtop.model.synthetic import SyntheticSource

NOBODY = 65534


# -- waiting -------------------------------------------------------------------

def wait_for(pred, timeout: float, what: str, proc=None, interval: float = 0.5):
    """Poll pred until it returns something true, and return that. Fails when
    timeout seconds pass first or when proc (a Popen) exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


# -- HTTP clients --------------------------------------------------------------

def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, context=None, headers=None, timeout=10, down_ok=False) -> tuple:
    """(status, body) of a GET; an HTTP error status is returned, not raised.
    down_ok: a connection that fails (refused, reset, TLS, timeout) is
    (None, b"") instead of an exception, for polling a server that may not
    be up yet."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=context, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        if not down_ok:
            raise
        return None, b""


def basic(user, password) -> dict:
    """The Authorization header of HTTP basic auth."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- TLS and basic auth material -----------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """A test CA (ca.crt, ca.key) in d, and server.{crt,key} (127.0.0.1,
    localhost) and client.{crt,key} (prometheus) signed by it."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=rseqtop test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "subjectAltName=DNS:prometheus")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def bcrypt_hash(password: str, cost: int = 5) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def tls_yaml(pki, auth="NoClientCert", users="") -> str:
    """A web config file's text serving TLS with pki's server certificate;
    users: a basic_auth_users section to append."""
    y = f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
    if auth != "NoClientCert":
        y += f"  client_auth_type: {auth}\n  client_ca_file: {pki}/ca.crt\n"
    return y + users


def client_ctx(pki, cert=True) -> ssl.SSLContext:
    """A client TLS context trusting pki's CA, with its client certificate unless cert=False."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return ctx


# -- exporter servers ----------------------------------------------------------

def synthetic_server(web_yaml=None, tmp_path=None, **kw) -> tuple:
    """An ExporterServer on a free loopback port for a synthetic source, not
    yet serving, and its registry. web_yaml: a web config file's text."""
    reg = CollectorRegistry()
    reg.register(RseqCollector(SyntheticSource(processes=5), identity=None))
    web = None
    if web_yaml is not None:
        path = tmp_path / "web.yml"
        path.write_text(web_yaml)
        web = webconfig.load(path)
    return ExporterServer(("127.0.0.1", 0), reg, "/metrics", web, **kw), reg


def serve_in_thread(server) -> threading.Thread:
    """Run an ExporterServer's (any socketserver's) serve_forever in a daemon thread."""
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    t.start()
    return t


class Separated:
    """A synthetic_server() forked into a privilege-dropped child (user
    nobody, no capabilities), as in `rseqtop export`; this process plays the
    collector over the socketpair. Needs root. Has what the tests use of an
    ExporterServer: port, ready_event, shutdown(), server_close()."""

    def __init__(self, web_yaml=None, tmp_path=None, **kw):
        srv, reg = synthetic_server(web_yaml, tmp_path, **kw)
        self.port = srv.port
        self.ready_event = threading.Event()
        self.ready_event.set()
        a, b = socket.socketpair()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            a.close()
            privsep.run_child(srv, b, privsep.Target(NOBODY, NOBODY, "nobody"), me)
        b.close()
        srv.server_close()
        self.pid = pid

        def submit(rid, key):
            body, ctype = render(reg, key)
            self.link.reply(rid, privsep.OK, privsep.pack_metrics(body, ctype))

        self.link = privsep.ChildLink(a, self.ready_event.is_set, submit, lambda: None).start()
        self.sock = a

    def shutdown(self):
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)

    def server_close(self):
        self.sock.close()


def socket_owners(port: int) -> set:
    """PIDs holding the LISTEN socket of 127.0.0.1:port (via /proc/net/tcp inode)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                    inodes.add(cols[9])
    assert inodes, f"nothing listens on {port}"
    owners = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    owners.add(int(pid))
        except OSError:
            continue
    return owners


RT_RUNTIME = Path("/proc/sys/kernel/sched_rt_runtime_us")


@contextlib.contextmanager
def no_rt_throttling():
    """The kernel throttles realtime tasks to 95% of each second by default,
    switching the worker out for other tasks (true preemptions, but not the
    inducer under test) whenever the machine is busy: off for these runs."""
    old = RT_RUNTIME.read_text().strip()
    RT_RUNTIME.write_text("-1")
    try:
        yield
    finally:
        RT_RUNTIME.write_text(old)


# A realtime priority above what other tests' workloads run at (1, their
# antagonists 2) and below the kernel's interrupt threads (50): for runs that
# must see one named preempter only, on a machine that runs other tests too.
ISOLATED_PRIORITY = 40


def run_realtime(args, env=None, timeout: float = 120, priority: int = 1) -> dict:
    """Run the bundled workload SCHED_FIFO (chrt -f PRIORITY), unthrottled,
    to its end: its JSON summary."""
    from rseqtop import workload

    with no_rt_throttling():
        out = subprocess.run(["chrt", "-f", str(priority), str(workload.build()), *map(str, args)],
                             capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr
    return workload.parse_summary(out.stdout)


# An abort storm on demand: 4 bursts of 40 signals at one thread in a long
# section, a pause after each, then the run ends (however slow the machine:
# QEMU TCG on a busy host ran a time-bound run's inducer 100 times slower).
# The storm rule (K 16, T 100 ms) sits far from both gaps, the signals'
# (~0.2 ms here, some ms in a slow VM) and the pauses' (1 s), so that the
# kernel's and the workload's timestamps, microseconds apart, agree on
# which aborts are consecutive.
STORM_RULE = (16, 0.1)
STORM_RUN = ["--threads", 1, "--cpus", (os.cpu_count() or 1) - 1, "--op", "delay", "--in-cs-delay", 20000,
             "--signal-rate", 5000, "--signal-burst", 40, "--signal-burst-gap", 1000, "--signal-bursts", 4,
             "--storm-k", STORM_RULE[0], "--storm-t-us", int(STORM_RULE[1] * 1e6), "--duration", 100,
             "--inducer-cpus", 0]
STORM_CLI = ["--storm-aborts", str(STORM_RULE[0]), "--storm-interval", str(STORM_RULE[1])]


def storm_problem(summary) -> str:
    """Why a storm run proves nothing, for the assertion message ("" if it does)."""
    t = summary["totals"]
    if t["storms"] > 0:
        return ""
    return f"no storm happened ({t['aborts']} aborts, longest run {t['max_abort_run']}); the test proves nothing"
