"""Shared fixtures. Tests that need BPF run for real as root; elsewhere they
skip with the reason printed, but under CI=true a skip is a failure."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The bundled workload is built with -Werror here (never on users' machines).
os.environ["RSEQTOP_WORKLOAD_WERROR"] = "1"


def skip_or_fail(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true forbids skipping: {reason}", pytrace=False)
    pytest.skip(reason)


def bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    from rseqtop.errors import UserError
    from rseqtop.kernel import tracefs

    try:
        root = tracefs.ensure_root()
    except UserError as err:
        return str(err)
    if not tracefs.TraceFS(root).has("rseq", "rseq_ip_fixup"):
        return "kernel lacks the rseq:rseq_ip_fixup tracepoint"
    try:
        from rseqtop.kernel.bccimport import import_bcc

        import_bcc()
    except UserError as err:
        return str(err)
    return None


@pytest.fixture(scope="session")
def bpf_ok():
    reason = bpf_unavailable_reason()
    if reason:
        skip_or_fail(reason)
    return True


@pytest.fixture(scope="session")
def collector(bpf_ok):
    """One attached collector with the default program, for every test that
    needs no other: a compile takes 16 s in a kernel VM. Tests that change
    its filter, threads asked for or reaper put them back."""
    from rseqtop import workload
    from rseqtop.collect import Collector

    workload.build()
    with Collector() as c:
        yield c


@pytest.fixture(scope="session")
def rseqtop_cmd():
    """How to run the CLI of this checkout as a subprocess."""
    return [sys.executable, "-m", "rseqtop"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A directory with a test CA and server and client certificates (support.make_pki)."""
    from support import make_pki  # here, not at the top: every run loads conftest

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def hashed():
    """A bcrypt hash (cost 5) of the password "s3cret"."""
    from support import bcrypt_hash

    return bcrypt_hash("s3cret")


def pytest_collection_modifyitems(config, items):
    """A test that needs BPF (the bpf_ok fixture) is marked `bpf`, so that
    `-m "not bpf"` (scripts/test --unit) selects what runs unprivileged."""
    for item in items:
        if "bpf_ok" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.bpf)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true every skip, wherever it comes from (a helper binary
    missing, not root, too few CPUs), is a failure: CI must run everything."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true forbids skipping: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped while it is collected
    (pytest.importorskip, or pytest.skip(allow_module_level=True))."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true forbids skipping: {reason}"
