"""Privilege separation of `rseqtop export` (docs/production.md, Privileges).

Real, as root: the process that owns the listening socket has no capability
at all (in particular neither CAP_SYS_ADMIN nor CAP_BPF), runs as nobody
with no_new_privs, and still serves real metrics; the collector process
keeps only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH; killing either process
stops the other; SIGTERM detaches the probes. test_exporter_web runs its
HTTP tests (TLS, basic auth, 200 concurrent scrapes, slow and malformed
clients) against a forked, privilege-dropped HTTP process as well (its
`serve` fixture, "separated")."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import support
from support import NOBODY, basic, client_ctx, free_port, socket_owners, tls_yaml, wait_for

from rseqtop.exporter import privsep

CAP_SYS_ADMIN, CAP_BPF = 21, 39
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
# the real exporter may not listen yet, or have gone: that is (None, b"") here
get = functools.partial(support.get, timeout=30, down_ok=True)


def task_status(pid: int) -> list:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out.append(privsep.status(f"/proc/{pid}/task/{tid}/status"))
        except OSError:
            pass
    return out


def prog_ids(pid: int) -> set:
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def loaded_progs() -> dict:
    res = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return {p["id"]: p.get("name", "") for p in json.loads(res.stdout)}


class Exporter:
    def __init__(self, rseqtop_cmd, *extra):
        self.port = free_port()
        self.proc = subprocess.Popen(rseqtop_cmd + ["export", f"--web.listen-address=127.0.0.1:{self.port}",
                                                    *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, url=None, **kw):
        wait_for(lambda: get(url or self.base + "/-/ready", timeout=5, **kw)[0] == 200, 180, "exporter ready",
                 self.proc, interval=0.3)
        return self

    def child(self) -> int:
        owners = socket_owners(self.port)
        assert len(owners) == 1, owners
        return owners.pop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def exporter(bpf_ok, rseqtop_cmd):
    e = Exporter(rseqtop_cmd).wait_ready()
    yield e
    e.stop()


def wait_exit(proc_or_pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(proc_or_pid, int):
            if not os.path.exists(f"/proc/{proc_or_pid}") or \
                    "State:\tZ" in open(f"/proc/{proc_or_pid}/status").read():
                return True
        elif proc_or_pid.poll() is not None:
            return True
        time.sleep(0.05)
    return False


# -- the real exporter -----------------------------------------------------------

def test_http_process_has_no_capabilities(exporter):
    child = exporter.child()
    assert child != exporter.proc.pid
    assert int(privsep.status(f"/proc/{child}/status").get("Uid", (0,))[0]) == NOBODY
    ppid = next(l for l in open(f"/proc/{child}/status") if l.startswith("PPid:")).split()[1]
    assert int(ppid) == exporter.proc.pid
    for st in task_status(child):
        for key in ("CapEff", "CapPrm"):
            assert not st[key] & (1 << CAP_SYS_ADMIN) and not st[key] & (1 << CAP_BPF), st
        assert st["CapEff"] == st["CapPrm"] == st["CapInh"] == st["CapAmb"] == 0, st
        assert st["CapBnd"] == 0, st
        assert set(st["Uid"]) == {NOBODY} and set(st["Gid"]) == {NOBODY}, st
        assert st["NoNewPrivs"] == 1, st
    # no BPF object leaked into the HTTP process
    fds = [os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")]
    assert not [f for f in fds if "bpf" in f or "perf_event" in f], fds
    status, body = get(exporter.base + "/metrics")
    assert status == 200
    attached = [l for l in body.decode().splitlines() if l.startswith("rseqtop_probes_attached ")]
    assert attached and float(attached[0].split()[1]) > 0, attached


def test_collector_process_keeps_only_ptrace_and_dac_read_search(exporter):
    allowed = privsep.mask(privsep.PARENT_KEEP)
    sts = task_status(exporter.proc.pid)
    assert len(sts) >= 2  # the main thread and at least the link / symbolizer threads
    for st in sts:
        assert not (st["CapEff"] | st["CapPrm"] | st["CapInh"] | st["CapAmb"]) & ~allowed, st
        assert set(st["Uid"]) == {NOBODY}, st
        assert st["NoNewPrivs"] == 1, st
    main = privsep.status(f"/proc/{exporter.proc.pid}/status")
    assert main["CapEff"] == allowed and main["CapBnd"] == allowed, main
    # it reads the maps through its fds: the probes are still its own
    assert prog_ids(exporter.proc.pid)
    assert exporter.proc.pid not in socket_owners(exporter.port)


def test_endpoints_and_200_concurrent_scrapes(exporter):
    import concurrent.futures

    assert get(exporter.base + "/-/healthy")[0] == 200
    assert get(exporter.base + "/-/ready")[0] == 200
    status, body = get(exporter.base + "/")
    assert status == 200 and b"ready" in body

    def one(_):
        status, body = get(exporter.base + "/metrics", timeout=120)
        return status == 200 and b"rseqtop_probes_attached" in body

    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        assert all(pool.map(one, range(200)))
    assert exporter.proc.poll() is None


def test_bad_web_user_exits_2(bpf_ok, rseqtop_cmd):
    for user in ("no-such-user-rseqtop", "root", "0"):
        res = subprocess.run(rseqtop_cmd + ["export", "--web.listen-address=127.0.0.1:0", f"--web.user={user}"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (user, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "--web.user" in res.stderr, res.stderr


def test_tls_and_auth_files_readable_only_by_root(bpf_ok, rseqtop_cmd, tmp_path, pki, hashed):
    d = tmp_path / "secret"
    d.mkdir(mode=0o700)
    for name in ("server.crt", "server.key"):
        (d / name).write_bytes((pki / name).read_bytes())
        (d / name).chmod(0o600)
    cfg = d / "web.yml"
    cfg.write_text(tls_yaml(d, users=f"basic_auth_users:\n  alice: '{hashed}'\n"))
    cfg.chmod(0o600)
    e = Exporter(rseqtop_cmd, f"--web.config.file={cfg}")
    ctx = client_ctx(pki, cert=False)
    try:
        e.wait_ready(f"https://127.0.0.1:{e.port}/-/ready", context=ctx, headers=basic("alice", "s3cret"))
        base = f"https://127.0.0.1:{e.port}"
        assert get(base + "/metrics", ctx, basic("alice", "wrong"))[0] == 401
        status, body = get(base + "/metrics", ctx, basic("alice", "s3cret"))
        assert status == 200 and b"rseqtop_probes_attached" in body
        status, body = get(f"http://127.0.0.1:{e.port}/metrics")
        assert status == 400 and b"HTTPS" in body
        assert privsep.status(f"/proc/{e.child()}/status")["CapEff"] == 0
    finally:
        e.stop()


def test_killing_the_http_process_stops_the_exporter(bpf_ok, rseqtop_cmd):
    e = Exporter(rseqtop_cmd).wait_ready()
    try:
        parent = e.proc.pid
        ids = prog_ids(parent)
        assert ids
        os.kill(e.child(), signal.SIGKILL)
        assert wait_exit(e.proc, 30), "the collector process did not exit"
        assert e.proc.returncode != 0
        err = e.proc.stderr.read()
        assert "HTTP process" in err and "Traceback" not in err, err
        # a raw tracepoint link puts its program after an RCU grace period
        # (6.9+): gone within moments, even on a loaded machine
        wait_for(lambda: not ids & set(loaded_progs()), 10, "the probes to be detached", interval=0.2)
    finally:
        e.stop()


def test_sigterm_stops_both_and_detaches(bpf_ok, rseqtop_cmd):
    e = Exporter(rseqtop_cmd).wait_ready()
    try:
        child, ids = e.child(), prog_ids(e.proc.pid)
        assert ids and {i for i, n in loaded_progs().items() if n == "on_rseq_ip_fixup"} & ids
        e.proc.send_signal(signal.SIGTERM)
        assert wait_exit(e.proc, 30)
        assert e.proc.returncode == 0, e.proc.stderr.read()
        assert wait_exit(child, 30), "the HTTP process outlived the collector"
        # a raw tracepoint link puts its program after an RCU grace period
        # (6.9+): gone within moments, even on a loaded machine
        wait_for(lambda: not ids & set(loaded_progs()), 10, "the probes to be detached", interval=0.2)
    finally:
        e.stop()


def test_http_process_dies_with_the_collector(bpf_ok, rseqtop_cmd):
    e = Exporter(rseqtop_cmd).wait_ready()
    try:
        child = e.child()
        e.proc.kill()  # no clean-up at all: PR_SET_PDEATHSIG must end the child
        e.proc.wait()
        assert wait_exit(child, 30), "the HTTP process outlived a killed collector"
    finally:
        e.stop()


# -- the protocol and the drop, without BPF ------------------------------------------

def test_concurrent_requests_share_one_parent_request():
    a, b = socket.socketpair()
    seen = []
    release = threading.Event()

    def fake_parent():
        while True:
            try:
                frame = privsep.recv_frame(b)
            except OSError:  # the test closed the socket
                return
            if frame is None:
                return
            seen.append(frame)
            release.wait(30)
            privsep.send_frame(b, frame[0], privsep.OK, privsep.pack_metrics(b"x 1\n", "text/plain"))

    threading.Thread(target=fake_parent, daemon=True).start()
    link = privsep.ParentLink(a)
    results = []
    started = threading.Barrier(51)

    def scrape():
        started.wait()
        results.append(link.metrics("text"))

    threads = [threading.Thread(target=scrape) for _ in range(50)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(60)
    assert results == [(200, b"x 1\n", "text/plain")] * 50
    assert 1 <= len(seen) < 50
    a.close()
    b.close()


@needs_root
@pytest.mark.parametrize("keep", [(), privsep.PARENT_KEEP])
def test_drop_leaves_only_what_is_kept(keep):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            privsep.drop(privsep.Target(NOBODY, NOBODY, "nobody"), keep)
            os.write(w, json.dumps(privsep.status()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    st = json.loads(data)
    want = privsep.mask(keep)
    assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == want and st["CapInh"] == st["CapAmb"] == 0, st
    assert set(st["Uid"]) == {NOBODY} and st["NoNewPrivs"] == 1
