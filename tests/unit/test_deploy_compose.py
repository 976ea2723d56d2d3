"""docker-compose.kafka.yml and the CI workflow against their published schemas (the
Compose specification's and GitHub's, as check-jsonschema vendors them), and the local
stack's wiring: profiles, healthchecks, start order, the files it mounts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel_stream.config import Settings
from tests.support.promql import ROOT

COMPOSE = ROOT / "docker-compose.kafka.yml"
WORKFLOW = ROOT / ".github/workflows/ci.yml"


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_jsonschema("vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_check_fails_on_a_bad_file(compose: dict[str, Any], tmp_path: Path) -> None:
    bad = dict(compose)
    bad["services"] = dict(compose["services"])
    bad["services"]["grafana"] = dict(compose["services"]["grafana"])
    bad["services"]["grafana"]["depends_on"] = {"prometheus": {"condition": "service_happy"}}
    path = tmp_path / "bad-compose.yml"
    path.write_text(yaml.safe_dump(bad))
    assert check_jsonschema("vendor.compose-spec", path).returncode != 0


def test_profiles(compose: dict[str, Any]) -> None:
    profiles = {name: tuple(s.get("profiles", ())) for name, s in compose["services"].items()}
    assert profiles["kafka"] == ()  # `docker compose up` alone: the broker, as before
    for name in ("topic-init", "sentinel-stream", "prometheus", "grafana"):
        assert profiles[name] == ("stack",), name
    for name in ("ollama", "ollama-pull"):
        assert profiles[name] == ("llm",), name


def test_start_order_waits_on_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health"
    assert services["topic-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    after_init = services["sentinel-stream"]["depends_on"]["topic-init"]["condition"]
    assert after_init == "service_completed_successfully"
    for name in ("kafka", "sentinel-stream", "prometheus", "grafana", "ollama"):
        assert "healthcheck" in services[name], name


def test_sentinel_stream_is_built_and_run_as_in_kubernetes(compose: dict[str, Any]) -> None:
    svc = compose["services"]["sentinel-stream"]
    assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    assert svc["user"].startswith("10001")
    env = svc["environment"]
    known = {f"SENTINEL_{n.upper()}" for n in Settings.model_fields} | {
        "OLLAMA_HOST",
        "OLLAMA_MODEL",
    }
    assert set(env) <= known, set(env) - known
    assert env["SENTINEL_KAFKA_BOOTSTRAP"] == "kafka:19092"
    assert (
        "INTERNAL://kafka:19092"
        in compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )
    grace = int(svc["stop_grace_period"].rstrip("s"))
    assert grace > Settings().shutdown_timeout_s + 5


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


def test_the_stacks_prometheus_config_loads_the_rules(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """promtool check config, with the container paths mapped back to the repo."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/system-deps.sh installs it"
    mounts = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = ROOT / source
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    config["rule_files"] = [str(mounts[f]) for f in config["rule_files"]]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_grafana_provisions_the_dashboard(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["grafana"]["volumes"]
    dashboard = "./deploy/grafana/sentinel-stream.json"
    assert f"{dashboard}:/var/lib/grafana/dashboards/sentinel-stream.json:ro" in volumes
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/sentinel-stream.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_ci_workflow_runs_the_ci_script() -> None:
    result = check_jsonschema("vendor.github-workflows", WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    workflow = yaml.safe_load(WORKFLOW.read_text())
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(r.strip() == "bash .ci/run" for r in runs), runs
