"""deploy/prometheus and deploy/grafana: the rules and dashboard queries parse, the rules
fire on the series they are written for (promtool's unit tests), each alert has a
runbook, and the PrometheusRule carries the same groups.

That the metric names they use are exported by a live service, and that a real
Prometheus fires them, is tests/integration/test_alerts.py.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.promql import (
    ROOT,
    RULE_TESTS,
    RULES,
    alerts,
    as_recording_rules,
    dashboard,
    dashboard_exprs,
    metric_names,
)

V1_GUIDE_ALERTS = {
    "SentinelHighAnomalyRate",
    "SentinelAnomalySpike",
    "SentinelHighMemoryUsage",
    "SentinelMemoryLeak",
    "SentinelHighLatency",
    "SentinelRequestTimeout",
    "SentinelModelNotTraining",
    "SentinelExcessiveTraining",
    "SentinelHealthCheckFailure",
    "SentinelLLMFallbackHigh",
    "SentinelLLMUnavailable",
}
"""Every alert of the v1 service's observability guide, by its name."""

OPERATIONS = ROOT / "docs/operations.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool missing: scripts/system-deps.sh installs Debian's prometheus"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(alerts()), set(alerts()) ^ tested


def test_the_rules_cover_the_issue_and_the_v1_guide() -> None:
    names = set(alerts())
    assert names >= V1_GUIDE_ALERTS, V1_GUIDE_ALERTS - names
    assert names >= {
        "SentinelStreamAnomalyRateHigh",
        "SentinelStreamConsumerLagGrowing",
        "SentinelStreamDeadLetters",
        "SentinelStreamNoVerdicts",
        "SentinelStreamLLMBreakerOpen",
        "SentinelStreamRefitsFailing",
        "SentinelStreamRefitsPending",
    }


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    headings = {
        line.lstrip("#").strip().strip("`").lower()
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/operations.md#{name.lower()}", (name, url)
        assert name.lower() in headings, f"docs/operations.md has no runbook heading {name}"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(as_recording_rules(exprs)))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_query_check_fails_on_a_broken_query(tmp_path: Path) -> None:
    path = tmp_path / "broken.rules.yml"
    path.write_text(yaml.safe_dump(as_recording_rules({"x": "sum(rate(sentinel_x_total[5m])"})))
    assert promtool("check", "rules", str(path)).returncode != 0


def test_dashboard_covers_what_the_issue_asks() -> None:
    d = dashboard()
    titles = " ".join(p["title"].lower() for p in d["panels"])
    asked = ("throughput", "latency", "anomaly", "lag", "dead letters", "refits", "llm", "http")
    for word in asked:
        assert word in titles, word
    names = set().union(*(metric_names(e) for e in dashboard_exprs().values()))
    assert "sentinel_anomalies_total" in names and "sentinel_consumer_lag_records" in names
    for panel in d["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def _sync_module() -> object:
    spec = importlib.util.spec_from_file_location(
        "sync_prometheusrule", ROOT / "scripts/sync-prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_carries_the_rule_file() -> None:
    sync = _sync_module()
    target: Path = sync.TARGET  # type: ignore[attr-defined]
    assert target.read_text() == sync.render(), (  # type: ignore[attr-defined]
        "deploy/k8s/prometheusrule.yaml is stale: run scripts/sync-prometheusrule.py"
    )
    manifest = yaml.safe_load(target.read_text())
    assert manifest["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


@pytest.mark.parametrize("name", sorted(V1_GUIDE_ALERTS))
def test_v1_alerts_read_v1_names(name: str) -> None:
    v1_names = {
        "sentinel_requests_total",
        "sentinel_request_duration_seconds_bucket",
        "sentinel_anomaly_rate",
        "sentinel_memory_mb",
        "sentinel_model_fits_total",
        "sentinel_health_check_fails_total",
        "sentinel_llm_failures_total",
    }
    used = metric_names(alerts()[name]["expr"])
    assert used and used <= v1_names, used
