"""The wheel carries bpf/ and the workload's C source and works installed."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rseqtop import workload

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                   check=True, timeout=300)
    wheels = list(out.glob("rseqtop-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_ships_bpf_and_c_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "rseqtop/bpf/rseqtop.bpf.c" in names
    assert "rseqtop/bpf/rseqtop.h" in names
    csrc = [f"rseqtop/csrc/{p.name}" for p in workload.sources()]
    assert "rseqtop/csrc/workload.h" in csrc and len(csrc) > 2
    assert not [n for n in csrc if n not in names]
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_runs_doctor(bpf_ok, wheel, tmp_path):
    venv = tmp_path / "venv"
    # The interpreter that has the distribution's bcc, seeing it through
    # --system-site-packages: exactly what scripts/setup does.
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=600)
    out = subprocess.run([str(venv / "bin/rseqtop"), "doctor", "--json"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "CI": ""})
    doc = json.loads(out.stdout)
    assert out.returncode == 0, [c for c in doc["checks"] if c["status"] != "PASS"]
    # and it used the installed copy, not this checkout
    where = subprocess.run([str(venv / "bin/python"), "-c", "import rseqtop.paths as p; print(p.bpf_dir())"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.strip()
    assert where.startswith(str(venv))


@pytest.mark.slow
def test_unit_suite_passes_as_an_unprivileged_user():
    """scripts/test --unit: every test that needs neither root nor BPF, run
    as nobody (tests that need root skip there by design, so CI's no-skip
    rule is off for this inner run)."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv(1) to become nobody")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rseqtop-unit-") as home:  # pytest's tmp_path is root-only
        os.chmod(home, 0o777)
        env = {k: v for k, v in os.environ.items() if k != "CI"}
        env.update(HOME=home, PYTHONDONTWRITEBYTECODE="1")
        repo = Path(__file__).resolve().parent.parent
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                              "scripts/test", "--unit", "-q", "-x"], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1]
