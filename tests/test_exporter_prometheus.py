"""End to end on loopback: a real Prometheus scrapes a real `rseqtop export`
while the bundled workload runs. Every PromQL expression of the dashboard and
the alert rules must evaluate, the abort-rate queries must return the
workload's series, and Prometheus's abort and EPERM counters for the workload
must equal the workload's own counts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml
from support import free_port, get, wait_for

from rseqtop import workload

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "dashboards" / "rseqtop.json"
ALERTS = REPO / "dashboards" / "alerts.yml"
pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def http_get(url: str, timeout: float = 10) -> tuple:
    """(status, body as text); (None, "") while nothing answers."""
    status, body = get(url, timeout=timeout, down_ok=True)
    return status, body.decode()


def dashboard_queries() -> list:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", ()):
            out.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            m = re.match(r"label_values\((.*),\s*\w+\)$", q["query"])
            out.append((f"variable {v['name']}", m.group(1) if m else q["query"]))
    return out


def rule_queries() -> list:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def substitute(expr: str, job: str) -> str:
    return (expr.replace("$__rate_interval", "1m").replace("$job", job).replace("$instance", ".+")
            .replace("$comm", ".*").replace("$topn", "10"))


@pytest.fixture(scope="module")
def stack(bpf_ok, tmp_path_factory, rseqtop_cmd):
    prom_bin = shutil.which("prometheus")
    if not prom_bin:
        pytest.skip("the prometheus server is not installed")
    tmp = tmp_path_factory.mktemp("prom")
    eport, pport = free_port(), free_port()
    # Default labels (comm, container): the workload is found by its --name.
    # --syscalls: the membarrier series and the EPERM alert are checked too.
    exporter = subprocess.Popen(rseqtop_cmd + ["export", "--syscalls", f"--web.listen-address=127.0.0.1:{eport}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    prom = None
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{eport}/-/ready")[0] == 200, 120, "exporter ready", exporter)
        (tmp / "alerts.yml").write_text(ALERTS.read_text())
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "alerts.yml")],
            "scrape_configs": [{"job_name": "rseqtop", "static_configs": [{"targets": [f"127.0.0.1:{eport}"]}]}],
        }))
        prom = subprocess.Popen([prom_bin, f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{pport}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        api = f"http://127.0.0.1:{pport}/api/v1"
        wait_for(lambda: http_get(f"http://127.0.0.1:{pport}/-/ready")[0] == 200, 60, "prometheus ready", prom)

        # Prometheus applies new targets in batches (every 5 s): wait for real
        # scrapes before starting the workload, so that it is seen while it runs.
        up_samples = 'count_over_time(up{job="rseqtop"}[1m])'
        wait_for(lambda: (_first_value(api, up_samples) or 0) >= 2, 60, "two scrapes of the exporter", prom)

        name = "rq" + uuid.uuid4().hex[:10]
        summary = workload.run(["--threads", "2", "--duration", "5", "--signal-rate", "200",
                                "--membarrier-rate", "50", "--membarrier-unregistered", "--name", name], timeout=120)
        # and a few scrapes after it ended, so that rate() windows hold its whole run
        seen = f'max(count_over_time(rseqtop_aborts_total{{comm="{name}"}}[1m]))'
        wait_for(lambda: (_first_value(api, seen) or 0) >= 4, 60, "the workload's series in Prometheus", prom)
        yield {"api": api, "eport": eport, "name": name, "summary": summary, "job": "rseqtop", "exporter": exporter}
    finally:
        for p in (prom, exporter):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


def _first_value(api: str, expr: str):
    status, body = http_get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
    if status != 200:
        return None
    res = json.loads(body)["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def query(api: str, expr: str) -> dict:
    status, body = http_get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
    data = json.loads(body) if body else {}
    assert status == 200 and data.get("status") == "success", f"{expr}: {status} {body[:500]}"
    return data["data"]


def scalar_sum(api: str, expr: str):
    res = query(api, expr)["result"]
    return float(res[0]["value"][1]) if res else None


def test_prometheus_counts_equal_workload_ground_truth(stack):
    api, name, summary = stack["api"], stack["name"], stack["summary"]
    want = summary["totals"]["aborts"]
    assert want > 0, summary["totals"]
    for expr in (f'sum(rseqtop_aborts_total{{comm="{name}"}})',):
        got = wait_for(lambda: (lambda v: v if v == want else None)(scalar_sum(api, expr)), 60,
                       f"{expr} == {want}", ) if scalar_sum(api, expr) != want else want
        assert got == want, (expr, scalar_sum(api, expr))
    eperm = summary["membarrier"]["errors"].get("EPERM", 0)
    assert eperm > 0, summary["membarrier"]
    expr = f'sum(rseqtop_membarrier_errors_total{{comm="{name}", errno="EPERM"}})'
    assert wait_for(lambda: scalar_sum(api, expr) == eperm, 30, f"{expr} == {eperm}")


def test_every_dashboard_and_rule_expression_evaluates(stack):
    api, name = stack["api"], stack["name"]
    wait_for(lambda: scalar_sum(api, f'sum(rseqtop_aborts_total{{comm="{name}"}})'), 60, "workload series")
    queries = dashboard_queries() + rule_queries()
    assert len(queries) > 20
    for title, expr in queries:
        assert "$" not in substitute(expr, stack["job"]), (title, expr)
        query(api, substitute(expr, stack["job"]))
    # the abort-rate and abort-site panels show the workload, by its comm
    symbols = {r["metric"]["symbol"] for r in
               query(api, f'sum by (symbol) (rseqtop_site_aborts_total{{comm="{name}"}})')["result"]}
    assert symbols
    for title, expr in dashboard_queries():
        res = query(api, substitute(expr, stack["job"]))["result"]
        if "rseqtop_site_aborts_total" in expr:
            assert symbols & {r["metric"].get("symbol") for r in res}, (title, res)
        elif "rseqtop_aborts_total" in expr and "by (comm" in expr:
            comms = {r["metric"].get("comm") for r in res}
            assert name in comms, (title, comms)
    causes = query(api, substitute(next(e for t, e in dashboard_queries() if t == "Abort causes over time"),
                                   stack["job"]))["result"]
    assert causes and all(r["metric"].get("cause") for r in causes)


def test_rules_are_loaded_and_healthy(stack):
    def healthy():
        status, body = http_get(f"{stack['api']}/rules")
        groups = json.loads(body)["data"]["groups"] if status == 200 else []
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("health") == "ok" for r in rules) else None

    rules = wait_for(healthy, 30, "all rules evaluated with health ok")
    assert len(rules) == len(rule_queries())


def test_promtool_check_metrics_on_a_real_scrape(stack):
    status, body = http_get(f"http://127.0.0.1:{stack['eport']}/metrics")
    assert status == 200 and "rseqtop_aborts_total" in body
    res = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    assert stack["exporter"].poll() is None


def test_attach_failure_exits_nonzero_at_once(rseqtop_cmd, tmp_path):
    # not root: attaching fails; the exporter must exit instead of serving an empty /metrics
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    res = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all"] + rseqtop_cmd +
                         ["export", f"--web.listen-address=127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "not privileged" in res.stderr, res.stderr
