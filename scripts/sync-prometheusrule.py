"""Write deploy/k8s/prometheusrule.yaml from deploy/prometheus/sentinel-stream.rules.yml.

The rules live once, as a plain Prometheus rule file (what docker-compose's Prometheus
loads and promtool checks); the Prometheus operator wants the same groups inside a
PrometheusRule. tests/unit/test_deploy_k8s.py fails when the two differ.

    .venv/bin/python scripts/sync-prometheusrule.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/sentinel-stream.rules.yml"
TARGET = ROOT / "deploy/k8s/prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/sentinel-stream.rules.yml by
# scripts/sync-prometheusrule.py: edit the rule file, then run the script.
# The Prometheus operator selects PrometheusRules by label (often `release: <name>`,
# or `role: alert-rules`): add what yours selects.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "sentinel-stream",
            "labels": {
                "app.kubernetes.io/name": "sentinel-stream",
                "app.kubernetes.io/component": "stream-processor",
            },
        },
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    body = yaml.dump(
        prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True
    )
    return HEADER + body


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}")
