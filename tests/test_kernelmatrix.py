"""scripts/kernels' pure parts: choosing a suite's newest kernel from apt's
records, and the check x kernel table from pytest's JUnit XML. (The VMs
themselves run in CI: scripts/test ends with scripts/kernels --tests.)"""

from __future__ import annotations

import pytest
from kernelmatrix import UserError, cli, fetch, results, vm


class FakeApt:
    """apt-cache's answers for one suite, from a list of package records."""

    suite = "sid"

    def __init__(self, records):
        self.records = records

    def pkgnames(self, prefix):
        return sorted({r["Package"] for r in self.records if r["Package"].startswith(prefix)})

    def show(self, names):
        return [r for r in self.records if r["Package"] in names]


def rec(pkg, version, depends="", size=100, arch="amd64"):
    return {"Package": pkg, "Version": version, "Architecture": arch, "Depends": depends, "Size": str(size)}


def test_newest_kernel_and_its_packages_old_layout():
    apt = FakeApt([
        rec("linux-image-6.1.0-49-amd64", "6.1.170-1"),
        rec("linux-image-6.1.0-50-amd64", "6.1.176-1"),
        rec("linux-image-6.1.0-50-amd64-unsigned", "6.1.176-1"),
        rec("linux-image-6.1.0-50-cloud-amd64", "6.1.176-1"),
        rec("linux-headers-6.1.0-50-amd64", "6.1.176-1", "linux-headers-6.1.0-50-common (= 6.1.176-1), gcc-12"),
        rec("linux-headers-6.1.0-50-common", "6.1.176-1", arch="all"),
    ])
    c = fetch.choose(apt)
    assert (c.abi, c.version) == ("6.1.0-50", "6.1.176-1")
    assert [p for p, _, _ in c.packages] == ["linux-image-6.1.0-50-amd64-unsigned", "linux-headers-6.1.0-50-amd64",
                                             "linux-headers-6.1.0-50-common"]


def test_newest_kernel_and_its_packages_7x_layout():
    v = "7.2.13-1"
    apt = FakeApt([
        rec("linux-image-7.2.11+deb14-amd64", "7.2.11-1"),
        rec("linux-image-7.2.13+deb14-amd64", v,
            "linux-binary-7.2.13+deb14-amd64 | linux-binary-unsigned-7.2.13+deb14-amd64, "
            "linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)"),
        rec("linux-binary-7.2.13+deb14-amd64", v, "linux-base-7.2.13+deb14-amd64"),
        rec("linux-binary-unsigned-7.2.13+deb14-amd64", v, "linux-base-7.2.13+deb14-amd64"),
        rec("linux-modules-7.2.13+deb14-amd64", v),
        rec("linux-base-7.2.13+deb14-amd64", v),
        rec("linux-headers-7.2.13+deb14-amd64", v, "linux-headers-7.2.13+deb14-common (= 7.2.13-1)"),
        rec("linux-headers-7.2.13+deb14-common", v, arch="all"),
    ])
    c = fetch.choose(apt)
    names = [p for p, _, _ in c.packages]
    assert c.abi == "7.2.13+deb14" and c.version == v
    assert "linux-binary-unsigned-7.2.13+deb14-amd64" in names and "linux-binary-7.2.13+deb14-amd64" not in names
    assert {"linux-modules-7.2.13+deb14-amd64", "linux-base-7.2.13+deb14-amd64",
            "linux-headers-7.2.13+deb14-common"} <= set(names)


def test_no_kernel_in_suite_is_a_one_line_error():
    with pytest.raises(fetch.FetchError, match="no linux-image"):
        fetch.choose(FakeApt([rec("linux-image-6.1.0-50-rt-amd64", "6.1.176-1")]))


def test_unknown_suite_is_a_user_error():
    with pytest.raises(UserError, match="unknown suite 'jessie'"):
        cli._suites("bookworm,jessie")
    assert cli._suites("sid, sid,trixie") == ["sid", "trixie"]


JUNIT = """<?xml version="1.0"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_collector" name="test_exact[signals-pinned]">
  <properties><property name="figure" value="12=12 aborts"/></properties></testcase>
<testcase classname="tests.test_collector" name="test_shares"><failure message="x">boom</failure></testcase>
<testcase classname="tests.test_doctor" name="test_doctor"><skipped message="no root"/></testcase>
</testsuite></testsuites>
"""


def test_checks_and_figures_from_junit(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT)
    checks = results.load_checks(tmp_path)
    assert checks == [("test_exact[signals-pinned]", "passed", "12=12 aborts"), ("test_shares", "failed", None),
                      ("test_doctor", "skipped", None)]
    assert [results.check_ok(st) for _, st, _ in checks] == [True, False, False]
    table = results.render_checks([("6.1.0-50-amd64", checks), ("7.2.13", checks[:1])], figure_width=40)
    lines = table.splitlines()
    assert lines[0].split() == ["check", "6.1.0-50-amd64", "7.2.13"]
    assert "exact[signals-pinned]" in lines[2] and lines[2].count("PASS 12=12 aborts") == 2
    assert "FAIL" in lines[3] and lines[3].rstrip().endswith("-")  # 7.2.13 has no such check


def test_unreadable_junit_is_an_error(tmp_path):
    (tmp_path / "junit.xml").write_text("<testsuites><testcase")
    with pytest.raises(results.ResultsError):
        results.load_checks(tmp_path)


def test_a_guest_kernel_panic_is_recognised(tmp_path):
    from types import SimpleNamespace

    (tmp_path / "console.log").write_text("[ 131.5] Oops: int3: 0000 [#1] SMP NOPTI\n[ 131.6] Kernel panic - not syncing\n")
    crashed = SimpleNamespace(exit_status=None, booted=True, outdir=tmp_path)
    assert cli._guest_panic(crashed) == "Oops: int3: 0000 [#1] SMP NOPTI"
    assert cli._guest_panic(SimpleNamespace(exit_status=1, booted=True, outdir=tmp_path)) == ""  # the command ended
    at_boot = SimpleNamespace(exit_status=None, booted=False, outdir=tmp_path)  # before the start marker
    assert cli._guest_panic(at_boot) == "Oops: int3: 0000 [#1] SMP NOPTI"
    (tmp_path / "console.log").write_text("[ 1.0] reboot: Power down\n")
    assert cli._guest_panic(crashed) == ""


def test_the_guest_copies_up_only_what_a_compile_touches_enough_of(monkeypatch, tmp_path):
    import subprocess
    from pathlib import Path

    probe = ("4194304 /usr/bin/env\n"  # big enough, under the overlay: copied
             "8192 /usr/bin/true\n"  # a few pages: read on demand instead
             "4194304 /etc/passwd\n"  # not on the guest's /usr overlay
             "4194304 /usr/lib/no-such-library.so\n")
    monkeypatch.setattr(vm.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, probe, ""))
    files = vm.bcc_libraries(Path("/nonexistent-repo"))
    assert files == ["/usr/bin/env"]
    script = vm.guest_script("run-the-tests", Path("/r"), tmp_path, tmp_path, "sid", copy_up=files)
    copy, run = script.index(': >> "$f"'), script.index("run-the-tests")
    assert "for f in /usr/bin/env;" in script and copy < run
    assert ": >>" not in vm.guest_script("run-the-tests", Path("/r"), tmp_path, tmp_path, "sid")
    monkeypatch.setattr(vm.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no bcc"))
    assert vm.bcc_libraries(Path("/nonexistent-repo")) == []


@pytest.mark.parametrize("release, copies", [("6.1.0-50-amd64", False), ("6.7.12", False), ("6.12.117+deb13-amd64", True),
                                             ("7.2.13+deb14-amd64", True), ("10.0.1", True)])
def test_copy_up_only_where_9p_keeps_no_reads(release, copies):
    assert vm.copies_up(release) == copies
