import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rseqtop import doctor, kheaders
from rseqtop.doctor import FAIL, PASS, WARN, Facts, LoadResult

ALL_CAPS = (1 << 41) - 1
ALL_TPS = {f"{s}:{e}": True for s, e, _, _ in doctor.TRACEPOINTS}


def healthy(**over) -> Facts:
    f = Facts(release="6.18.44", euid=0, caps=ALL_CAPS, bcc_version="0.26.0", libbcc="/usr/lib/libbcc.so.0",
              headers=kheaders.HeaderSource("generic", Path("/c/kheaders/x"), "generic headers linux-headers-6.1.0-56-amd64"),
              tracefs_root="/sys/kernel/tracing", tracepoints=dict(ALL_TPS),
              update_fields=("cpu_id", "node_id", "mm_cid"), glibc_rseq_size=32, membarrier_mask=0x3FF,
              hot_storage=True, load=LoadResult(True, 0.3, 1))
    for k, v in over.items():
        setattr(f, k, v)
    return f


def by_name(checks):
    return {c.name: c for c in checks}


def test_healthy_machine_passes_everything():
    checks = doctor.evaluate(healthy())
    assert all(c.status == PASS for c in checks), [c for c in checks if c.status != PASS]
    names = by_name(checks)
    assert "generic headers" in names["kernel headers"].detail
    assert "0.30 s" in names["bpf load"].detail


def test_per_thread_state_without_task_storage_is_a_warning_with_a_fix():
    c = by_name(doctor.evaluate(healthy(hot_storage=False)))["per-thread state"]
    assert c.status == WARN and "6.9" in c.fix and "hash" in c.detail
    assert by_name(doctor.evaluate(healthy()))["per-thread state"].status == PASS


def test_every_tracepoint_is_checked():
    names = by_name(doctor.evaluate(healthy()))
    for tp in ("rseq:rseq_ip_fixup", "rseq:rseq_update", "sched:sched_switch", "sched:sched_migrate_task",
               "sched:sched_process_exit", "signal:signal_deliver", "csd:csd_function_entry",
               "syscalls:sys_enter_rseq", "syscalls:sys_exit_rseq", "syscalls:sys_enter_membarrier",
               "syscalls:sys_exit_membarrier"):
        assert f"tracepoint {tp}" in names


def test_unprivileged_fails_naming_capabilities():
    c = by_name(doctor.evaluate(healthy(euid=1000, caps=0, load=None)))["privileges"]
    assert c.status == FAIL and "CAP_BPF" in c.detail and "CAP_PERFMON" in c.detail and c.fix


def test_cap_bpf_and_perfmon_suffice():
    caps = (1 << 39) | (1 << 38)
    assert by_name(doctor.evaluate(healthy(euid=1000, caps=caps)))["privileges"].status == PASS


def test_missing_required_tracepoint_fails_optional_warns():
    tps = dict(ALL_TPS, **{"rseq:rseq_ip_fixup": False, "csd:csd_function_entry": False})
    names = by_name(doctor.evaluate(healthy(tracepoints=tps)))
    assert names["tracepoint rseq:rseq_ip_fixup"].status == FAIL
    assert names["tracepoint csd:csd_function_entry"].status == WARN
    assert "membarrier" in names["tracepoint csd:csd_function_entry"].detail


def test_headers_and_bcc_missing_fail_with_fixes():
    names = by_name(doctor.evaluate(healthy(headers=kheaders.HeaderSource("missing", None, "none"),
                                            bcc_version=None, bcc_error="bcc is not importable")))
    assert names["kernel headers"].status == FAIL and "linux-headers" in names["kernel headers"].fix
    assert names["bcc"].status == FAIL and "python3-bpfcc" in names["bcc"].fix


@pytest.mark.parametrize("release,era", [("6.1.0", "up to 6.18"), ("6.18.44", "up to 6.18"),
                                         ("6.19.1", "6.19+ rewrite"), ("7.2.0", "7.x")])
def test_era_by_version(release, era):
    assert era in by_name(doctor.evaluate(healthy(release=release)))["rseq era"].detail


def test_glibc_tunable_disabling_rseq_warns():
    c = by_name(doctor.evaluate(healthy(glibc_rseq_size=0, glibc_tunables="glibc.pthread.rseq=0")))["glibc rseq"]
    assert c.status == WARN and "GLIBC_TUNABLES" in c.detail and "rseq=0" in c.fix


def test_membarrier_without_rseq_commands_warns():
    c = by_name(doctor.evaluate(healthy(membarrier_mask=0x1F)))["membarrier"]
    assert c.status == WARN and "PRIVATE_EXPEDITED_RSEQ" in c.detail


def test_failed_load_fails():
    c = by_name(doctor.evaluate(healthy(load=LoadResult(False, error="compile failed"))))["bpf load"]
    assert c.status == FAIL and "compile failed" in c.detail


def test_real_doctor_passes_here(bpf_ok, rseqtop_cmd):
    out = subprocess.run(rseqtop_cmd + ["doctor", "--json"], capture_output=True, text=True, timeout=120)
    doc = json.loads(out.stdout)
    bad = [c for c in doc["checks"] if c["status"] != PASS]
    assert out.returncode == 0 and doc["ok"], bad
    assert doc["bpf_load_seconds"] > 0
    headers = next(c for c in doc["checks"] if c["name"] == "kernel headers")
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        assert "generic headers" in headers["detail"]


def test_non_root_doctor_fails_in_one_line_without_traceback(bpf_ok, tmp_path):
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is needed to run as an unprivileged user")
    env = dict(os.environ, HOME=str(tmp_path), RSEQTOP_CACHE_DIR=str(tmp_path / "cache"))
    tmp_path.chmod(0o777)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                          sys.executable, "-m", "rseqtop", "doctor"],
                         capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    err_lines = out.stderr.strip().splitlines()
    assert len(err_lines) == 1 and "CAP_BPF" in err_lines[0]
    priv = [l for l in out.stdout.splitlines() if "privileges" in l]
    assert priv and priv[0].startswith(FAIL) and "CAP_PERFMON" in priv[0]
