"""--uprobes: abort handlers found and verified in ELF files (the bundled
workload, a shared library built here, hostile mutations of both), the
assembly of handler counts, and, against the real kernel, each thread's
kernel, user-detected and total aborts compared with the workload's own
counts (its abort handler tells a kernel abort from its own cpu_id-mismatch
jump by a flag the section sets before jumping)."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import struct
import subprocess
import time

import pytest

from rseqtop import workload
from rseqtop.collect.assemble import assemble
from rseqtop.collect.records import HandlerRecord, MapRecords, Setup, SiteRecord
from rseqtop.collect.uprobes import HandlerProbes
from rseqtop.model.snapshot import Counts, ThreadStats
from rseqtop.symbols import elf as elfsym

SIG = 0x53053053

# A shared library with two critical sections written like librseq's: one
# listed in __rseq_cs (and __rseq_cs_ptr_array), one only in the pointer
# array (its descriptor in .data.rel.ro), and a decoy descriptor whose
# abort_ip has no signature before it: it must never get a uprobe. Labels
# are local, as librseq's: the linker writes their (relative) addresses.
LIB_SOURCE = r"""
__asm__(
    ".text\n"
    ".globl lib_cs_a\n.type lib_cs_a, @function\nlib_cs_a:\n"
    "1: nop\n2: ret\n.size lib_cs_a, .-lib_cs_a\n"
    ".byte 0x0f, 0xb9, 0x3d\n.long 0x53053053\n"
    ".globl lib_abort_a\n.type lib_abort_a, @function\nlib_abort_a:\n8: ret\n.size lib_abort_a, 1\n"
    ".globl lib_cs_b\n.type lib_cs_b, @function\nlib_cs_b:\n"
    "3: nop\n4: ret\n.size lib_cs_b, .-lib_cs_b\n"
    ".byte 0x0f, 0xb9, 0x3d\n.long 0x53053053\n"
    ".globl lib_abort_b\n.type lib_abort_b, @function\nlib_abort_b:\n9: ret\n.size lib_abort_b, 1\n"
    ".globl lib_decoy\n.type lib_decoy, @function\nlib_decoy:\nnop\nnop\nnop\nnop\n10: ret\n.size lib_decoy, 5\n"
    ".pushsection __rseq_cs, \"aw\"\n.balign 32\n"
    "5: .long 0, 0\n.quad 1b, (2b - 1b), 8b\n"
    "6: .long 0, 0\n.quad 1b, (2b - 1b), 10b\n"
    ".popsection\n"
    ".pushsection .data.rel.ro, \"aw\"\n.balign 32\n"
    "7: .long 0, 0\n.quad 3b, (4b - 3b), 9b\n"
    ".popsection\n"
    ".pushsection __rseq_cs_ptr_array, \"aw\"\n.quad 5b, 7b\n.popsection\n"
);
"""


@pytest.fixture(scope="module")
def rseq_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler"
    d = tmp_path_factory.mktemp("rseqlib")
    src, lib = d / "librseqtest.c", d / "librseqtest.so"
    src.write_text(LIB_SOURCE)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


def symbol_offsets(path) -> dict:
    """name -> file offset of the library's function symbols (the truth the
    handlers are compared with: their own symbols, not the scanner's)."""
    syms = elfsym.load(str(path))
    out = {}
    for name, addr, _end in syms.symbols():
        for seg in syms.segments:
            if seg.vaddr <= addr < seg.vaddr + seg.filesz:
                out[name] = addr - seg.vaddr + seg.offset
    return out


# -- ELF: handlers found, verified, never anything else ----------------------

def test_library_handlers_are_its_abort_labels_and_the_decoy_is_refused(rseq_lib):
    fd = os.open(rseq_lib, os.O_RDONLY)
    try:
        found = {h.file_offset for h in elfsym.rseq_handlers_fd(fd, SIG)}
        offs = symbol_offsets(rseq_lib)
        assert found == {offs["lib_abort_a"], offs["lib_abort_b"]}
        assert offs["lib_decoy"] + 4 not in found
        # another machine's signature matches nothing
        assert elfsym.rseq_handlers_fd(fd, SIG ^ 1) == ()
    finally:
        os.close(fd)


def section_ranges(path) -> dict:
    """name -> (file offset, size), as readelf lists them."""
    out = {}
    text = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        f = line.replace("[ ", "[").split()
        if "PROGBITS" in f:
            i = f.index("PROGBITS")
            out[f[i - 1]] = (int(f[i + 2], 16), int(f[i + 3], 16))
    return out


def test_descriptors_left_to_relocations_are_read_from_them(rseq_lib):
    """lld writes 0 in place of an address that a RELATIVE relocation
    fills at load time: zero every such word of the library (descriptor
    start_ip and abort_ip, the pointer array); the same handlers are found
    through the relocations' addends."""
    data = bytearray(rseq_lib.read_bytes())
    before = elfsym.rseq_handlers_bytes(bytes(data), SIG)
    sec = section_ranges(rseq_lib)
    off, size = sec["__rseq_cs_ptr_array"]
    data[off:off + size] = bytes(size)
    for name in ("__rseq_cs", ".data.rel.ro"):
        off, size = sec[name]
        for k in range(off, off + size, 32):
            data[k + 8:k + 16] = data[k + 24:k + 32] = bytes(8)
    assert len(before) == 2 and elfsym.rseq_handlers_bytes(bytes(data), SIG) == before


def test_workload_handlers_are_its_abort_ips():
    """The workload prints each section's run-time abort_ip and function
    address; the function's link-time address (its symbol) gives the load
    base, so each handler's link-time address must be one found here."""
    path = workload.build()
    summary = workload.run(["--threads", "1", "--ops", "10"])
    syms = {name: addr for name, addr, _ in elfsym.load(str(path)).symbols()}
    expected = set()
    for op in summary["ops"].values():
        base = int(op["function"], 16) - syms[op["symbol"]]
        expected.add(int(op["abort_ip"], 16) - base)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert {h.vaddr for h in elfsym.rseq_handlers_fd(fd, SIG)} == expected
    finally:
        os.close(fd)


def test_hostile_files_give_elferror_or_verified_handlers_only(rseq_lib):
    """Truncations and byte flips of real files: only ElfError escapes, and
    every handler returned still has the signature before it in the mutated
    bytes, inside the file."""
    rng = random.Random(15)
    want = struct.pack("<I", SIG)
    for seed in (rseq_lib.read_bytes(), workload.build().read_bytes()):
        cases = [seed[:n] for n in range(0, min(len(seed), 4096), 61)]
        for _ in range(300):
            b = bytearray(seed)
            for _ in range(rng.randint(1, 12)):
                if rng.random() < 0.5:
                    b[rng.randrange(min(len(b), 4096))] = rng.randrange(256)  # headers
                else:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            cases.append(bytes(b))
        for data in cases:
            try:
                handlers = elfsym.rseq_handlers_bytes(data, SIG, deadline=time.monotonic() + 1.0)
            except elfsym.ElfInternalError as err:
                pytest.fail(f"internal error: {err}")
            except elfsym.ElfError:
                continue
            for h in handlers:
                assert 4 <= h.file_offset <= len(data) and data[h.file_offset - 4:h.file_offset] == want


# -- the scanner over a process's maps ---------------------------------------

def test_scan_finds_a_mapped_shared_library_and_sites_are_verified(rseq_lib):
    """This process maps the library (dlopen): scanning it probes exactly
    the library's two handlers; a run-time abort_ip (a site the kernel
    reported) is probed only when verified, and never twice."""
    lib = ctypes.CDLL(str(rseq_lib))
    calls = []
    hp = HandlerProbes(lambda path, off: calls.append((os.stat(path).st_ino, off)))
    hp.scan_process(os.getpid())
    offs = symbol_offsets(rseq_lib)
    ino = os.stat(rseq_lib).st_ino
    assert sorted(c for c in calls if c[0] == ino) == sorted([(ino, offs["lib_abort_a"]), (ino, offs["lib_abort_b"])])
    assert hp.scan_process(os.getpid()) == 0  # once per process
    before = len(calls)
    abort_a = ctypes.cast(lib.lib_abort_a, ctypes.c_void_p).value
    decoy = ctypes.cast(lib.lib_decoy, ctypes.c_void_p).value
    assert not hp.add_handler(os.getpid(), abort_a)  # already probed
    assert not hp.add_handler(os.getpid(), decoy + 4)  # no signature before it
    assert not hp.add_handler(os.getpid(), abort_a + 1)
    assert len(calls) == before and hp.rejected == 2


def test_scan_survives_refusals_and_caps_the_probes(rseq_lib):
    ctypes.CDLL(str(rseq_lib))

    def refuse(path, off):
        raise OSError("refused")

    hp = HandlerProbes(refuse)
    assert hp.scan_process(os.getpid()) == 0 and hp.refused >= 2 and hp.probed == 0
    capped = HandlerProbes(lambda path, off: None, max_probes=1)
    assert capped.scan_process(os.getpid()) == 1 and capped.probed == 1 and capped.refused >= 1


# -- assembly --------------------------------------------------------------

def _records(handlers):
    t = (ThreadStats(100, 100, "w", Counts(aborts=5)), ThreadStats(100, 101, "w", Counts(aborts=2)))
    sites = (SiteRecord(100, 0, 0x1000, 7, abort_ip=0x1040),)
    return MapRecords(Setup(capacities=(("sites", 10),)), 1.0, 1.0, 0.0, threads=t, sites=sites,
                      handlers=handlers)


def test_assembly_user_aborts_are_hits_minus_kernel_aborts_or_none():
    snap = assemble(_records((HandlerRecord(100, 0, 100, 0x1040, 12, 5), HandlerRecord(100, 0, 101, 0x1040, 2, 2),
                              HandlerRecord(100, 0, 101, 0x2040, 3, 0)))).snapshot
    by_tid = {t.tid: t.user_aborts for t in snap.threads}
    assert by_tid == {100: 7, 101: 3}
    assert snap.process(100).user_aborts == 10
    assert snap.sites[0].user_aborts == 7  # its handler only
    assert snap.self_stats.uprobes
    off = assemble(_records(None)).snapshot
    assert off.process(100).user_aborts is None and all(t.user_aborts is None for t in off.threads)
    assert off.sites[0].user_aborts is None and not off.self_stats.uprobes


def test_a_section_with_only_its_own_retries_gets_a_row_when_its_start_is_known():
    handlers = (HandlerRecord(100, 0, 100, 0x1040, 12, 5), HandlerRecord(100, 0, 100, 0x2040, 4, 0))
    starts = {0x2040: 0x2000}
    snap = assemble(_records(handlers), section_of=lambda pid, gen, ip: starts.get(ip)).snapshot
    rows = {s.start_ip: (s.aborts, s.user_aborts, s.abort_ip) for s in snap.sites}
    assert rows == {0x1000: (7, 7, 0x1040), 0x2000: (0, 4, 0x2040)}
    # unknown start: no row (the thread and process still count them)
    snap = assemble(_records(handlers)).snapshot
    assert [s.start_ip for s in snap.sites] == [0x1000] and snap.process(100).user_aborts == 11


def test_scan_knows_each_handlers_section(rseq_lib):
    lib = ctypes.CDLL(str(rseq_lib))
    hp = HandlerProbes(lambda path, off: None)
    hp.scan_process(os.getpid())
    abort_a = ctypes.cast(lib.lib_abort_a, ctypes.c_void_p).value
    abort_b = ctypes.cast(lib.lib_abort_b, ctypes.c_void_p).value
    cs_a = ctypes.cast(lib.lib_cs_a, ctypes.c_void_p).value
    cs_b = ctypes.cast(lib.lib_cs_b, ctypes.c_void_p).value
    assert hp.section_start(os.getpid(), 0, abort_a) == cs_a
    assert hp.section_start(os.getpid(), 0, abort_b) == cs_b
    assert hp.section_start(os.getpid(), 0, abort_a + 1) is None


# -- front ends: null / absent without --uprobes, the numbers with it --------

class Fixed:
    """A snapshot source that always returns the same snapshot."""

    def __init__(self, snap):
        self.snap = snap

    def poll(self):
        return self.snap

    def reap(self):
        return 0


def front_ends(snap, pid: int) -> tuple:
    """(the process's JSON object, the exporter's rseqtop_user_aborts_total
    for it) from one snapshot."""
    from prometheus_client import CollectorRegistry

    from rseqtop.exporter.metrics import RseqCollector
    from rseqtop.present import textout
    from rseqtop.present.rows import LiveModel

    model = LiveModel()
    model.update(snap)
    record = textout.json_record(model, include_idle=True)
    proc = next(p for p in record["processes"] if p["pid"] == pid)
    reg = CollectorRegistry()
    reg.register(RseqCollector(Fixed(snap), labels="pid", identity=None))
    comm = snap.process(pid).comm
    metric = reg.get_sample_value("rseqtop_user_aborts_total",
                                  {"comm": comm, "pod_uid": "", "container_id": "", "pid": str(pid)})
    return record, proc, metric


def test_front_ends_say_not_measured_without_uprobes():
    snap = assemble(_records(None)).snapshot
    record, proc, metric = front_ends(snap, 100)
    assert record["self"]["uprobes"] is False and record["self"]["handlers_probed"] is None
    assert proc["aborts"] == 7 and proc["user_aborts"] is None and proc["all_aborts"] is None
    assert all(t["user_aborts"] is None and t["all_aborts"] is None for t in proc["threads"])
    assert all(s["user_aborts"] is None for s in proc["sections"])
    assert metric is None  # absent, not 0
    from rseqtop.present.columns import USER_ABORTS_COLUMN
    from rseqtop.present.rows import LiveModel

    model = LiveModel()
    model.update(snap)
    assert {USER_ABORTS_COLUMN.fmt(r) for r in model.thread_rows(include_idle=True)} == {"-"}


def test_front_ends_show_user_aborts_with_uprobes():
    snap = assemble(_records((HandlerRecord(100, 0, 100, 0x1040, 12, 5),))).snapshot
    record, proc, metric = front_ends(snap, 100)
    assert record["self"]["uprobes"] is True
    assert (proc["aborts"], proc["user_aborts"], proc["all_aborts"]) == (7, 7, 14)
    assert {t["tid"]: (t["user_aborts"], t["all_aborts"]) for t in proc["threads"]} == {100: (7, 12), 101: (0, 2)}
    assert metric == 7
    from rseqtop.present.columns import USER_ABORTS_COLUMN
    from rseqtop.present.rows import LiveModel

    model = LiveModel()
    model.update(snap)
    assert sorted(USER_ABORTS_COLUMN.fmt(r) for r in model.thread_rows(include_idle=True)) == ["0", "7"]


def test_trace_prints_each_threads_new_user_aborts_once():
    import io
    import json

    from rseqtop.commands.trace import Tracer

    out = io.StringIO()
    tracer = Tracer(None, out, True, set(), None)
    tracer.show_user_aborts(assemble(_records((HandlerRecord(100, 0, 100, 0x1040, 12, 5),))).snapshot)
    tracer.show_user_aborts(assemble(_records((HandlerRecord(100, 0, 100, 0x1040, 15, 5),))).snapshot)
    tracer.show_user_aborts(assemble(_records((HandlerRecord(100, 0, 100, 0x1040, 15, 5),))).snapshot)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["tid"], x["user_aborts"], x["user_aborts_total"]) for x in lines] == [(100, 7, 7), (100, 3, 10)]


def test_doctor_says_whether_uprobes_are_usable():
    from rseqtop.commands.doctor import PASS, WARN, uprobes_check

    assert uprobes_check(True, "x86_64").status == PASS
    off = uprobes_check(False, "x86_64")
    assert off.status == WARN and "CONFIG_UPROBE_EVENTS" in off.fix
    assert uprobes_check(True, "riscv64").status == WARN


# -- the real kernel -------------------------------------------------------

@pytest.fixture(scope="module")
def probed(bpf_ok):
    from rseqtop.collect import Collector

    path = workload.build()
    with Collector(uprobes=True) as c:
        # A process started after rseqtop: its maps are scanned at a poll,
        # which probes the workload binary for every later process too.
        # It runs until then (a loaded machine may be slow to poll).
        proc = workload.start(["--threads", "1", "--duration", "120", "--op", "counter"],
                              stdout=subprocess.DEVNULL)
        try:
            st = os.stat(path)
            deadline = time.monotonic() + 100
            while c.handlers.probed_in((st.st_dev, st.st_ino)) < 5 and time.monotonic() < deadline:
                time.sleep(0.2)
                c.poll()
        finally:
            proc.kill()
            proc.wait(timeout=60)
        assert c.handlers.probed_in((st.st_dev, st.st_ino)) == 5, \
            "the workload's 5 handlers were not probed from a poll's scan"
        yield c


def observe(collector, args):
    summary = workload.run([str(a) for a in args], timeout=120)
    return summary, collector.poll()


NCPU = os.cpu_count() or 1


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["pinned", "migrating"])
def test_kernel_user_and_total_aborts_exact_per_thread_and_site(probed, mode, record_property):
    args = ["--in-cs-delay", 3000, "--op", "delay", "--duration", 1, "--mismatch-to-abort", "--mismatch-every", 50]
    args += ["--threads", 4, "--cpus", 0] if mode == "pinned" else ["--threads", NCPU, "--migrate-rate", 200]
    summary, snap = observe(probed, args)
    pid = summary["pid"]
    assert summary["config"]["mismatch_to_abort"]
    assert summary["totals"]["aborts"] > 0 and summary["totals"]["cpu_mismatch"] > 0, "nothing to compare"
    threads = {t.tid: t for t in snap.threads_of(pid)}
    rows = []
    for tid, rec in summary["threads"].items():
        t = threads[int(tid)]
        rows.append((int(tid), rec["aborts"], t.counts.aborts, rec["cpu_mismatch"], t.user_aborts))
        assert t.counts.aborts == rec["aborts"]
        assert t.user_aborts == rec["cpu_mismatch"]
        assert t.counts.aborts + t.user_aborts == rec["aborts"] + rec["cpu_mismatch"]
    proc = snap.process(pid)
    assert proc.user_aborts == summary["totals"]["cpu_mismatch"]
    for op in summary["ops"].values():
        site = next((s for s in snap.sites_of(pid) if s.start_ip == int(op["start_ip"], 16)), None)
        if site is not None:
            assert site.user_aborts == op["cpu_mismatch"], op["symbol"]
    # the same numbers as rseqtop --json and the exporter show them
    _, jproc, metric = front_ends(snap, pid)
    assert metric == summary["totals"]["cpu_mismatch"]
    workers = [jt for jt in jproc["threads"] if str(jt["tid"]) in summary["threads"]]
    assert len(workers) == len(summary["threads"])
    for jt in workers:
        rec = summary["threads"][str(jt["tid"])]
        assert (jt["aborts"], jt["user_aborts"], jt["all_aborts"]) == \
            (rec["aborts"], rec["cpu_mismatch"], rec["aborts"] + rec["cpu_mismatch"])
    print("tid workload-kernel rseqtop-kernel workload-user rseqtop-user:", rows)
    record_property("figure", f"kernel {proc.counts.aborts}={summary['totals']['aborts']}, user "
                              f"{proc.user_aborts}={summary['totals']['cpu_mismatch']}, {len(rows)} threads")


@pytest.mark.kernel
def test_every_section_with_user_aborts_has_a_row(probed, record_property):
    """All five operations, few kernel aborts (one thread, its own CPU):
    every section whose handler ran for its own retries is listed with the
    workload's exact counts, kernel aborts or not."""
    cpu = NCPU - 1
    # polled while it runs: a section's start comes from the scan of the
    # live process's maps (no kernel abort reports it)
    proc = workload.start(["--threads", 1, "--cpus", cpu, "--duration", 3, "--in-cs-delay", 100,
                           "--mismatch-to-abort", "--mismatch-every", 10])
    try:
        deadline = time.monotonic() + 60
        while not probed.handlers.scanned(proc.pid) and time.monotonic() < deadline:
            probed.poll()
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary, snap = workload.parse_summary(out), probed.poll()
    pid = summary["pid"]
    sites = {s.start_ip: s for s in snap.sites_of(pid)}
    checked = 0
    for op in summary["ops"].values():
        if not op["cpu_mismatch"]:
            continue
        s = sites.get(int(op["start_ip"], 16))
        assert s is not None, op["symbol"]
        assert (s.aborts, s.user_aborts) == (op["aborts"], op["cpu_mismatch"]), op["symbol"]
        assert op["symbol"] in s.symbol
        checked += 1
    assert checked >= 3
    no_kernel = sum(1 for op in summary["ops"].values() if op["cpu_mismatch"] and not op["aborts"])
    record_property("figure", f"{checked} sections exact, {no_kernel} of them without kernel aborts")


@pytest.mark.kernel
def test_mismatches_that_skip_the_handler_are_not_user_aborts(probed, record_property):
    """The control: the same mismatches, but the section exits to its own
    label (the workload's default): the handler never runs for them, so
    rseqtop must count none, while kernel aborts stay exact."""
    summary, snap = observe(probed, ["--threads", 2, "--cpus", 0, "--in-cs-delay", 3000, "--op", "delay",
                                     "--duration", 0.5, "--mismatch-every", 50])
    pid = summary["pid"]
    assert summary["totals"]["cpu_mismatch"] > 0
    for tid, rec in summary["threads"].items():
        t = next(t for t in snap.threads_of(pid) if t.tid == int(tid))
        assert t.counts.aborts == rec["aborts"] and t.user_aborts == 0
    record_property("figure", f"0 user aborts for {summary['totals']['cpu_mismatch']} mismatches off the handler")


@pytest.mark.kernel
def test_a_shared_librarys_handler_runs_are_counted_for_the_thread(probed, rseq_lib, record_property):
    """End to end through a library: this process maps the test library,
    a scan probes its handlers, and each call of one (a handler run that no
    kernel abort caused) is one user-detected abort of this thread."""
    lib = ctypes.CDLL(str(rseq_lib))
    st = os.stat(rseq_lib)
    probed.handlers.scan_process(os.getpid(), 1 << 30)  # a (pid, gen) not scanned before
    assert probed.handlers.probed_in((st.st_dev, st.st_ino)) == 2
    tid = threading_tid()

    def mine(snap):
        return next((t.user_aborts for t in snap.threads if t.tid == tid), None) or 0

    before = mine(probed.poll())
    calls = 1000
    for _ in range(calls):
        lib.lib_abort_a()
    for _ in range(calls // 2):
        lib.lib_abort_b()
    got = mine(probed.poll()) - before
    assert got == calls + calls // 2
    record_property("figure", f"{got}={calls + calls // 2} handler runs of a library")


def threading_tid() -> int:
    import threading

    return threading.get_native_id()
