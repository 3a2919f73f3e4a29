"""Tests of the bundled rseq workload (real builds and real, short runs).

No tight timing assertions: the inducer tests only ask that aborts happen at
all, and the quiet baseline and the idle threads' wake-ups use loose bounds.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rseqtop import paths, workload
from rseqtop.errors import UserError
from rseqtop.kernel import facts as kernel

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
    reason="the rseq workload is x86-64 Linux only",
)

OPS = ["counter", "spinlock", "push", "pop", "delay"]
OPTIONS = [
    "--threads", "--cpus", "--op", "--duration", "--ops", "--in-cs-delay", "--yield",
    "--signal-rate", "--migrate-rate", "--membarrier-rate", "--membarrier-unregistered",
    "--name", "--json-out", "--help", "--churn-threads", "--churn-processes", "--churn-ops",
    "--churn-rate", "--rseq-abi", "--check-cpu-id-start", "--idle-threads", "--idle-period",
    "--signal-burst", "--signal-burst-gap", "--signal-bursts", "--storm-k", "--storm-t-us", "--antagonist",
    "--antagonist-rate", "--antagonist-spin", "--antagonist-threads",
]
NO_GLIBC_RSEQ = {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
CANARY = ("cpu_id_start_rewritten", "cpu_id_start_stale", "cpu_id_start_wrong")


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One cache (one build) for the whole module, never the system cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSEQTOP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        workload.build()
        yield


def env_with(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------
# A small schema checker for the documented summary (docs/workload.md).

INT, FLOAT, STR, BOOL = "int", "float", "str", "bool"
HEX = re.compile(r"^0x[0-9a-f]+$")
COUNTS = {"commits": INT, "aborts": INT, "cpu_mismatch": INT}
SCHEMA = {
    "schema_version": INT,
    "pid": INT,
    "comm": STR,
    "registration": {"mode": STR, "rseq_size": INT, "abi": STR, "rseq_len": INT,
                     "feature_size": INT, "align": INT, "own_registrations": INT,
                     "own_unregistrations": INT},
    "config": {"threads": INT, "ops": [STR], "in_cs_delay": INT, "yield": BOOL,
               "membarrier_unregistered": BOOL, "rseq_abi": STR, "check_cpu_id_start": BOOL,
               "idle_threads": INT},
    "threads": {"*": {"tid": INT, "index": INT, "commits": INT, "aborts": INT, "cpu_mismatch": INT,
                      "signals": INT, "nivcsw": INT, "nvcsw": INT, "idle": BOOL,
                      "ops": {"*": COUNTS}}},
    "ops": {"*": {"symbol": STR, "start_ip": "hex", "abort_ip": "hex",
                  "post_commit_offset": INT, **COUNTS}},
    "totals": {"commits": INT, "aborts": INT, "cpu_mismatch": INT, "signals": INT},
    "membarrier": {"registered": BOOL, "calls": INT, "ok": INT, "errors": {"*": INT}},
    "signals_sent": INT,
    "migrations_requested": INT,
    "rusage": {"max_rss_kib": INT, "user_s": FLOAT, "system_s": FLOAT, "run_s": FLOAT,
               "run_user_s": FLOAT, "run_system_s": FLOAT, "run_end_rss_kib": INT},
    "duration_s": FLOAT,
    "ops_per_second": FLOAT,
    "ops_per_second_per_thread": FLOAT,
    "self_check": {"ok": BOOL, "problems": [STR]},
}


def check_schema(value, spec, where="summary"):
    if isinstance(spec, dict):
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        if "*" in spec:
            for key, item in value.items():
                assert isinstance(key, str)
                check_schema(item, spec["*"], f"{where}.{key}")
        for key, sub in spec.items():
            if key == "*":
                continue
            assert key in value, f"{where}: missing {key!r}"
            check_schema(value[key], sub, f"{where}.{key}")
    elif isinstance(spec, list):
        assert isinstance(value, list), f"{where}: expected an array, got {value!r}"
        for i, item in enumerate(value):
            check_schema(item, spec[0], f"{where}[{i}]")
    elif spec == INT:
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, \
            f"{where}: expected a non-negative integer, got {value!r}"
    elif spec == FLOAT:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), \
            f"{where}: expected a number, got {value!r}"
    elif spec == STR:
        assert isinstance(value, str), f"{where}: expected a string, got {value!r}"
    elif spec == BOOL:
        assert isinstance(value, bool), f"{where}: expected a boolean, got {value!r}"
    elif spec == "hex":
        assert isinstance(value, str) and HEX.match(value), f"{where}: bad hex {value!r}"
    else:  # pragma: no cover - a mistake in SCHEMA
        raise AssertionError(f"unknown spec {spec!r}")


def _with_churn(t: dict) -> list[dict]:
    """A thread record and, with --churn-*, the counts of its churn threads."""
    return [t, t["churn"]] if "churn" in t else [t]


def check_consistent(s: dict) -> None:
    """Per-thread numbers add up to the per-op and total numbers."""
    check_schema(s, SCHEMA)
    assert s["schema_version"] == 1
    tids = [t["tid"] for t in s["threads"].values()]
    n_workers, n_idle = s["config"]["threads"], s["config"]["idle_threads"]
    assert len(set(tids)) == len(tids) == n_workers + n_idle
    assert all(str(t["tid"]) == key for key, t in s["threads"].items())
    # workers first (index 0..threads-1), then the idle threads
    assert [t["index"] for t in s["threads"].values()] == list(range(n_workers + n_idle))
    assert [t["idle"] for t in s["threads"].values()] == [False] * n_workers + [True] * n_idle
    churn = s["config"]["churn"]
    assert all(("churn" in t) == (bool(churn) and not t["idle"]) for t in s["threads"].values())
    parts = [p for t in s["threads"].values() for p in _with_churn(t)]
    reg = s["registration"]
    assert reg["abi"] == ("v2" if reg["rseq_len"] > 32 else "legacy")
    if reg["mode"] == "glibc":
        assert reg["rseq_len"] == max(reg["rseq_size"], 32)
    # the tcmalloc canary: present exactly with --check-cpu-id-start, and
    # every kernel abort is classified exactly once
    canary = s["config"]["check_cpu_id_start"]
    records = parts + [s["totals"]] + list(s["ops"].values()) + \
        [o for p in parts for o in p["ops"].values()]
    for r in records:
        if canary:
            assert sum(r[f] for f in CANARY) == r["aborts"], r
        else:
            assert not set(CANARY) & set(r), r
    if canary:
        for field in CANARY:
            assert s["totals"][field] == sum(p[field] for p in parts)
            assert s["totals"][field] == sum(o[field] for o in s["ops"].values())
    for field in ("commits", "aborts", "cpu_mismatch", "cmp_fail"):
        assert s["totals"][field] == sum(p[field] for p in parts)
        assert s["totals"][field] == sum(o[field] for o in s["ops"].values())
        for op, o in s["ops"].items():
            assert o[field] == sum(p["ops"].get(op, {}).get(field, 0) for p in parts)
        for p in parts:
            assert p[field] == sum(o[field] for o in p["ops"].values())
    assert s["totals"]["signals"] == sum(p["signals"] for p in parts)
    if churn:
        assert s["churn"]["mode"] == churn
        assert s["churn"]["created"] == sum(t["churn"]["created"] for t in s["threads"].values()
                                            if not t["idle"])
        assert s["churn"]["ops_per_thread"] == s["config"]["churn_ops"]
        # churn slots run no sections themselves
        assert all(t["commits"] == t["aborts"] == 0 for t in s["threads"].values() if not t["idle"])
    else:
        assert s["churn"] is None
    if churn == "processes":
        kids, ct = s["children"], s["children_totals"]
        assert ct["pids"] == len(kids)
        assert ct["processes"] == sum(c["processes"] for c in kids.values()) == s["churn"]["created"]
        for field in ("commits", "aborts", "cpu_mismatch", "cmp_fail"):
            assert ct[field] == sum(c[field] for c in kids.values())
            assert ct[field] == s["totals"][field]  # the parent ran no sections
    else:
        assert s["children"] is None and s["children_totals"] is None
    idle = s["idle_threads"]
    if n_idle:
        assert s["config"]["idle_period_ms"] == idle["period_ms"] > 0
        assert idle["count"] == n_idle
        idlers = [t for t in s["threads"].values() if t["idle"]]
        assert idle["wakeups"] == sum(t["wakeups"] for t in idlers)
        assert idle["missed"] == sum(t["missed"] for t in idlers)
        assert idle["startup_s"] >= 0 and idle["late_ms_max"] >= idle["late_ms_mean"] >= 0
        for t in idlers:  # a pop's node goes back before the thread sleeps
            assert t["ops"].get("push", {}).get("commits", 0) == \
                t["ops"].get("pop", {}).get("commits", 0)
    else:
        assert idle is None and s["config"]["idle_period_ms"] is None
    assert set(s["ops"]) == set(OPS)
    starts = {o["start_ip"] for o in s["ops"].values()}
    assert len(starts) == len(OPS), "each operation must have its own start_ip"
    for name, o in s["ops"].items():
        assert o["symbol"].startswith("rseq_op_")
        assert o["post_commit_offset"] > 0
        start, abort = int(o["start_ip"], 16), int(o["abort_ip"], 16)
        assert not start <= abort < start + o["post_commit_offset"], "abort_ip inside the section"


# --------------------------------------------------------------------------
# Build


def test_builds_from_clean_with_werror(tmp_path, monkeypatch):
    monkeypatch.setenv("RSEQTOP_CACHE_DIR", str(tmp_path))
    binary = workload.build()
    digest = binary.parent.name
    assert binary.name == "rseq-workload"
    assert binary.parent.parent == tmp_path / "workload"
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert os.access(binary, os.X_OK)
    assert "-Werror" in workload.cflags() and "-pthread" in workload.cflags()  # the suite builds strictly
    mtime = binary.stat().st_mtime_ns
    assert workload.build() == binary and binary.stat().st_mtime_ns == mtime  # cached
    assert not [p for p in binary.parent.iterdir() if p.name != "rseq-workload"]  # no temp left


def test_rebuilds_after_source_change(tmp_path, monkeypatch):
    monkeypatch.setenv("RSEQTOP_CACHE_DIR", str(tmp_path / "cache"))
    csrc = tmp_path / "csrc"
    shutil.copytree(workload.source_dir(), csrc)
    monkeypatch.setattr(paths, "csrc_dir", lambda: csrc)
    names = [p.name for p in workload.sources()]
    assert names == sorted(names) and "workload.h" in names and len(names) > 2
    assert all(p.parent == csrc for p in workload.sources())
    first = workload.build()
    # a change to any one file, the header included, gives a new binary
    seen = {first}
    for name in ("workload.h", names[0]):
        with open(csrc / name, "a") as f:
            f.write("\n/* changed */\n")
        rebuilt = workload.build()
        assert rebuilt not in seen and rebuilt.parent.parent == first.parent.parent
        assert rebuilt.is_file()
        seen.add(rebuilt)
    # the explicit directory parameter gives the same answer
    assert workload.build(directory=csrc) == rebuilt


def test_concurrent_builds_are_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("RSEQTOP_CACHE_DIR", str(tmp_path))
    results, errors = [], []

    def build():
        try:
            results.append(workload.build())
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    out = subprocess.run([str(results[0]), "--help"], capture_output=True, text=True)
    assert out.returncode == 0


def test_compile_error_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RSEQTOP_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "csrc"
    bad.mkdir()
    (bad / "bad.c").write_text("int main(void) { return nope; }\n")
    with pytest.raises(UserError) as info:
        workload.build(directory=bad)
    msg = str(info.value)
    assert "error" in msg and "nope" in msg and "install gcc" in msg
    assert "\n" not in msg
    assert not list((tmp_path / "workload").rglob("*rseq-workload*"))


# --------------------------------------------------------------------------
# Operations and registration modes


@pytest.mark.parametrize("mode", ["glibc", "own"])
@pytest.mark.parametrize("op", OPS)
def test_each_operation_passes_self_check(op, mode):
    threads, n = 2, 20000
    env = env_with(NO_GLIBC_RSEQ if mode == "own" else None)
    s = workload.run(["--op", op, "--threads", threads, "--ops", n, "--in-cs-delay", "100"], env=env)
    check_consistent(s)
    assert s["self_check"] == {"ok": True, "problems": []}
    assert s["config"]["ops"] == [op]
    assert s["ops"][op]["commits"] == threads * n
    for t in s["threads"].values():
        assert t["ops"][op]["commits"] == n
    reg = s["registration"]
    assert reg["mode"] == mode
    assert s["config"]["rseq_abi"] == "legacy" and s["config"]["check_cpu_id_start"] is False
    if mode == "own":
        assert reg["rseq_size"] == 32
        assert reg["rseq_len"] == 32 and reg["abi"] == "legacy"
        assert reg["own_registrations"] == reg["own_unregistrations"] == threads
    else:
        assert reg["rseq_size"] > 0
        assert reg["own_registrations"] == reg["own_unregistrations"] == 0
    if op in ("push", "pop"):  # they always come in pairs
        assert s["ops"]["push"]["commits"] == s["ops"]["pop"]["commits"]


def test_all_operations_round_robin():
    s = workload.run(["--threads", 2, "--ops", 5000, "--yield"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["config"]["ops"] == OPS
    for op in ("counter", "spinlock", "delay"):
        assert s["ops"][op]["commits"] == 2 * 1000


@pytest.mark.parametrize("to_abort", [False, True], ids=["own-label", "to-abort"])
@pytest.mark.parametrize("op", ["counter", "push", "delay"])
def test_mismatch_every_n_is_exact_and_reaches_the_handler_only_when_asked(op, to_abort):
    """Every Nth attempt of a thread fails its cpu_id check: the mismatches
    are exactly attempts // N (attempts: commits, mismatches and kernel
    aborts); sent to the abort handler they are still mismatches, never
    aborts (the handler tells them apart)."""
    n = 7
    # pinned: no migration between the cpu read and the check, so no
    # mismatch of the kernel's own
    s = workload.run(["--op", op, "--threads", 2, "--ops", 3000, "--in-cs-delay", 100, "--mismatch-every", n,
                      "--cpus", usable_cpus()[0]] + (["--mismatch-to-abort"] if to_abort else []), env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["config"]["mismatch_to_abort"] is to_abort and s["config"]["mismatch_every"] == n
    for t in s["threads"].values():
        attempts = t["commits"] + t["cpu_mismatch"] + t["aborts"]
        assert t["cpu_mismatch"] == attempts // n
        assert t["commits"] == 3000 * (2 if op == "push" else 1)


def test_mismatch_every_one_is_refused():
    out = subprocess.run([str(workload.build()), "--mismatch-every", "1"], capture_output=True, text=True)
    assert out.returncode == 2 and "--mismatch-every" in out.stderr


# --------------------------------------------------------------------------
# Inducers

DELAY = ["--op", "delay", "--in-cs-delay", "20000", "--duration", "1"]


def test_oversubscription_makes_aborts():
    s = workload.run(DELAY + ["--threads", "8", "--cpus", "0"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["config"]["cpus"] == [0]
    assert s["totals"]["aborts"] > 0


def test_signals_make_aborts():
    s = workload.run(DELAY + ["--threads", "2", "--signal-rate", "2000"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["signals_sent"] > 0 and s["totals"]["signals"] > 0
    assert s["totals"]["signals"] <= s["signals_sent"]
    assert s["totals"]["aborts"] > 0


@pytest.mark.skipif(len(usable_cpus()) < 2, reason="needs two CPUs")
def test_migrations_make_aborts():
    s = workload.run(DELAY + ["--threads", "2", "--migrate-rate", "500"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["migrations_requested"] > 0
    assert s["totals"]["aborts"] > 0


def test_membarrier_makes_aborts():
    s = workload.run(DELAY + ["--threads", "2", "--membarrier-rate", "2000"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    mb = s["membarrier"]
    assert mb["registered"] is True
    assert mb["calls"] > 0 and mb["ok"] == mb["calls"] and mb["errors"] == {}
    assert s["totals"]["aborts"] > 0


def test_inducers_combine_with_own_registration():
    s = workload.run(
        ["--duration", "1", "--threads", "3", "--in-cs-delay", "5000", "--signal-rate", "500",
         "--migrate-rate", "200", "--membarrier-rate", "500"],
        env=env_with(NO_GLIBC_RSEQ),
    )
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["registration"]["mode"] == "own"
    assert s["registration"]["own_registrations"] == 3
    assert s["totals"]["aborts"] > 0


@pytest.mark.skipif(1 not in usable_cpus(), reason="needs CPU 1")
def test_quiet_run_has_few_aborts():
    s = workload.run(["--op", "counter", "--threads", "1", "--cpus", "1", "--in-cs-delay", "0",
                      "--duration", "1"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["signals_sent"] == 0 and s["migrations_requested"] == 0
    assert s["totals"]["aborts"] <= max(100, s["totals"]["commits"] // 100)


def test_membarrier_unregistered_fails_with_eperm():
    s = workload.run(["--op", "counter", "--threads", "1", "--duration", "0.5",
                      "--membarrier-rate", "200", "--membarrier-unregistered"], env=env_with())
    mb = s["membarrier"]
    assert mb["registered"] is False
    assert mb["calls"] > 0
    assert mb["ok"] == 0
    assert mb["errors"] == {"EPERM": mb["calls"]}


# --------------------------------------------------------------------------
# --rseq-abi v2: the workload's own registrations with a length above 32

AT_RSEQ_FEATURE_SIZE, AT_RSEQ_ALIGN = kernel.AT_RSEQ_FEATURE_SIZE, kernel.AT_RSEQ_ALIGN
auxv = kernel.auxv


needs_feature_size = pytest.mark.skipif(
    auxv(AT_RSEQ_FEATURE_SIZE) == 0, reason="no AT_RSEQ_FEATURE_SIZE (kernel before 6.3)")
V2 = ["--rseq-abi", "v2"]


def check_v2_registration(s: dict, registrations: int) -> None:
    reg = s["registration"]
    assert s["config"]["rseq_abi"] == "v2"
    assert reg["mode"] == "own" and reg["abi"] == "v2"
    assert reg["feature_size"] == auxv(AT_RSEQ_FEATURE_SIZE) > 0
    assert reg["align"] == auxv(AT_RSEQ_ALIGN) > 0
    assert reg["rseq_len"] > 32 and reg["rseq_len"] % reg["align"] == 0
    assert reg["rseq_len"] >= reg["feature_size"]
    assert reg["rseq_size"] == 32  # unchanged: sizeof(struct rseq)
    assert reg["own_registrations"] == reg["own_unregistrations"] == registrations
    assert reg["probe_registrations"] == 1


@needs_feature_size
def test_rseq_abi_v2_oversubscribed_makes_aborts():
    threads = 4
    s = workload.run(DELAY + ["--threads", threads, "--cpus", "0"] + V2, env=env_with(NO_GLIBC_RSEQ))
    check_consistent(s)
    assert s["self_check"] == {"ok": True, "problems": []}
    check_v2_registration(s, threads)
    assert s["totals"]["aborts"] > 0


@needs_feature_size
def test_rseq_abi_v2_all_operations_are_exact():
    s = workload.run(["--threads", 2, "--ops", 5000, "--in-cs-delay", "100", "--signal-rate", "500"]
                     + V2, env=env_with(NO_GLIBC_RSEQ))
    check_consistent(s)
    assert s["self_check"] == {"ok": True, "problems": []}
    check_v2_registration(s, 2)
    for op in ("counter", "spinlock", "delay"):
        assert s["ops"][op]["commits"] == 2 * 1000
    assert s["ops"]["push"]["commits"] == s["ops"]["pop"]["commits"]


@needs_feature_size
@pytest.mark.parametrize("churn", ["threads", "processes"])
def test_rseq_abi_v2_churn(churn):
    slots, n, k = 2, 400, 25
    s = workload.run([f"--churn-{churn}", "--threads", slots, "--ops", n, "--churn-ops", k] + V2,
                     env=env_with(NO_GLIBC_RSEQ))
    check_consistent(s)
    assert s["self_check"] == {"ok": True, "problems": []}
    assert s["churn"]["created"] == slots * (n // k)
    check_v2_registration(s, s["churn"]["created"])


def test_rseq_abi_v2_refused_when_glibc_registered():
    probe = workload.run(["--op", "counter", "--threads", "1", "--ops", "1"], env=env_with())
    if probe["registration"]["mode"] != "glibc":  # pragma: no cover - glibc < 2.35
        pytest.skip("glibc does not register rseq here")
    proc = subprocess.run([str(workload.build()), "--rseq-abi", "v2", "--ops", "1"],
                          capture_output=True, text=True, env=env_with())
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rseq-workload: error: "), proc.stderr
    assert "GLIBC_TUNABLES=glibc.pthread.rseq=0" in lines[0]


GETAUXVAL_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
/* getauxval with AT_RSEQ_FEATURE_SIZE / AT_RSEQ_ALIGN taken from the
 * environment: a kernel other than the one running the tests */
unsigned long getauxval(unsigned long type)
{
	const char *v = type == 27 ? getenv("FAKE_AT_RSEQ_FEATURE_SIZE") :
			type == 28 ? getenv("FAKE_AT_RSEQ_ALIGN") : NULL;
	unsigned long (*real)(unsigned long);

	if (v)
		return strtoul(v, NULL, 0);
	real = (unsigned long (*)(unsigned long))dlsym(RTLD_NEXT, "getauxval");
	return real(type);
}
"""


@pytest.fixture(scope="module")
def getauxval_shim(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:  # pragma: no cover - the workload build needs it anyway
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("shim")
    (d / "shim.c").write_text(GETAUXVAL_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(d / "shim.so"), str(d / "shim.c"),
                    "-ldl"], check=True)
    return d / "shim.so"


def run_with_auxv(shim: Path, feature_size: int, align: int, args: list) -> subprocess.CompletedProcess:
    env = env_with({**NO_GLIBC_RSEQ, "LD_PRELOAD": str(shim),
                    "FAKE_AT_RSEQ_FEATURE_SIZE": str(feature_size),
                    "FAKE_AT_RSEQ_ALIGN": str(align)})
    return subprocess.run([str(workload.build()), *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("feature_size, align, needle", [
    (0, 0, "too old"),        # kernels before 6.3: getauxval returns 0
    (300, 32, "256-byte"),    # larger than the workload's TLS area
    (28, 512, "aligned to 256"),
])
def test_rseq_abi_v2_runtime_errors_exit_1(getauxval_shim, feature_size, align, needle):
    proc = run_with_auxv(getauxval_shim, feature_size, align, ["--op", "counter", "--ops", "10"] + V2)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rseq-workload: error: --rseq-abi v2: "), proc.stderr
    assert needle in lines[0]
    if feature_size == 0:
        assert "6.3" in lines[0]


@needs_feature_size
def test_rseq_abi_v2_length_follows_the_auxiliary_vector(getauxval_shim):
    # a later kernel with more fields: 36 bytes, 32-byte alignment -> 64
    proc = run_with_auxv(getauxval_shim, 36, 32, ["--op", "counter", "--threads", "1",
                                                  "--ops", "100"] + V2)
    assert proc.returncode == 0, proc.stderr
    s = workload.parse_summary(proc.stdout)
    check_consistent(s)
    reg = s["registration"]
    assert (reg["feature_size"], reg["align"], reg["rseq_len"], reg["abi"]) == (36, 32, 64, "v2")
    assert reg["own_registrations"] == reg["own_unregistrations"] == 1


# --------------------------------------------------------------------------
# --check-cpu-id-start: the tcmalloc canary


def kernel_release() -> tuple:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", platform.release())
    return tuple(int(g or 0) for g in m.groups()) if m else (0, 0, 0)


def kernel_rewrites_cpu_id_start(abi: str) -> bool:
    """Whether this kernel writes cpu_id_start back on every abort (see
    docs/workload.md): up to 6.18 always; 6.19 to 7.0.9 not (the tcmalloc
    breakage); 7.0.10+ and 7.1+ for legacy (32-byte) registrations only."""
    release = kernel_release()
    if release < (6, 19, 0):
        return True
    if release < (7, 0, 10):
        return False
    return abi == "legacy"


CANARY_MODES = {
    "glibc": (None, []),
    "own-v2": (NO_GLIBC_RSEQ, V2),
}
CANARY_CAUSES = {
    "preemption": ["--cpus", "0"],
    "signals": ["--signal-rate", "2000"],
    "membarrier": ["--membarrier-rate", "2000"],
}


def check_canary(s: dict) -> None:
    check_consistent(s)  # also: rewritten + stale + wrong == aborts everywhere
    assert s["config"]["check_cpu_id_start"] is True
    assert s["self_check"] == {"ok": True, "problems": []}
    tot = s["totals"]
    assert tot["aborts"] > 0
    for t in s["threads"].values():
        for rec in _with_churn(t):
            assert sum(rec[f] for f in CANARY) == rec["aborts"]
    if kernel_rewrites_cpu_id_start(s["registration"]["abi"]):
        assert tot["cpu_id_start_stale"] == 0
        assert tot["cpu_id_start_wrong"] == 0
        assert tot["cpu_id_start_rewritten"] == tot["aborts"]


@pytest.mark.parametrize("cause", list(CANARY_CAUSES))
@pytest.mark.parametrize("mode", list(CANARY_MODES))
def test_canary_classifies_every_abort(mode, cause):
    env, extra = CANARY_MODES[mode]
    if mode == "own-v2" and auxv(AT_RSEQ_FEATURE_SIZE) == 0:
        pytest.skip("no AT_RSEQ_FEATURE_SIZE (kernel before 6.3)")
    s = workload.run(["--threads", "2", "--op", "delay", "--in-cs-delay", "20000",
                      "--duration", "0.5", "--check-cpu-id-start"]
                     + CANARY_CAUSES[cause] + extra, env=env_with(env))
    check_canary(s)
    assert s["registration"]["abi"] == ("v2" if mode == "own-v2" else "legacy")
    if cause == "signals":
        assert s["totals"]["signals"] > 0
    if cause == "membarrier":
        assert s["membarrier"]["ok"] > 0


def test_canary_all_operations_stay_exact():
    # --in-cs-delay 200000 makes the run ~0.5 s: at 20000 (~50 ms) a busy
    # second CPU could hold off the signal thread until the workers were
    # done, and 1 run in 60 ended without a single abort
    s = workload.run(["--threads", "3", "--cpus", "0", "--ops", "3000", "--in-cs-delay", "200000",
                      "--signal-rate", "1000", "--check-cpu-id-start"], env=env_with())
    check_canary(s)
    for op in ("counter", "spinlock", "delay"):
        assert s["ops"][op]["commits"] == 3 * 600
    assert s["ops"]["push"]["commits"] == s["ops"]["pop"]["commits"]


@pytest.mark.parametrize("churn", ["threads", "processes"])
def test_canary_with_churn(churn):
    s = workload.run([f"--churn-{churn}", "--threads", "3", "--cpus", "0", "--op", "delay",
                      "--in-cs-delay", "20000", "--churn-ops", "50", "--duration", "0.5",
                      "--check-cpu-id-start"], env=env_with())
    check_canary(s)
    assert s["churn"]["created"] > 0


# --------------------------------------------------------------------------
# Churn: short-lived threads / child processes


@pytest.mark.parametrize("mode", ["glibc", "own"])
@pytest.mark.parametrize("churn", ["threads", "processes"])
def test_churn_with_ops_is_exact(churn, mode):
    slots, n, k = 3, 1000, 30
    env = env_with(NO_GLIBC_RSEQ if mode == "own" else None)
    s = workload.run([f"--churn-{churn}", "--threads", slots, "--ops", n, "--churn-ops", k],
                     env=env)
    check_consistent(s)
    assert s["self_check"] == {"ok": True, "problems": []}
    per_slot = -(-n // k)  # ceil: the last churn thread of a slot runs the rest
    assert s["churn"]["created"] == slots * per_slot
    assert s["churn"]["failed"] == 0
    for t in s["threads"].values():
        assert t["churn"]["created"] == per_slot
    for op in ("counter", "spinlock", "delay"):  # round robin continues across churn threads
        assert s["ops"][op]["commits"] == slots * n // 5
    assert s["ops"]["push"]["commits"] == s["ops"]["pop"]["commits"]
    reg = s["registration"]
    assert reg["mode"] == mode
    expected = s["churn"]["created"] if mode == "own" else 0
    assert reg["own_registrations"] == reg["own_unregistrations"] == expected
    if churn == "processes":
        assert len(s["children"]) >= 1
        assert all(int(pid) != s["pid"] for pid in s["children"])


@pytest.mark.parametrize("churn", ["threads", "processes"])
def test_churn_oversubscribed_makes_aborts(churn):
    s = workload.run([f"--churn-{churn}", "--threads", "6", "--cpus", "0", "--op", "delay",
                      "--in-cs-delay", "20000", "--churn-ops", "50", "--duration", "1"],
                     env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["churn"]["created"] > 0 and s["churn"]["per_second"] > 0
    assert s["totals"]["aborts"] > 0


def test_churn_threads_with_inducers():
    s = workload.run(["--churn-threads", "--threads", "3", "--op", "delay", "--in-cs-delay", "5000",
                      "--duration", "1", "--signal-rate", "2000", "--migrate-rate", "500",
                      "--membarrier-rate", "500"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["signals_sent"] > 0
    assert s["totals"]["signals"] <= s["signals_sent"]
    assert s["totals"]["aborts"] > 0


def test_churn_rate_limits_creation():
    s = workload.run(["--churn-threads", "--threads", "2", "--churn-rate", "200",
                      "--duration", "0.5", "--op", "counter"], env=env_with())
    check_consistent(s)
    assert s["config"]["churn_rate"] == 200
    assert 0 < s["churn"]["created"] <= 2 * 200  # never more than the rate allows (+ slack)


def stopped_after_a_second(args, sig=signal.SIGTERM) -> tuple:
    """Run the workload for 30 s, stop it with `sig` after one: its summary
    must be complete and consistent. Returns (summary, stderr)."""
    proc = workload.start(args + ["--duration", "30"], stderr=subprocess.PIPE, env=env_with())
    time.sleep(1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    s = workload.parse_summary(out)
    check_consistent(s)
    assert s["self_check"]["ok"]
    return s, err


@pytest.mark.parametrize("churn", ["threads", "processes"])
def test_churn_stop_signal_prints_complete_summary(churn):
    s, err = stopped_after_a_second([f"--churn-{churn}", "--threads", "2"])
    assert s["churn"]["created"] > 0
    assert "churn:" in err


# --------------------------------------------------------------------------
# Idle threads: many sleepers waking every --idle-period


def idle_threads_of(s: dict) -> list[dict]:
    return [t for t in s["threads"].values() if t["idle"]]


def test_idle_threads_only_are_exact():
    n, period, duration = 200, 50, 1
    s = workload.run(["--threads", 0, "--idle-threads", n, "--idle-period", period,
                      "--duration", duration], env=env_with())
    check_consistent(s)  # totals and per-op counts are the sums over the threads
    assert s["self_check"] == {"ok": True, "problems": []}
    assert len(s["threads"]) == n and len(idle_threads_of(s)) == n
    idle = s["idle_threads"]
    assert idle["count"] == n and idle["period_ms"] == period
    ideal = n * duration * 1000 // period
    # at least half the ideal on a busy machine; never more than the
    # period allows (late threads skip ticks, they do not catch up)
    assert ideal // 2 <= idle["wakeups"] <= n * (s["duration_s"] * 1000 / period + 1), idle
    for t in idle_threads_of(s):
        # one operation per wake-up; push and pop steps add a pairing commit
        assert t["commits"] == t["wakeups"] + t["ops"]["pop"]["commits"], t
    assert idle["startup_s"] < s["duration_s"] + 60
    assert s["ops"]["push"]["commits"] == s["ops"]["pop"]["commits"] > 0
    assert s["totals"]["commits"] >= idle["wakeups"]


@pytest.mark.parametrize("mode", ["glibc", "own"])
def test_idle_threads_beside_workers(mode):
    workers, n = 2, 50
    env = env_with(NO_GLIBC_RSEQ if mode == "own" else None)
    s = workload.run(["--threads", workers, "--idle-threads", n, "--idle-period", 20,
                      "--duration", "0.5", "--membarrier-rate", "500"], env=env)
    check_consistent(s)
    assert s["self_check"] == {"ok": True, "problems": []}
    reg = s["registration"]
    assert reg["mode"] == mode
    expected = workers + n if mode == "own" else 0
    assert reg["own_registrations"] == reg["own_unregistrations"] == expected
    assert s["idle_threads"]["wakeups"] > 0
    assert all(t["commits"] > 0 for t in s["threads"].values() if not t["idle"])


def test_idle_threads_with_ops_stop_with_the_workers():
    s = workload.run(["--threads", 1, "--ops", 2000, "--idle-threads", 20, "--idle-period", 10,
                      "--op", "counter"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    worker = [t for t in s["threads"].values() if not t["idle"]]
    assert [t["commits"] for t in worker] == [2000]
    assert s["totals"]["commits"] == 2000 + s["idle_threads"]["wakeups"]


def test_idle_threads_with_churn_threads():
    s = workload.run(["--churn-threads", "--threads", 2, "--idle-threads", 30, "--idle-period", 10,
                      "--duration", "0.5"], env=env_with())
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["churn"]["created"] > 0 and s["idle_threads"]["wakeups"] > 0


def test_idle_threads_stop_promptly():
    """A stop wakes the sleepers (SIGUSR2) instead of waiting for their next
    tick, here up to 20 s away."""
    proc = workload.start(["--threads", "0", "--idle-threads", "100", "--idle-period", "20000",
                           "--duration", "30"], stderr=subprocess.PIPE, env=env_with())
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    s = workload.parse_summary(out)
    check_consistent(s)
    assert s["self_check"]["ok"]
    assert s["duration_s"] < 10
    assert "idle: 100 threads" in err


def test_thread_limit_is_a_one_line_error():
    """pthread_create failing with EAGAIN (here: the address space limit of
    this process, ulimit -v) names the limits and how to raise them."""
    def limit_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))

    proc = subprocess.run([str(workload.build()), "--threads", "0", "--idle-threads", "10000",
                           "--duration", "1"], capture_output=True, text=True, env=env_with(),
                          preexec_fn=limit_address_space)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rseq-workload: error: cannot create idle "
                                                   "thread "), proc.stderr
    for needle in ("EAGAIN", "ulimit -u", "ulimit -v 204800", "threads-max", "max_map_count",
                   "sysctl -w"):
        assert needle in lines[0], needle


@pytest.mark.slow
def test_ten_thousand_idle_threads():
    n, period = 10000, 200
    s = workload.run(["--threads", 0, "--idle-threads", n, "--idle-period", period,
                      "--duration", 2], timeout=300, env=env_with())
    check_consistent(s)
    assert s["self_check"] == {"ok": True, "problems": []}
    assert len(s["threads"]) == n
    idle, ru = s["idle_threads"], s["rusage"]
    assert idle["wakeups"] >= n * 2000 // period // 2
    cpu = (ru["run_user_s"] + ru["run_system_s"]) / ru["run_s"]
    print(f"\n{n} idle threads every {period} ms: start-up {idle['startup_s']:.3f} s, "
          f"RSS {ru['run_end_rss_kib'] / 1024:.1f} MiB at the end of the run "
          f"(max {ru['max_rss_kib'] / 1024:.1f} MiB), CPU {cpu:.3f} s/s during the run, "
          f"{idle['wakeups']} wake-ups ({idle['missed']} missed), late by "
          f"{idle['late_ms_mean']:.2f} ms mean / {idle['late_ms_max']:.1f} ms max")


# --------------------------------------------------------------------------
# Output


@pytest.mark.parametrize("name", ["[bold red]x\x1b[31m", "q\"u\\o\tte\n", "\u00e9" * 9])
def test_hostile_names_give_valid_json(name):
    proc = subprocess.run([str(workload.build()), "--name", name, "--op", "counter",
                           "--threads", "2", "--ops", "1000"],
                          capture_output=True, env=env_with())
    assert proc.returncode == 0, proc.stderr
    raw = proc.stdout
    raw.decode("ascii")  # escaped to pure ASCII
    s = workload.parse_summary(raw)
    check_consistent(s)
    kernel_comm = name.encode()[:15]
    assert bytes.fromhex(s["comm_hex"]) == kernel_comm
    assert s["comm"] == kernel_comm.decode("utf-8", "replace")
    assert s["config"]["name"] == name


def test_json_out_file(tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run([str(workload.build()), "--op", "counter", "--threads", "1",
                           "--ops", "100", "--json-out", str(out)],
                          capture_output=True, text=True, env=env_with())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "commits" in proc.stderr  # human summary
    check_consistent(workload.parse_summary(out.read_text()))


def test_parse_summary_rejects_other_versions():
    with pytest.raises(ValueError):
        workload.parse_summary('{"schema_version": 2}')
    with pytest.raises(ValueError):
        workload.parse_summary("not json")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_prints_complete_summary(sig):
    s, _ = stopped_after_a_second(["--threads", "2", "--signal-rate", "100"], sig)
    assert s["totals"]["commits"] > 0
    assert s["duration_s"] < 30


def test_cli_exec_passes_sigterm_to_workload():
    cmd = [sys.executable, "-m", "rseqtop", "workload", "--duration", "30", "--threads", "1",
           "--op", "counter"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_with())
    deadline = time.monotonic() + 30
    comm = Path(f"/proc/{proc.pid}/comm")
    while comm.read_text().strip() != "rseq-workload":  # exec done
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    check_consistent(workload.parse_summary(out))


# --------------------------------------------------------------------------
# Bad input

BAD = [
    ["--op", "nope"],
    ["--op", "counter,"],
    ["--signal-rate", "0"],
    ["--migrate-rate", "-5"],
    ["--membarrier-rate", "abc"],
    ["--signal-rate", "nan"],
    ["--threads", "x"],
    ["--threads", "0"],
    ["--duration", "-1"],
    ["--ops", "1.5"],
    ["--in-cs-delay", "-1"],
    ["--cpus", "4096"],
    ["--cpus", str(max(usable_cpus()) + 1)],
    ["--cpus", "0-"],
    ["--cpus", "a"],
    ["--bogus"],
    ["--threads"],
    ["stray"],
    ["--membarrier-unregistered"],
    ["--churn-threads", "--churn-processes"],
    ["--churn-ops", "5"],
    ["--churn-rate", "100"],
    ["--churn-threads", "--churn-ops", "0"],
    ["--churn-threads", "--churn-ops", "x"],
    ["--churn-threads", "--churn-rate", "0"],
    ["--churn-processes", "--signal-rate", "10"],
    ["--churn-processes", "--migrate-rate", "10"],
    ["--churn-processes", "--membarrier-rate", "10"],
    ["--rseq-abi", "v3"],
    ["--rseq-abi", ""],
    ["--rseq-abi"],
    ["--check-cpu-id-start", "yes"],
    ["--idle-threads", "-1"],
    ["--idle-threads", "x"],
    ["--idle-threads", "1000001"],
    ["--idle-period", "100"],
    ["--idle-threads", "5", "--idle-period", "0"],
    ["--idle-threads", "5", "--idle-period", "1.5"],
    ["--threads", "0", "--idle-threads", "0"],
    ["--threads", "0", "--idle-threads", "5", "--ops", "10"],
    ["--threads", "0", "--idle-threads", "5", "--churn-threads"],
    ["--threads", "0", "--idle-threads", "5", "--signal-rate", "10"],
    ["--threads", "0", "--idle-threads", "5", "--migrate-rate", "10"],
    ["--idle-threads", "5", "--churn-processes"],
    ["--signal-burst", "5"],
    ["--signal-rate", "10", "--signal-burst", "0"],
    ["--signal-rate", "10", "--signal-burst", "5", "--signal-burst-gap", "0"],
    ["--storm-k", "0"],
    ["--signal-rate", "10", "--signal-bursts", "2"],
    ["--signal-rate", "10", "--signal-burst", "5", "--signal-bursts", "0"],
    ["--storm-t-us", "x"],
    ["--antagonist", "hog"],
    ["--antagonist", "", "--cpus", "0"],
    ["--antagonist", "hog", "--cpus", "0", "--antagonist-rate", "0"],
    ["--antagonist", "hog", "--cpus", "0", "--antagonist-spin", "-1"],
    ["--antagonist", "hog", "--cpus", "0", "--antagonist-threads", "0"],
    ["--antagonist", "hog", "--cpus", "0", "--antagonist-threads", "65"],
    ["--cpus", "0", "--antagonist-threads", "2"],
    ["--antagonist", "hog", "--cpus", "0", "--churn-processes"],
]


@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a))
def test_bad_input_exits_2_with_one_line(args):
    proc = subprocess.run([str(workload.build()), *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rseq-workload: error: "), proc.stderr


def test_run_raises_with_stderr_on_failure():
    with pytest.raises(workload.WorkloadError) as info:
        workload.run(["--op", "nope"])
    assert info.value.exit_code == 2
    assert "unknown operation" in str(info.value)


def test_cli_help_lists_every_option():
    proc = subprocess.run([sys.executable, "-m", "rseqtop", "workload", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for option in OPTIONS:
        assert option in proc.stdout, option
    for op in OPS:
        assert op in proc.stdout


def test_cli_bad_option_exit_code_propagates():
    proc = subprocess.run([sys.executable, "-m", "rseqtop", "workload", "--threads", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("rseq-workload: error: ")


def test_users_build_without_werror_and_strict_builds_apart(tmp_path, monkeypatch):
    """-Werror only in the test suite; the flags are part of the cache key,
    so a strict and a lenient build never share a binary."""
    monkeypatch.setenv("RSEQTOP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(workload.WERROR_ENV)
    assert "-Werror" not in workload.cflags()
    lenient = workload.binary_path()
    monkeypatch.setenv(workload.WERROR_ENV, "1")
    assert "-Werror" in workload.cflags() and workload.binary_path() != lenient


def test_storms_follow_the_rule_from_the_threads_own_aborts():
    """The storm rule computed by the workload itself: with bursts of 40
    signals at one thread in a long section, 16 in a row makes a storm and
    64 never does; the counts add up over threads and ops."""
    base = ["--threads", "1", "--op", "delay", "--in-cs-delay", "20000", "--signal-rate", "10000",
            "--signal-burst", "40", "--signal-burst-gap", "30", "--storm-t-us", "3000", "--duration", "0.6"]
    s = workload.run(base + ["--storm-k", "16"], timeout=60)
    t = s["totals"]
    assert s["storm_rule"] == {"k": 16, "t_us": 3000}
    assert t["storms"] == sum(th["storms"] for th in s["threads"].values()) == s["ops"]["delay"]["storms"]
    assert t["storms"] == sum(op["storms"] for op in s["ops"].values())
    if t["max_abort_run"] >= 16:
        assert t["storms"] >= 1
    else:
        assert t["storms"] == 0
    assert t["max_abort_run"] <= t["aborts"]
    quiet = workload.run(base + ["--storm-k", "64"], timeout=60)
    assert quiet["totals"]["storms"] == 0 or quiet["totals"]["max_abort_run"] >= 64
    assert s["antagonist"] is None


def test_antagonist_reports_itself():
    s = workload.run(["--threads", "1", "--cpus", "0", "--op", "counter", "--antagonist", "a-very-long-antagonist",
                      "--antagonist-rate", "500", "--duration", "0.3"], timeout=60)
    a = s["antagonist"]
    assert a["comm"] == "a-very-long-ant"  # the kernel keeps 15 bytes
    assert a["pid"] == s["pid"] and a["tid"] > 0 and a["tid"] not in {int(t) for t in s["threads"]}
    assert a["cpu"] == 0 and a["runs"] > 0 and a["spin_us"] == 50
    assert a["tids"] == [a["tid"]]


def test_antagonist_named_after_runs_its_first_wake_ups_unnamed():
    """--antagonist-named-after N: each antagonist has the process's name
    for its first N wake-ups (counted as unnamed_runs), NAME after them."""
    proc = workload.start(["--threads", "1", "--cpus", "0", "--op", "counter", "--antagonist", "late-name",
                           "--antagonist-threads", "2", "--antagonist-named-after", "40", "--antagonist-rate", "200",
                           "--duration", "1.5"])
    seen = set()
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{proc.pid}/task").glob("*"):
            try:
                seen.add(task.joinpath("comm").read_text().strip())
            except OSError:
                pass
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=60)
    a = workload.parse_summary(out)["antagonist"]
    assert a["unnamed_runs"] == 2 * 40 < a["runs"]
    assert a["comm"] == "late-name" and "late-name" in seen
    bad = subprocess.run([str(workload.build()), "--antagonist-named-after", "3", "--duration", "0.1"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "needs --antagonist" in bad.stderr


def test_antagonist_threads_wake_in_turn_at_the_rate_between_them():
    s = workload.run(["--threads", "1", "--cpus", "0", "--op", "counter", "--antagonist", "hogs",
                      "--antagonist-threads", "3", "--antagonist-rate", "600", "--duration", "0.5"], timeout=60)
    a = s["antagonist"]
    assert len(set(a["tids"])) == 3 and a["tid"] == a["tids"][0]
    assert not set(a["tids"]) & {int(t) for t in s["threads"]}
    assert 0 < a["runs"] <= 600 * 0.5 + 3  # 600 wake-ups a second between the three, not each
