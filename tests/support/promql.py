"""The PromQL that deploy/ ships (alert rules, dashboard queries), for the tests to check.

Dashboard queries carry Grafana's variables; :func:`dashboard_exprs` replaces them with
what Prometheus can run (``$__rate_interval`` a minute, ``$job`` any job).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy/prometheus/sentinel-stream.rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/tests/sentinel-stream.rules.test.yml"
DASHBOARD = ROOT / "deploy/grafana/sentinel-stream.json"

GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "${job}": ".+", "$job": ".+"}
_NAME = re.compile(r"\b(sentinel_[a-zA-Z0-9_]+)")


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def alerts() -> dict[str, dict[str, Any]]:
    """Alert name -> its rule."""
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> dict[str, str]:
    """'panel title / refId' -> the query, with Grafana's variables replaced."""
    out: dict[str, str] = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out[f"{panel['title']} / {target['refId']}"] = expr
    return out


def metric_names(expr: str) -> set[str]:
    """The sentinel_* series names a query reads (histogram suffixes kept)."""
    return set(_NAME.findall(expr))


def exposed_names(exposition: str) -> set[str]:
    """Names of the samples in a /metrics text (with _total, _bucket, ... suffixes)."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def as_recording_rules(exprs: dict[str, str]) -> dict[str, Any]:
    """A rule file with one recording rule per query, for ``promtool check rules``."""
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs.values())]
    return {"groups": [{"name": "dashboard", "rules": rules}]}
