"""Offline checks of what ships for production: Kubernetes manifests against
the Kubernetes schemas (kubernetes-validate bundles them), the ServiceMonitor
against the Service, the systemd unit, the dashboard's conventions and the
alert rules (promtool check rules / test rules)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
DASH = REPO / "dashboards"

kv = pytest.importorskip("kubernetes_validate")


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("name", ["rseqtop.yaml", "rseqtop-privileged.yaml"])
def test_manifests_validate_against_kubernetes_schemas(name):
    for d in docs(K8S / name):
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked below
        kv.validate(d, kv.latest_version(), strict=True)


def test_validation_is_effective():
    ds = next(d for d in docs(K8S / "rseqtop.yaml") if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = "BPF"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, kv.latest_version(), strict=True)


def test_least_privilege_daemonset():
    ds = next(d for d in docs(K8S / "rseqtop.yaml") if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    c = pod["containers"][0]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert {"BPF", "PERFMON", "SYSLOG", "SYS_PTRACE"} <= set(sc["capabilities"]["add"])
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/sys/kernel/tracing", "/sys/fs/cgroup", "/usr/src", "/lib/modules"):
        assert mounts[path].get("readOnly") is True, path
    assert "/var/cache/rseqtop" in mounts
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    priv = next(d for d in docs(K8S / "rseqtop-privileged.yaml") if d["kind"] == "DaemonSet")
    assert priv["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] is True


def test_servicemonitor_matches_service():
    all_docs = docs(K8S / "rseqtop.yaml")
    svc = next(d for d in all_docs if d["kind"] == "Service")
    sm = next(d for d in all_docs if d["kind"] == "ServiceMonitor")
    ds = next(d for d in all_docs if d["kind"] == "DaemonSet")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    ports = {p["name"] for p in svc["spec"]["ports"]}
    assert all(e["port"] in ports for e in sm["spec"]["endpoints"])
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]


def test_systemd_unit():
    unit = (REPO / "deploy" / "rseqtop-exporter.service").read_text()
    for key in ("CapabilityBoundingSet=", "NoNewPrivileges=yes", "ProtectSystem=strict", "ExecStart="):
        assert key in unit
    if shutil.which("systemd-analyze"):
        res = subprocess.run(["systemd-analyze", "verify", str(REPO / "deploy" / "rseqtop-exporter.service")],
                             capture_output=True, text=True)
        # the binary path is not installed here; anything else is a real problem
        problems = [l for l in res.stderr.splitlines() if l.strip() and "is not executable" not in l]
        assert not problems, res.stderr


def test_dashboard_conventions():
    dash = json.loads((DASH / "rseqtop.json").read_text())
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource"
    assert {"job", "instance"} <= set(names)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", ())]
    assert exprs
    for e in exprs:
        if "rate(" in e:
            assert "[$__rate_interval]" in e and "[5m]" not in e, e
        assert 'job=~"$job"' in e and 'instance=~"$instance"' in e, e
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("top processes", "causes", "ratio", "sites", "membarrier", "registration", "lost", "bpf", "scrape"):
        assert word in titles, word


@pytest.fixture
def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool is not installed")
    return path


def test_promtool_check_rules(promtool):
    res = subprocess.run([promtool, "check", "rules", str(DASH / "alerts.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules(promtool):
    res = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=DASH, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    alerts = {r["alert"] for g in yaml.safe_load((DASH / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tested = (DASH / "alerts_test.yml").read_text()
    for a in alerts:
        assert f"alertname: {a}" in tested, a
