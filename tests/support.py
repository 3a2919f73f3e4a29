"""Helpers shared by the tests. Test modules import this module, never each
other (tests/test_suite_layout.py checks that); fixtures built on these
helpers live in conftest.py."""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from rseqtop import workload
from rseqtop.exporter import privsep, webconfig
from rseqtop.exporter.metrics import RseqCollector
from rseqtop.exporter.server import ExporterServer, render
from rseqtop.model.synthetic import SyntheticSource
from rseqtop.present.rows import LiveModel
from rseqtop.symbols import elf as elfsym
from rseqtop.symbols.annotate import annotate_fd

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


# -- ELF files for fuzzing (tests/test_fuzz_elf.py, tests/test_fuzz_annotate.py) --
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
PHDR = struct.Struct("<IIQQQQQQ")
SYM = struct.Struct("<IBBHQQ")


# ---------------------------------------------------------------- seeds

def synthetic_elf(syms=None, strtab=None, symtab_copies=1) -> bytes:
    """A tiny valid ELF64 with .text, .symtab, .strtab and .shstrtab (or the
    given symbols and string table, the symbol table's header repeated)."""
    text_off, text_addr = 0x80, 0x401080
    text = b"\xc3" * 64
    if strtab is None:
        strtab = b"\0f1\0f2\0data\0nt\0ifn\0"
    syms = syms if syms is not None else [
        SYM.pack(0, 0, 0, 0, 0, 0),
        SYM.pack(1, 0x12, 0, 1, text_addr, 16),          # f1: GLOBAL FUNC, 16 bytes
        SYM.pack(4, 0x12, 0, 1, text_addr + 32, 0),      # f2: FUNC, no size
        SYM.pack(7, 0x11, 0, 1, text_addr + 16, 8),      # data: OBJECT (ignored)
        SYM.pack(12, 0x10, 0, 1, text_addr + 48, 8),     # nt: NOTYPE with a size
        SYM.pack(15, 0x1A, 0, 1, text_addr + 56, 8),     # ifn: GNU_IFUNC
    ]
    symtab = b"".join(syms)
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    body = bytearray(text_off)
    body += text
    sym_off = len(body)
    body += symtab
    str_off = len(body)
    body += strtab
    shstr_off = len(body)
    body += shstrtab
    while len(body) % 8:
        body += b"\0"
    shoff = len(body)
    shdrs = [
        SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        SHDR.pack(1, 1, 6, text_addr, text_off, len(text), 0, 0, 16, 0),
        SHDR.pack(7, 2, 0, 0, sym_off, len(symtab), 3, 1, 8, 24),
        SHDR.pack(15, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
        SHDR.pack(23, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0),
    ] + [SHDR.pack(7, 2, 0, 0, sym_off, len(symtab), 3, 1, 8, 24)] * (symtab_copies - 1)
    for s in shdrs:
        body += s
    phdr = PHDR.pack(1, 5, 0, 0x401000, 0x401000, len(body), len(body), 0x1000)
    body[64:64 + PHDR.size] = phdr
    body[0:64] = EHDR.pack(b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1, text_addr,
                           64, shoff, 0, 64, 56, 1, 64, len(shdrs), 4)
    return bytes(body)


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    fields: tuple       # (offset, width, label) of every header field worth overwriting
    boundaries: tuple   # file offsets where a structure starts or ends
    sections: tuple     # (shdr file offset, sh_type, sh_offset, sh_size)


def layout(name: str, data: bytes) -> Seed:
    fields = []
    bounds = {0, 4, 16, 64, len(data)}
    ehdr_fields = [(24, 8, "e_entry"), (32, 8, "e_phoff"), (40, 8, "e_shoff"),
                   (52, 2, "e_ehsize"), (54, 2, "e_phentsize"), (56, 2, "e_phnum"),
                   (58, 2, "e_shentsize"), (60, 2, "e_shnum"), (62, 2, "e_shstrndx"),
                   (4, 1, "ei_class"), (5, 1, "ei_data"), (20, 4, "e_version")]
    fields += ehdr_fields
    (_i, _t, _m, _v, _e, phoff, shoff, _f, _eh, phentsize, phnum, shentsize, shnum,
     _x) = EHDR.unpack_from(data)
    bounds |= {phoff, phoff + phnum * phentsize, shoff, shoff + shnum * shentsize}
    for k in range(phnum):
        base = phoff + k * phentsize
        bounds.add(base)
        for off, width, label in [(0, 4, "p_type"), (8, 8, "p_offset"), (16, 8, "p_vaddr"),
                                  (32, 8, "p_filesz"), (40, 8, "p_memsz")]:
            fields.append((base + off, width, f"phdr{k}.{label}"))
    sections = []
    for k in range(shnum):
        base = shoff + k * shentsize
        bounds.add(base)
        _n, sh_type, _fl, _addr, sh_offset, sh_size, sh_link, _inf, _al, sh_entsize = \
            SHDR.unpack_from(data, base)
        sections.append((base, sh_type, sh_offset, sh_size))
        if sh_type != 8:  # NOBITS occupies no file bytes
            bounds |= {sh_offset, sh_offset + sh_size}
        for off, width, label in [(4, 4, "sh_type"), (16, 8, "sh_addr"), (24, 8, "sh_offset"),
                                  (32, 8, "sh_size"), (40, 4, "sh_link"), (56, 8, "sh_entsize")]:
            fields.append((base + off, width, f"shdr{k}.{label}"))
        if sh_type in (2, 11) and sh_entsize == SYM.size:
            count = sh_size // SYM.size
            for j in list(range(min(count, 8))) + list(range(max(8, count - 3), count)):
                sb = sh_offset + j * SYM.size
                bounds.add(sb)
                for off, width, label in [(0, 4, "st_name"), (4, 1, "st_info"), (6, 2, "st_shndx"),
                                          (8, 8, "st_value"), (16, 8, "st_size")]:
                    fields.append((sb + off, width, f"sym{k}.{j}.{label}"))
    bounds = tuple(sorted(b for b in bounds if 0 <= b <= len(data)))
    return Seed(name, data, tuple(fields), bounds, tuple(sections))


@functools.lru_cache(maxsize=None)
def seeds() -> tuple:
    out = [layout("synthetic", synthetic_elf())]
    for name, path in [("workload", workload.build()), ("true", Path("/bin/true")),
                       ("libdl", Path("/lib/x86_64-linux-gnu/libdl.so.2"))]:
        if Path(path).is_file():
            out.append(layout(name, Path(path).read_bytes()))
    assert len(out) >= 3, "too few seed binaries"
    return tuple(out)


def extremes(width: int, seed: Seed) -> list:
    top = (1 << (8 * width)) - 1
    vals = {0, 1, 2, 3, 8, 24, 56, 64, 0xFF, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF,
            1 << 32, 1 << 62, 1 << 63, top, top - 1, top - 23, len(seed.data), len(seed.data) - 1,
            len(seed.data) + 1, len(seed.data) - 24, len(seed.data) - 64}
    return sorted(v & top for v in vals)


# ---------------------------------------------------------------- mutations

def put(data: bytearray, offset: int, width: int, value: int) -> None:
    if 0 <= offset and offset + width <= len(data):
        data[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


@st.composite
def mutated(draw):
    seed = draw(st.sampled_from(seeds()))
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["field", "field", "field", "flip", "truncate", "nonul",
                                     "overlap", "splice"]))
        if kind == "field":
            off, width, _label = draw(st.sampled_from(seed.fields))
            value = draw(st.one_of(st.sampled_from(extremes(width, seed)),
                                   st.integers(0, (1 << (8 * width)) - 1)))
            put(data, off, width, value)
        elif kind == "flip" and data:
            for _ in range(draw(st.integers(1, 16))):
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            at = draw(st.sampled_from(seed.boundaries)) + draw(st.integers(-2, 2))
            del data[max(0, at):]
        elif kind == "nonul":
            strtabs = [s for s in seed.sections if s[1] == 3 and s[3]]
            if strtabs:
                _base, _t, off, size = draw(st.sampled_from(strtabs))
                data[off:off + size] = b"A" * len(data[off:off + size])
        elif kind == "overlap" and len(seed.sections) > 1:
            a = draw(st.sampled_from(seed.sections))
            b = draw(st.sampled_from(seed.sections))
            put(data, a[0] + 24, 8, b[2])                      # A's data at B's offset
            if draw(st.booleans()):
                put(data, a[0] + 32, 8, b[3] + draw(st.integers(-8, 8)))
            if draw(st.booleans()):
                put(data, a[0] + 40, 4, (b[0] - seed.sections[0][0]) // 64)  # link A to B
        elif kind == "splice" and data:
            pos = draw(st.integers(0, len(data)))
            if draw(st.booleans()):
                data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
            else:
                del data[pos:pos + draw(st.integers(1, 256))]
    return bytes(data)


# -- the workload's critical sections, from independent references -------------
# (tests/test_annotate.py, tests/test_fuzz_annotate.py, tests/test_tui.py)
def workload_binary() -> Path:
    return workload.build()


def source_lines(op: str) -> tuple:
    """(line of the section's asm statement, line of its abort handler's
    first statement, the one after its `abort:` label) in rseq_abi.c."""
    text = (workload.source_dir() / "rseq_abi.c").read_text().splitlines()
    symbol = dict(zip(workload.OPERATIONS, ("rseq_op_counter", "rseq_op_spinlock_lock", "rseq_op_push",
                                            "rseq_op_pop", "rseq_op_delay")))[op]
    fn = next(i for i, line in enumerate(text) if re.match(rf"RSEQ_FN int {symbol}\(", line))
    asm = next(i for i in range(fn, len(text)) if "__asm__ __volatile__ goto(" in text[i])
    label = next(i for i in range(asm, len(text)) if text[i].strip() == "abort:")
    first = next(i for i in range(label + 1, len(text)) if text[i].strip())
    return asm + 1, first + 1


def nm(binary: Path) -> dict:
    out = subprocess.run(["nm", str(binary)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: int(parts[0], 16) for parts in (line.split() for line in out.splitlines()) if len(parts) == 3}


def descriptor(binary: Path, op: str) -> tuple:
    """(start_ip, post_commit_offset, abort_ip) as file addresses, from objdump."""
    addr = nm(binary)[f"rseq_cs_desc_{op}"]
    out = subprocess.run(["objdump", "-s", "-j", "__rseq_cs", f"--start-address={addr:#x}",
                          f"--stop-address={addr + 32:#x}", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    raw = b""
    for line in out.splitlines():
        m = re.match(r"^ ([0-9a-f]+) ((?:[0-9a-f]{2,8} ?){1,4})", line)
        if m:
            raw += bytes.fromhex(m.group(2).replace(" ", ""))
    words = [int.from_bytes(raw[k:k + 8], "little") for k in range(0, 32, 8)]
    return words[1], words[2], words[3]


def objdump_addresses(binary: Path, start: int, stop: int) -> list:
    out = subprocess.run(["objdump", "-d", f"--start-address={start:#x}", f"--stop-address={stop:#x}", str(binary)],
                         capture_output=True, text=True, check=True).stdout
    return [int(m.group(1), 16) for m in re.finditer(r"^\s+([0-9a-f]+):\t[0-9a-f]{2} ", out, re.M)]


def addr2line(binary: Path, addrs) -> list:
    out = subprocess.run(["addr2line", "-e", str(binary), *[hex(a) for a in addrs]], capture_output=True, text=True,
                         check=True).stdout
    return [f"{os.path.basename(line.split(':')[0])}:{line.split(':')[1].split()[0]}" for line in out.splitlines()]


def file_offset(binary: Path, vaddr: int) -> int:
    for seg in elfsym.load(str(binary)).segments:
        if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
            return vaddr - seg.vaddr + seg.offset
    raise AssertionError(f"{vaddr:#x} not in a segment")


def listing_of(binary: Path, op: str):
    start, length, abort = descriptor(binary, op)
    fd = os.open(binary, os.O_RDONLY)
    try:
        return annotate_fd(fd, file_offset(binary, start), length, file_offset(binary, abort), str(binary))
    finally:
        os.close(fd)

def assert_exact(summary, snap):
    """The workload's own counts (summary) against a snapshot: per thread, per
    critical section (with its symbol, named while the process lived) and
    the process total; returns the process."""
    pid = summary["pid"]
    proc = snap.process(pid)
    assert proc is not None, f"workload pid {pid} not seen"
    threads = {t.tid: t for t in snap.threads_of(pid)}
    for tid, rec in summary["threads"].items():
        t = threads.get(int(tid))
        assert t is not None, f"thread {tid} not seen"
        assert t.counts.aborts == rec["aborts"], (tid, t.counts.aborts, rec["aborts"],
                                                  f"probe misses {snap.self_stats.probe_misses}")
    sites = {s.start_ip: s for s in snap.sites_of(pid)}
    for name, op in summary["ops"].items():
        if not op.get("enabled", True):
            continue
        got = sites[int(op["start_ip"], 16)].aborts if int(op["start_ip"], 16) in sites else 0
        assert got == op["aborts"], (name, got, op["aborts"])
        if op["aborts"]:
            site = sites[int(op["start_ip"], 16)]
            assert op["symbol"] in site.symbol
            # where in the section (annotate's per-instruction counts): every abort at one offset inside it
            assert sum(n for _, n in site.offsets) == site.aborts, (name, site.offsets, site.aborts)
            assert all(0 <= off < site.post_commit_offset for off, _ in site.offsets), (name, site.offsets)
    assert proc.counts.aborts == summary["totals"]["aborts"]
    assert sum(n for _, n in proc.counts.causes) == proc.counts.aborts
    return proc
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


class Trace:
    """`rseqtop trace` as a subprocess (tests/test_trace*.py), its output
    read as it comes; ready once it prints "Tracing"."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list = []
        self.err: list = []
        self.ready = threading.Event()
        self.pumps = [threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
                      for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.pumps:
            t.start()
        if not self.ready.wait(300):  # compiling under emulation (kernel VMs) is slow
            self.proc.kill()
            raise AssertionError(f"trace never attached: {''.join(self.err)}")

    def _pump(self, stream, sink):
        for line in stream:
            sink.append(line)
            if line.startswith("Tracing"):
                self.ready.set()
        if self.proc.poll() is not None:
            self.ready.set()

    def stop(self, sig=signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=60)
        for t in self.pumps:  # every line read (slow under emulation)
            t.join(timeout=30)
        return rc


def model_of(source) -> LiveModel:
    """A LiveModel after two polls of source (so that it has rates)."""
    m = LiveModel()
    m.update(source.poll())
    m.update(source.poll())
    return m


def fdinfo_stats(fd: int) -> tuple:
    """(run_time_ns, run_cnt, recursion_misses) of a BPF program as
    /proc/self/fdinfo shows them (0 where a field is absent): the reference
    the reader's bpf_prog_info figures are checked against."""
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    found = dict(re.findall(r"^(run_time_ns|run_cnt|recursion_misses):\s*(\d+)", text, re.M))
    return tuple(int(found.get(k, 0)) for k in ("run_time_ns", "run_cnt", "recursion_misses"))
