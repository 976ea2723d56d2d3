"""A flood of one-off routes, over Kafka and over HTTP, leaves the routes seen often
with their models, and the detector within its memory budget: a real process, a real
broker, real HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.kafka import event, produce, read_all, wait_for
from tests.support.service import analyze, running_service, scrape

pytestmark = pytest.mark.kafka

WARM = [f"/warm/{i}" for i in range(20)]
FLOOD_KAFKA = 10_000
FLOOD_HTTP = 1_500
BUDGET_MB = 16


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and (labels is None or s.labels == labels):
                return float(s.value)
    raise KeyError(name)


def verdicts(bootstrap: str, topic: str, ids: set[str]) -> dict[str, dict[str, Any]]:
    msgs = read_all(
        bootstrap,
        topic,
        lambda got: ids <= {orjson.loads(m.value() or b"").get("event_id") for m in got},
        120,
    )
    out = {}
    for m in msgs:
        v = orjson.loads(m.value() or b"")
        if v.get("event_id") in ids:
            out[v["event_id"]] = v
    assert set(out) == ids, f"missing verdicts: {sorted(ids - set(out))[:5]}"
    return out


def test_a_flood_of_one_off_routes_keeps_the_warm_routes_models(
    bootstrap: str, tmp_path: Path
) -> None:
    with running_service(
        bootstrap,
        tmp_path,
        "flood",
        SENTINEL_MEMORY_MAX_MB=str(BUDGET_MB),
        SENTINEL_MIN_HISTORY="64",
        SENTINEL_N_ESTIMATORS="50",
    ) as svc:
        env, port = svc.env, svc.port
        topic, out = env["SENTINEL_INPUT_TOPIC"], env["SENTINEL_OUTPUT_TOPIC"]

        def probe(tag: str) -> dict[str, dict[str, Any]]:
            """One event per warm route over Kafka, and its verdict."""
            produce(
                bootstrap,
                topic,
                [(r.encode(), event(r, event_id=f"{tag}-{r}")) for r in WARM],
            )
            got = verdicts(bootstrap, out, {f"{tag}-{r}" for r in WARM})
            return {v["route"]: v for v in got.values()}

        # Warm routes: learnt over Kafka, in many polls, until each has a model.
        produce(
            bootstrap,
            topic,
            [
                (r.encode(), event(r, latency=80.0 + (i * 37) % 40, event_id=f"w-{r}-{i}"))
                for i in range(150)
                for r in WARM
            ],
        )
        verdicts(bootstrap, out, {f"w-{r}-149" for r in WARM})
        before = probe("before")
        assert {v["detector"] for v in before.values()} == {"isolation_forest"}

        # The flood: one event per route, over Kafka, and over HTTP (scored there, and
        # forwarded to Kafka, where the route's owner learns it like any event).
        produce(
            bootstrap,
            topic,
            [
                (f"/once/k{i}".encode(), event(f"/once/k{i}", event_id=f"k{i}"))
                for i in range(FLOOD_KAFKA)
            ],
        )
        for i in range(FLOOD_HTTP):
            answer = analyze(
                port, {"latency": 100.0, "input_length": 500, "errors": 0, "route": f"/once/h{i}"}
            )
            assert answer["detector"] == "rules"
        total = len(WARM) * 151 + FLOOD_KAFKA + FLOOD_HTTP

        def flood_learnt() -> bool:
            svc.proc.alive()
            return metric(scrape(port), "sentinel_events_valid_total", {"door": "kafka"}) >= total

        wait_for(flood_learnt, 180, "the flood to be consumed")

        # The warm routes still answer from their models, over Kafka and over HTTP.
        after = probe("after")
        assert {v["detector"] for v in after.values()} == {"isolation_forest"}
        for r in WARM:
            assert after[r]["model_version"] >= before[r]["model_version"]
            answer = analyze(port, {"latency": 100.0, "input_length": 500, "errors": 0, "route": r})
            assert answer["detector"] == "isolation_forest", (r, answer)

        text = scrape(port)
        budget = metric(text, "sentinel_detector_memory_budget_bytes")
        assert budget == BUDGET_MB * 2**20
        assert 0 < metric(text, "sentinel_detector_memory_bytes") <= budget
        # The flood did not fit: most of it was refused, what got in was counted out.
        assert metric(text, "sentinel_routes_refused_total") > 1000
        assert metric(text, "sentinel_routes_tracked") < len(WARM) + FLOOD_KAFKA + FLOOD_HTTP
        assert metric(text, "sentinel_models_trained") >= len(WARM)
        assert metric(text, "sentinel_routes_evicted_total") >= metric(
            text, "sentinel_routes_evicted_memory_total"
        )
