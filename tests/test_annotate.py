"""`rseqtop annotate` against the bundled workload (built with -g).

Ground truth, independent of what is tested:
- the source lines come from the workload's own C source: each section's
  instructions are the `__asm__ __volatile__ goto(` statement of its
  function in rseq_abi.c, and its abort handler's jump lands on the
  `t_stats.aborts[OP_X]++` line; binutils' addr2line must agree;
- the instructions' addresses are objdump's;
- the descriptors (start_ip, post_commit_offset, abort_ip) are read from
  the binary's __rseq_cs section with objdump, and at run time from the
  workload's JSON summary;
- the interrupted counts are compared with the collector's per-offset
  counts and, in total, with the workload's own abort count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from support import (
    addr2line,
    descriptor,
    file_offset,
    listing_of,
    objdump_addresses,
    source_lines,
    workload_binary,
)

from rseqtop import workload
from rseqtop.present import annotate as present
from rseqtop.symbols.annotate import AnnotateError, Annotator, annotate_fd

SIG = 0x53053053


needs_binutils = pytest.mark.skipif(not shutil.which("objdump") or not shutil.which("addr2line"),
                                    reason="binutils (objdump, addr2line) is needed as the reference")


# -- the listing of each section, no root needed ---------------------------------
def test_workload_build_key_covers_the_flags(monkeypatch):
    with_g = workload.binary_path()
    monkeypatch.setattr(workload, "CFLAGS", [f for f in workload.CFLAGS if f != "-g"])
    assert workload.binary_path() != with_g
    monkeypatch.undo()
    assert "-g" in workload.cflags() and workload.binary_path() == with_g


@needs_binutils
@pytest.mark.parametrize("op", workload.OPERATIONS)
def test_each_section_shows_its_source_lines(op):
    binary = workload_binary()
    asm_line, counter_line = source_lines(op)
    start, length, abort = descriptor(binary, op)
    listing = listing_of(binary, op)
    assert listing.debug_file == str(binary)  # -g: the binary's own line table
    assert listing.start_vaddr == start
    addrs = [i.vaddr for i in listing.section]
    assert addrs == objdump_addresses(binary, start, start + length)
    assert sum(i.size for i in listing.section) == length
    assert {i.source for i in listing.section} == {f"rseq_abi.c:{asm_line}"}
    assert [i.source for i in listing.section] == addr2line(binary, addrs)
    # the abort handler: RSEQ_SIG before abort_ip, a jump, then the C code that counts the abort
    assert listing.signature == SIG
    assert listing.abort[0].vaddr == abort and listing.abort[-1].mnemonic == "jmp"
    assert listing.handler[0].source == f"rseq_abi.c:{counter_line}"
    assert listing.handler[0].vaddr == int(listing.abort[-1].op_str, 16)
    assert [i.source for i in listing.handler] == addr2line(binary, [i.vaddr for i in listing.handler])


@needs_binutils
def test_separate_debug_file_found_by_build_id(tmp_path):
    """A stripped copy finds its lines in DIR/.build-id/xx/yyyy.debug."""
    binary = workload_binary()
    stripped, debug = tmp_path / "stripped", tmp_path / "full.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
    subprocess.run(["objcopy", "--strip-debug", str(binary), str(stripped)], check=True)
    note = subprocess.run(["readelf", "-n", str(binary)], capture_output=True, text=True, check=True).stdout
    build_id = re.search(r"Build ID: ([0-9a-f]+)", note).group(1)
    dbg_dir = tmp_path / "debug"
    (dbg_dir / ".build-id" / build_id[:2]).mkdir(parents=True)
    shutil.copy(debug, dbg_dir / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug")
    start, length, abort = descriptor(binary, "delay")
    asm_line, _ = source_lines("delay")
    fd = os.open(stripped, os.O_RDONLY)
    try:
        none = annotate_fd(fd, file_offset(binary, start), length, None, str(stripped), debug_dirs=())
        found = annotate_fd(fd, file_offset(binary, start), length, None, str(stripped), debug_dirs=(str(dbg_dir),))
    finally:
        os.close(fd)
    assert none.debug_file is None and "no separate debug file" in none.debug_note
    assert {i.source for i in none.section} == {"?"}
    assert found.debug_file.endswith(f"{build_id[2:]}.debug")
    assert {i.source for i in found.section} == {f"rseq_abi.c:{asm_line}"}


@needs_binutils
def test_separate_debug_file_found_by_debuglink(tmp_path):
    binary = workload_binary()
    stripped, debug = tmp_path / "app", tmp_path / "app.dbg"
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
    subprocess.run(["objcopy", "--strip-debug", "--remove-section=.note.gnu.build-id",
                    f"--add-gnu-debuglink={debug}", str(binary), str(stripped)], check=True)
    start, length, _ = descriptor(binary, "delay")
    fd = os.open(stripped, os.O_RDONLY)
    try:
        found = annotate_fd(fd, file_offset(binary, start), length, None, str(stripped), debug_dirs=())
    finally:
        os.close(fd)
    assert found.debug_file == str(debug)
    assert {i.source for i in found.section} == {f"rseq_abi.c:{source_lines('delay')[0]}"}


def test_malformed_binary_is_one_line_error(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x7fELF" + os.urandom(200))
    fd = os.open(bad, os.O_RDONLY)
    try:
        with pytest.raises(AnnotateError) as err:
            annotate_fd(fd, 0x40, 16, None, str(bad))
    finally:
        os.close(fd)
    assert "\n" not in str(err.value) and str(err.value)


def test_annotator_of_a_missing_process_is_one_line_error():
    with pytest.raises(AnnotateError, match="not in a file mapped by process"):
        Annotator()(2 ** 22 + 12345, 0x401000, 16, 0x402000)


# -- the same view from recorded counts ----------------------------------------
def _site(start, length, abort, offsets, aborts=None):
    from rseqtop.model.snapshot import SiteStats, pairs

    total = sum(offsets.values()) if aborts is None else aborts
    return SiteStats(4242, start, "rseq-workload!rseq_op_delay+0x14", total, pairs({"preempt": total}), abort,
                     length, pairs(offsets))


def test_rows_count_each_instruction_and_flag_the_rest():
    binary = workload_binary()
    start, length, abort = descriptor(binary, "delay")
    listing = listing_of(binary, "delay")
    starts = [i.vaddr - start for i in listing.section]
    offsets = {starts[-4]: 91, starts[-2]: 7, starts[1] + 1: 2}  # the last one is inside an instruction
    a = present.Annotated(_site(start, length, abort, offsets, aborts=105), listing)
    rows = {r.offset: (r.interrupted, r.share) for r in a.rows()}
    assert rows[starts[-4]] == (91, 100.0 * 91 / 105) and rows[starts[-2]] == (7, 100.0 * 7 / 105)
    assert sum(r.interrupted for r in a.rows()) == 98
    assert a.stray_offsets() == ((starts[1] + 1, 2),)
    assert a.unattributed() == 5
    text = present.text(a)
    assert "interrupted at no instruction start" in text and "offsets map full): 5" in text
    rec = present.json_record(a)
    assert [i["interrupted"] for i in rec["instructions"]] == [r.interrupted for r in a.rows()]
    assert rec["instructions"][0]["line"] == source_lines("delay")[0]


def test_section_names_and_addresses_select_sites():
    from rseqtop.commands.annotate import match_sites

    a = _site(0x1000, 16, 0x2000, {0: 5})
    b = _site(0x3000, 16, 0x4000, {0: 9})
    b = type(b)(**{**b.__dict__, "symbol": "libx.so!other_fn+0x8"})
    assert match_sites([a, b], "0x1000") == [a]
    assert match_sites([a, b], str(0x3000)) == [b]
    assert match_sites([a, b], "rseq_op_delay") == [a]
    assert match_sites([a, b], "libx.so!other_fn") == [b]
    assert match_sites([a, b], "libx.so!other_fn+0x8") == [b]
    assert match_sites([a, b], "nothing") == []


# -- against the kernel --------------------------------------------------------
# Host only: under QEMU TCG the bounded disassembly worker outruns its own
# CPU limit (killed on 6.1), and `rseqtop annotate` compiles the BPF programs
# again (146 s); the kernel's part, the interrupted offsets, is checked on
# every kernel by support.assert_exact (they sum to each section's aborts).
@pytest.mark.bpf
def test_interrupted_counts_equal_the_snapshot_and_the_workload(bpf_ok):
    """Stopped with SIGSTOP while the collector counts: the annotation of
    the live process matches the snapshot per offset; after the run, the
    per-instruction counts add up to the workload's own abort count."""
    from rseqtop.collect import Collector
    from rseqtop.commands.annotate import show

    binary = workload_binary()
    ncpu = os.cpu_count() or 1
    with Collector(threads="none") as collector:
        proc = workload.start(["--op", "delay", "--threads", 2 * ncpu, "--in-cs-delay", 3000, "--duration", 30])
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                time.sleep(0.5)
                sites = collector.poll().sites_of(proc.pid)
                if sites and sites[0].aborts >= 20:
                    break
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(0.2)
            snap = collector.poll()
            [site] = snap.sites_of(proc.pid)
            out = _Out()
            assert show(proc.pid, "rseq-workload", snap.sites_of(proc.pid), "rseq_op_delay", True, 1.0,
                        out=out) == 0
            [rec] = json.loads(out.text)["sections"]
            assert rec["error"] is None, rec["error"]
            assert rec["start_ip"] == site.start_ip and rec["abort_ip"] == site.abort_ip
            by_offset = {i["offset"]: i["interrupted"] for i in rec["instructions"]}
            for off, n in site.offsets:
                assert by_offset.get(off) == n, (off, n)  # every interrupted IP is an instruction start
            assert sum(by_offset.values()) == site.aborts
            assert {f"{i['file']}:{i['line']}" for i in rec["instructions"]} == \
                {f"rseq_abi.c:{source_lines('delay')[0]}"}
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=60)
        summary = workload.parse_summary(stdout)
        op = summary["ops"]["delay"]
        [final] = collector.poll().sites_of(proc.pid)
    assert final.start_ip == int(op["start_ip"], 16) and final.abort_ip == int(op["abort_ip"], 16)
    listing = listing_of(binary, "delay")
    rows = present.Annotated(final, listing).rows()
    assert sum(r.interrupted for r in rows) == final.aborts == op["aborts"] > 0
    assert present.Annotated(final, listing).stray_offsets() == ()


class _Out:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


# Host only: under QEMU TCG the bounded disassembly worker outruns its own
# CPU limit (killed on 6.1), and `rseqtop annotate` compiles the BPF programs
# again (146 s); the kernel's part, the interrupted offsets, is checked on
# every kernel by support.assert_exact (they sum to each section's aborts).
@pytest.mark.bpf
def test_cli_annotates_the_delay_section(bpf_ok):
    proc = workload.start(["--op", "delay", "--threads", 2 * (os.cpu_count() or 1), "--in-cs-delay", 3000,
                           "--duration", 120])
    try:
        time.sleep(0.5)
        cli = [sys.executable, "-m", "rseqtop", "annotate", "-p", str(proc.pid)]
        text = subprocess.run(cli + ["-D", "2"], capture_output=True, text=True, timeout=120)
        js = subprocess.run(cli + ["rseq_op_delay", "-D", "2", "--json"], capture_output=True, text=True,
                            timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    op = workload.parse_summary(stdout)["ops"]["delay"]
    asm_line, counter_line = source_lines("delay")
    assert text.returncode == 0, text.stderr
    assert f"rseq-workload!rseq_op_delay+0x{int(op['start_ip'], 16) - int(op['function'], 16):x}" in text.stdout
    assert f"rseq_abi.c:{asm_line}" in text.stdout and f"rseq_abi.c:{counter_line}" in text.stdout
    assert js.returncode == 0, js.stderr
    [rec] = json.loads(js.stdout)["sections"]
    assert rec["start_ip"] == int(op["start_ip"], 16) and rec["abort_ip"] == int(op["abort_ip"], 16)
    assert rec["post_commit_ip"] - rec["start_ip"] == op["post_commit_offset"]
    assert sum(i["interrupted"] for i in rec["instructions"]) + rec["aborts_without_offset"] == rec["aborts"] > 0
    assert rec["abort_handler"]["signature"] == SIG


def test_unknown_section_or_no_aborts_is_one_line_error():
    from rseqtop.commands.annotate import show
    from rseqtop.errors import UserError

    site = _site(0x1000, 16, 0x2000, {0: 5})
    with pytest.raises(UserError, match="no aborts of a section named no_such_section .*rseq_op_delay") as err:
        show(4242, "x", [site], "no_such_section", False, 1.0, annotator=lambda *a: None)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no rseq aborts in pid 4242"):
        show(4242, "x", [], None, True, 1.0, annotator=lambda *a: None)


def test_a_section_that_cannot_be_read_still_shows_its_counts():
    from rseqtop.commands.annotate import show

    def broken(*args):
        raise AnnotateError("malformed binary (ELFError: bad magic)")

    site = _site(0x1000, 16, 0x2000, {0: 5, 4: 2})
    out = _Out()
    assert show(4242, "x", [site], None, True, 1.0, annotator=broken, out=out) == 0
    [rec] = json.loads(out.text)["sections"]
    assert rec["error"] == "malformed binary (ELFError: bad magic)" and rec["aborts"] == 7
    out = _Out()
    show(4242, "x", [site], "0x1000", False, 1.0, annotator=broken, out=out)
    assert "cannot annotate: malformed binary" in out.text and "aborts 7" in out.text


def test_cli_usage_errors(rseqtop_cmd):
    no_pid = subprocess.run(rseqtop_cmd + ["annotate"], capture_output=True, text=True, timeout=60)
    assert no_pid.returncode == 2 and "Traceback" not in no_pid.stderr
    gone = subprocess.run(rseqtop_cmd + ["annotate", "-p", str(2 ** 22 + 54321)], capture_output=True, text=True,
                          timeout=60)
    assert gone.returncode == 2 and "no process with pid" in gone.stderr and "Traceback" not in gone.stderr
