"""Attributions name the feature that moved; the rule text states the real numbers."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine, Event


def normal(route: str, n: int, seed: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [
        Event(
            route,
            float(rng.lognormal(math.log(150), 0.2)),
            int(rng.lognormal(math.log(800), 0.2)),
            0,
            f"n{i}",
            "2026-01-01T00:00:00.000Z",
            None,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def trained() -> Engine:
    e = Engine(Settings(refit_workers=0, seed=3))
    events = normal("/t", 600)
    for i in range(0, len(events), 50):
        e.process(events[i : i + 50])
    state = e.detector.route_state("/t")
    assert state is not None and state.model is not None
    return e


SPIKES = {
    "latency": dict(latency=150.0 * 40, input_length=800, errors=0),
    "input_length": dict(latency=150.0, input_length=800 * 60, errors=0),
    "errors": dict(latency=150.0, input_length=800, errors=25),
}


@pytest.mark.parametrize("feature", list(SPIKES))
def test_a_spike_is_attributed_to_its_feature(trained: Engine, feature: str) -> None:
    fields = SPIKES[feature]
    v = trained.process(
        [Event("/t", event_id="s", event_time="t", source=None, **fields)],  # type: ignore[arg-type]
        learn=False,
    )[0]
    assert v["is_anomaly"] and v["detector"] == "isolation_forest"
    attrs = {a["feature"]: a for a in v["explanation"]["attributions"]}
    assert max(attrs, key=lambda f: attrs[f]["weight"]) == feature
    assert attrs[feature]["weight"] > 0.8 and attrs[feature]["direction"] == "high"
    assert abs(sum(a["weight"] for a in attrs.values()) - 1) < 1e-3
    assert attrs[feature]["value"] == float(fields[feature])


def test_rule_text_states_the_real_numbers(trained: Engine) -> None:
    state = trained.detector.route_state("/t")
    assert state is not None and state.baseline is not None
    median = math.expm1(state.baseline.median[0])
    p99 = math.expm1(state.baseline.p99[0])
    v = trained.process([Event("/t", 30000.0, 800, 0, "x", "t", None)], learn=False)[0]
    text = v["explanation"]["text"]
    assert text.startswith("high latency: latency 30,000 ms is ")
    ratio = re.search(r"is ([\d,.]+)x this route's median \(([\d,.]+) ms; p99 ([\d,.]+) ms\)", text)
    assert ratio, text
    assert float(ratio.group(1).replace(",", "")) == pytest.approx(
        30000 / round(median, 3), rel=0.01
    )
    assert float(ratio.group(2).replace(",", "")) == pytest.approx(median, abs=0.51)
    assert float(ratio.group(3).replace(",", "")) == pytest.approx(p99, abs=0.51)


def test_the_v1_services_reasons(trained: Engine) -> None:
    def text(**fields: float) -> str:
        v = trained.process(
            [Event("/t", event_id="r", event_time="t", source=None, **fields)],  # type: ignore[arg-type]
            learn=False,
        )[0]
        assert v["is_anomaly"], fields
        return str(v["explanation"]["text"])

    assert text(latency=9000.0, input_length=800, errors=0).startswith("high latency")
    assert text(latency=150.0, input_length=800, errors=30).startswith(
        "high error rate: errors 30 vs typically 0"
    )
    assert text(latency=150.0, input_length=90000, errors=0).startswith("excessive input size")
    assert text(latency=700.0, input_length=4000, errors=0).startswith("unusual combination")


def test_explanations_are_deterministic(trained: Engine) -> None:
    ev = [Event("/t", 7000.0, 5000, 3, "d", "t", None)]
    assert (
        trained.process(ev, learn=False)[0]["explanation"]
        == trained.process(ev, learn=False)[0]["explanation"]
    )
