"""deploy/k8s: every manifest against its kind's schema (Kubernetes, KEDA, Prometheus
operator; tests/support/manifests.py), and the operational choices the manifests encode
(probes, drain, security, sizing, scaling ceiling) against the service's own settings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel_stream.config import Settings
from tests.support.manifests import NOT_RESOURCES, documents, errors
from tests.support.promql import ROOT, alerts

K8S = ROOT / "deploy/k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))


def by_kind() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in documents(path):
            out[doc["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def kinds() -> dict[str, dict[str, Any]]:
    return by_kind()


def container(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    c: dict[str, Any] = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    return c


def settings_of(kinds: dict[str, dict[str, Any]]) -> Settings:
    """The settings a member gets from the ConfigMap (validated as at start)."""
    env = kinds["ConfigMap"]["data"]
    fields = {
        name: env[f"SENTINEL_{name.upper()}"]
        for name in Settings.model_fields
        if f"SENTINEL_{name.upper()}" in env
    }
    return Settings(**fields)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_its_schema(path: Path) -> None:
    docs = list(documents(path))
    assert docs
    for doc in docs:
        if doc["kind"] in NOT_RESOURCES:
            continue
        assert errors(doc) == [], f"{path.name}: {doc['kind']}"


def test_the_schema_check_catches_unknown_fields_wrong_types_and_missing_fields(
    kinds: dict[str, dict[str, Any]],
) -> None:
    bad = copy.deepcopy(kinds["Deployment"])
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    c["ports"][0]["containerPort"] = "8000"
    found = errors(bad)
    assert any("readinesProbe" in e for e in found), found
    assert any("containerPort" in e and "integer" in e for e in found), found
    scaled = copy.deepcopy(kinds["ScaledObject"])
    del scaled["spec"]["scaleTargetRef"]["name"]
    scaled["spec"]["maxReplicaCount"] = "six"
    found = errors(scaled)
    assert any("name" in e and "required" in e for e in found), found
    assert any("maxReplicaCount" in e for e in found), found
    rule = copy.deepcopy(kinds["PrometheusRule"])
    rule["spec"]["groups"][0]["rules"][0]["for"] = 10
    assert errors(rule), "a number where a duration string goes"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"kustomization.yaml"}


def test_kinds_the_issue_asks_for(kinds: dict[str, dict[str, Any]]) -> None:
    assert set(kinds) >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "ScaledObject",
        "ServiceMonitor",
        "PrometheusRule",
    }


def test_configmap_holds_valid_settings(kinds: dict[str, dict[str, Any]]) -> None:
    env = kinds["ConfigMap"]["data"]
    known = {f"SENTINEL_{n.upper()}" for n in Settings.model_fields}
    for key in env:
        assert key in known or key.startswith("SENTINEL_KAFKA_OPT_"), key
    s = settings_of(kinds)
    assert s.host == "0.0.0.0" and s.create_topics is False


def test_probes_drain_and_security(kinds: dict[str, dict[str, Any]]) -> None:
    spec = kinds["Deployment"]["spec"]
    pod = spec["template"]["spec"]
    c = container(kinds)
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    # The drain must end before SIGKILL: preStop sleep, then SENTINEL_SHUTDOWN_TIMEOUT_S
    # and the 5 s the process allows itself past it (app.Service._on_signal).
    prestop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    drain = settings_of(kinds).shutdown_timeout_s + 5
    assert pod["terminationGracePeriodSeconds"] > int(prestop[1]) + drain
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts  # the refit workers' files
    assert "replicas" not in spec  # KEDA owns it
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


REFIT_WORKER_MIB = 160
"""A refit worker process's resident memory (NumPy and scikit-learn; it loads no numba),
with multiprocessing's resource tracker: bench/memory.py, docs/operations.md "Sizing"."""


def test_memory_limit_and_alert_agree(kinds: dict[str, dict[str, Any]]) -> None:
    resources = container(kinds)["resources"]
    limit = mebibytes(resources["limits"]["memory"])
    assert mebibytes(resources["requests"]["memory"]) == limit
    # sentinel_memory_mb is the main process's; the refit workers sit beside it.
    workers = settings_of(kinds).refit_workers * REFIT_WORKER_MIB
    expr = alerts()["SentinelHighMemoryUsage"]["expr"]
    threshold = float(expr.split(">")[1])
    assert 0.8 * limit <= threshold + workers <= 0.9 * limit, (threshold, workers, limit)


def test_scaledobject_scales_the_group_up_to_the_partitions(
    kinds: dict[str, dict[str, Any]],
) -> None:
    s = settings_of(kinds)
    so = kinds["ScaledObject"]["spec"]
    assert so["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert so["maxReplicaCount"] == s.topic_partitions  # the input topic's partitions
    assert so["minReplicaCount"] >= 1  # the HTTP side server must stay up
    (trigger,) = so["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == s.group_id
    assert meta["topic"] == s.input_topic
    assert meta["bootstrapServers"] == s.kafka_bootstrap
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0


def test_service_and_servicemonitor_find_the_pods(kinds: dict[str, dict[str, Any]]) -> None:
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    svc = kinds["Service"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container(kinds)["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    sm = kinds["ServiceMonitor"]["spec"]
    assert sm["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in sm["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert all(e["path"] == "/metrics" for e in sm["endpoints"])
    pdb = kinds["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
