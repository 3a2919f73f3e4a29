"""rseqtop on kernels unlike this one: missing tracepoints, no csd events,
the older rseq_update format. Simulated with saved tracefs trees."""

import json
import shutil
from pathlib import Path

import pytest

from rseqtop import workload
from rseqtop.collect import Collector
from rseqtop.errors import UserError
from rseqtop.model.synthetic import SyntheticSource
from rseqtop.present import textout
from support import model_of

DATA = Path(__file__).parent / "data"


def test_unavailable_cause_is_shown_as_unavailable_not_zero():
    m = model_of(SyntheticSource(3, 2, unavailable_causes=("membarrier",)))
    text = textout.batch_text(m)
    assert "membarrier/s n/a" in text
    header, first = text.splitlines()[1:3]
    col = header.index("MEMBAR/s")
    assert "n/a" in first[col - 2:col + 10]
    doc = json.loads(textout.json_line(m))
    assert doc["self"]["unavailable_causes"] == ["membarrier"]
    assert doc["system"]["rates"]["membarrier_ipis"] is None
    assert all(p["rates"]["membarrier_ipis"] is None and p["totals"]["membarrier_ipis"] is None
               for p in doc["processes"])
    assert doc["processes"][0]["rates"]["signals"] is not None


def test_old_kernel_without_csd_loads_and_says_what_is_missing(bpf_ok):
    workload.build()
    with Collector(tracefs_root=DATA / "tracefs-5.15") as c:
        assert "csd:csd_function_entry" not in c.probes
        summary = workload.run(["--threads", "1", "--membarrier-rate", "500", "--in-cs-delay", "3000",
                                "--op", "delay", "--duration", "0.5"])
        snap = c.poll()
    assert snap.self_stats.unavailable_causes == ("membarrier",)
    assert any("membarrier cause unavailable" in m for m in snap.self_stats.probes_missing)
    proc = snap.process(summary["pid"])
    # still exact, and no abort is blamed on a cause it could not see
    assert proc.counts.aborts == summary["totals"]["aborts"]
    assert not any("membarrier" in name for name, _ in proc.counts.causes)
    # the old rseq_update format has no mm_cid: reported as unknown (-1)
    assert all(t.mm_cid == -1 for t in snap.threads_of(summary["pid"]))


def test_missing_rseq_tracepoint_is_a_one_line_error(tmp_path, bpf_ok):
    tree = tmp_path / "tracefs"
    shutil.copytree(DATA / "tracefs-6.18", tree)
    shutil.rmtree(tree / "events/rseq/rseq_ip_fixup")
    with pytest.raises(UserError) as err:
        Collector(tracefs_root=tree).attach()
    assert "rseq:rseq_ip_fixup" in str(err.value) and "doctor" in str(err.value)
    assert "\n" not in str(err.value)


def test_exporter_leaves_unavailable_cause_absent_not_zero():
    from prometheus_client import CollectorRegistry, generate_latest

    from rseqtop.exporter.metrics import RseqCollector

    reg = CollectorRegistry()
    reg.register(RseqCollector(SyntheticSource(3, 2, unavailable_causes=("membarrier",)), identity=None))
    text = generate_latest(reg).decode()
    assert not any(line.startswith("rseqtop_membarrier_ipis_total{") for line in text.splitlines())
    assert 'rseqtop_cause_available{cause="membarrier"} 0.0' in text
    assert 'rseqtop_cause_available{cause="signal"} 1.0' in text
    assert any(line.startswith("rseqtop_signals_total{") for line in text.splitlines())


def test_cpu_to_node_map_from_sysfs(tmp_path):
    from rseqtop.kernel import facts as kernel

    (tmp_path / "node0").mkdir()
    (tmp_path / "node0/cpulist").write_text("0-3,8\n")
    (tmp_path / "node1").mkdir()
    (tmp_path / "node1/cpulist").write_text("4-7,9-10\n")
    (tmp_path / "node2").mkdir()
    (tmp_path / "node2/cpulist").write_text("\n")  # a memory-only node
    (tmp_path / "possible").write_text("0-1\n")  # not a node directory
    nodes = kernel.cpu_nodes(tmp_path)
    assert nodes == {0: 0, 1: 0, 2: 0, 3: 0, 8: 0, 4: 1, 5: 1, 6: 1, 7: 1, 9: 1, 10: 1}
    assert kernel.cpu_nodes(tmp_path / "absent") == {}


def test_task_storage_refused_on_an_unknown_architecture(monkeypatch):
    """Reading task storage needs bpf(2)'s number: an architecture rseqtop
    does not know keeps its per-thread state in the hash, never calls
    another architecture's syscall number."""
    from rseqtop.kernel import taskstorage

    monkeypatch.setattr(taskstorage, "SYS_BPF", None)
    assert taskstorage.thread_pidfds_supported() is False
    from rseqtop.kernel import linux

    assert linux.syscall_number("bpf", "x86_64") == 321 and linux.syscall_number("bpf", "s390x") is None


def test_one_libc_handle_and_one_status_parser():
    """Platform glue lives in rseqtop.kernel.linux: no other module opens libc or
    parses /proc/*/status on its own."""
    import re
    from pathlib import Path

    from rseqtop.kernel import linux

    root = Path(linux.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "linux.py":
            continue
        text = path.read_text()
        assert not re.search(r"CDLL\((None|ctypes\.util)", text.replace("ctypes.CDLL(None), '__rseq_size'", "")), path
        assert not re.search(r"\^CapEff", text), path
    st = linux.proc_status(text="CapEff:\t0000000000200000\nUid:\t0 0 0 0\nNoNewPrivs:\t1\n")
    assert st["CapEff"] == 1 << linux.CAP_SYS_ADMIN and st["Uid"] == (0, 0, 0, 0) and st["NoNewPrivs"] == 1
