import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rseqtop.commands import doctor
from rseqtop.commands.doctor import FAIL, PASS, WARN, CanaryResult, Facts, LoadResult
from rseqtop.kernel import kheaders

ALL_CAPS = (1 << 41) - 1
ALL_TPS = {f"{s}:{e}": True for s, e, _, _ in doctor.TRACEPOINTS}


def healthy(**over) -> Facts:
    f = Facts(release="6.18.44", euid=0, caps=ALL_CAPS, bcc_version="0.26.0", libbcc="/usr/lib/libbcc.so.0",
              headers=kheaders.HeaderSource("generic", Path("/c/kheaders/x"), "generic headers linux-headers-6.1.0-56-amd64"),
              tracefs_root="/sys/kernel/tracing", tracepoints=dict(ALL_TPS),
              update_fields=("cpu_id", "node_id", "mm_cid"), glibc_rseq_size=32, membarrier_mask=0x3FF,
              hot_storage=True, load=LoadResult(True, 0.3, 1), canary=CanaryResult(True, 120, 120, 0),
              machine="x86_64")
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


def test_canary_passes_on_a_correct_kernel():
    names = by_name(doctor.evaluate(healthy()))
    assert names["kernel aborts"].status == PASS and "120 aborts" in names["kernel aborts"].detail
    assert names["cpu_id_start"].status == PASS


def test_canary_stale_cpu_id_start_fails_naming_the_fix():
    c = by_name(doctor.evaluate(healthy(release="7.0.5", canary=CanaryResult(True, 50, 50, 48))))["cpu_id_start"]
    assert c.status == FAIL and "48 of 50" in c.detail and "7.0.5" in c.detail
    assert "7.0.10" in c.fix and "tcmalloc" in c.fix


def test_canary_lost_aborts_fail():
    names = by_name(doctor.evaluate(healthy(release="7.0.3", machine="aarch64",
                                            canary=CanaryResult(True, 50, 31, 0))))
    c = names["kernel aborts"]
    assert c.status == FAIL and "reported 31" in c.detail and "arm64/entry" in c.fix
    c = by_name(doctor.evaluate(healthy(canary=CanaryResult(True, 0, 0, 0))))["kernel aborts"]
    assert c.status == FAIL and "aborted no section" in c.detail


@pytest.mark.parametrize("release,machine,windows", [
    ("7.0.5", "x86_64", ["cpu_id_start"]), ("7.0.12", "x86_64", []), ("7.0.12", "aarch64", ["arm64"]),
    ("6.19.3", "aarch64", ["cpu_id_start", "arm64"]), ("6.18.44", "aarch64", []), ("7.2.1", "aarch64", [])])
def test_known_broken_windows_named_when_the_canary_cannot_run(release, machine, windows):
    checks = doctor.evaluate(healthy(release=release, machine=machine, load=None, canary=None))
    c = by_name(checks)["kernel canary"]
    if windows:
        assert c.status == WARN and all(w in c.detail for w in windows), c
    else:
        assert c.status == doctor.SKIP and "known-broken" not in c.detail


@pytest.mark.kernel
def test_real_doctor_passes_here(bpf_ok, rseqtop_cmd, record_property):
    out = subprocess.run(rseqtop_cmd + ["doctor", "--json"], capture_output=True, text=True, timeout=300)
    doc = json.loads(out.stdout)
    bad = [c for c in doc["checks"] if c["status"] not in (PASS, WARN)]
    assert out.returncode == 0 and doc["ok"], bad
    assert doc["bpf_load_seconds"] > 0
    names = {c["name"]: c for c in doc["checks"]}
    # the canary ran and passed: real aborts, one fixup each, cpu_id_start rewritten
    assert names["kernel aborts"]["status"] == PASS and names["cpu_id_start"]["status"] == PASS, names
    record_property("figure", names["kernel aborts"]["detail"].split(" of the")[0])
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


@pytest.mark.parametrize("release,legacy,v2", [
    ("6.1.0-50-amd64", False, False), ("6.18.44", False, False), ("6.19.2", True, True), ("7.0.9", True, True),
    ("7.0.10", False, True), ("7.1.0", False, True), ("7.2.13+deb14-amd64", False, True)])
def test_which_kernels_write_ids_lazily(release, legacy, v2):
    from rseqtop.kernel import facts as kernel

    assert kernel.ids_written_lazily(release, "legacy") == legacy
    assert kernel.ids_written_lazily(release, "v2") == v2
