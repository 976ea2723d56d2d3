"""The HTTP side server over real HTTP, against `sentinel-stream run` on a real broker."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.kafka import end_offsets, wait_for
from tests.support.service import Running, get_json, running_service, scrape

pytestmark = pytest.mark.kafka


def post(
    port: int,
    body: bytes,
    ctype: str = "application/json",
    path: str = "/analyze-flow",
    method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers={"Content-Type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def post_json(port: int, obj: object) -> tuple[int, dict[str, Any]]:
    return post(port, json.dumps(obj).encode())


@pytest.fixture(scope="module")
def svc(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_service(bootstrap, tmp_path_factory.mktemp("http"), "http") as service:
        yield service


@pytest.fixture(scope="module")
def openapi(svc: Running) -> dict[str, Any]:
    status, doc = get_json(svc.port, "/openapi.json")
    assert status == 200
    return doc


def check(doc: dict[str, Any], schema_name: str, body: object) -> None:
    """Validate ``body`` against a component of the service's own OpenAPI document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    jsonschema.validate(body, schema)


def test_v1_smoke_test_on_a_cold_route(svc: Running, openapi: dict[str, Any]) -> None:
    status, body = post_json(
        svc.port, {"latency": 25000, "input_length": 50000, "errors": 15, "route": "/cold/smoke"}
    )
    assert status == 200
    assert body["status"] == "THREAT_DETECTED" and body["action"] == "freeze"
    assert 0 <= body["confidence"] <= 1 and 0 <= body["prediction_score"] <= 1
    assert "latency 25,000 ms" in body["reason"]
    assert body["detector"] == "rules" and body["warming_up"] is True
    check(openapi, "AnalyzeFlowResponse", body)


def test_ok_shape_and_javascript_timestamps(svc: Running, openapi: dict[str, Any]) -> None:
    status, body = post_json(
        svc.port,
        {
            "latency": 120.5,
            "input_length": 300,
            "errors": 0,
            "route": "/ok",
            "user_id": "u1",
            "timestamp": "2026-03-01T12:00:00.123Z",
        },
    )
    assert status == 200 and body["status"] == "OK"
    assert not {"action", "reason", "prediction_score", "confidence"} & set(body)
    assert {"score", "threshold", "detector", "model_version", "explanation"} <= set(body)
    check(openapi, "AnalyzeFlowResponse", body)


@pytest.mark.parametrize(
    ("obj", "fields"),
    [
        ({"latency": "fast", "input_length": 1, "errors": 0, "route": "/x"}, {"latency"}),
        (
            {"latency": 1, "input_length": -1, "errors": True, "route": "/x"},
            {"input_length", "errors"},
        ),
        ({"latency": 1, "input_length": 1, "errors": 0}, {"route"}),
        (
            {"latency": 1, "input_length": 1, "errors": 0, "route": "/x", "timestamp": "yesterday"},
            {"timestamp"},
        ),
        ([1, 2], {"(body)"}),
    ],
)
def test_422_names_each_bad_field(
    svc: Running, openapi: dict[str, Any], obj: object, fields: set[str]
) -> None:
    status, body = post_json(svc.port, obj)
    assert status == 422
    assert {f["field"] for f in body["fields"]} == fields
    check(openapi, "ErrorResponse", body)


def test_400_413_415_405_404(svc: Running) -> None:
    assert post(svc.port, b"{nope")[0] == 400
    big = json.dumps(
        {"latency": 1, "input_length": 1, "errors": 0, "route": "/x", "pad": "x" * (70 * 1024)}
    ).encode()
    assert post(svc.port, big)[0] == 413
    assert post(svc.port, b"latency=1", "application/x-www-form-urlencoded")[0] == 415
    status, body = post(svc.port, b"", path="/analyze-flow", method="PUT")
    assert status == 405 and body["error"] == "method_not_allowed"
    assert post(svc.port, b"{}", path="/nowhere")[0] == 404


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
events = st.fixed_dictionaries(
    {},
    optional={
        "latency": st.one_of(st.floats(allow_nan=False), st.integers(), st.booleans(), st.text()),
        "input_length": st.one_of(st.integers(), st.floats(allow_nan=False), st.none()),
        "errors": st.one_of(st.integers(min_value=-5, max_value=10**12), st.text()),
        "route": st.text(max_size=300),
        "user_id": st.one_of(st.text(max_size=300), st.integers()),
        "timestamp": st.one_of(st.datetimes().map(lambda d: d.isoformat()), st.text(max_size=30)),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(events, json_values),
    ctype=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", "application/xml"]
    ),
)
def test_no_input_gets_a_5xx_or_breaks_the_schema(
    svc: Running, openapi: dict[str, Any], body: object, ctype: str
) -> None:
    status, answer = post(svc.port, json.dumps(body).encode(), ctype)
    assert status in (200, 400, 413, 415, 422), (status, answer)
    check(openapi, "AnalyzeFlowResponse" if status == 200 else "ErrorResponse", answer)


def _event_text(fields: dict[str, str]) -> str:
    base = {"latency": "12.5", "input_length": "100", "errors": "0", "route": '"/fuzz"'}
    base.update(fields)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in base.items()) + "}"


big_ints = st.integers(min_value=2**53 - 3, max_value=10**400).map(str)
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda m: ("+" if m >= 0 else "-") + f"{abs(m) // 60:02d}:{abs(m) % 60:02d}"
)
extreme_times = st.tuples(
    st.sampled_from(
        [
            "0001-01-01T00:00:00",
            "0001-01-01T23:59:59.999",
            "9999-12-31T00:00:00",
            "9999-12-31T23:59:59.999999",
        ]
    ),
    offsets | st.just("Z"),
).map(lambda t: f'"{t[0]}{t[1]}"')
hostile = st.one_of(
    st.builds(lambda v: _event_text({"input_length": v}), big_ints),
    st.builds(lambda v: _event_text({"errors": v}), big_ints),
    st.builds(
        lambda v: _event_text({"latency": v}), big_ints | st.sampled_from(["1e308", "1e999"])
    ),
    st.builds(lambda v: _event_text({"timestamp": v}), extreme_times),
    st.builds(
        lambda s: _event_text({"route": f'"{s}"'}),
        st.sampled_from(["\\ud800", "\\udfff", "a\\ud83d", "\\ud83d\\ude00", "\\u0000"]),
    ),
    st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
).map(str.encode)
raw_bodies = st.one_of(hostile, hostile.map(lambda b: b"\xef\xbb\xbf" + b), st.binary(max_size=64))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=raw_bodies)
def test_hostile_bodies_get_a_4xx_or_a_verdict_never_a_5xx(
    svc: Running, openapi: dict[str, Any], body: bytes
) -> None:
    status, answer = post(svc.port, body)
    assert status in (200, 400, 413, 422), (status, answer, body[:200])
    check(openapi, "AnalyzeFlowResponse" if status == 200 else "ErrorResponse", answer)


def test_the_values_that_once_gave_500s_now_name_their_field(svc: Running) -> None:
    cases = {
        "timestamp": _event_text({"timestamp": '"0001-01-01T00:00:00+01:00"'}),
        "input_length": _event_text({"input_length": "18446744073709551616"}),
        "errors": _event_text({"errors": "1" + "0" * 400}),
    }
    for field, text in cases.items():
        status, answer = post(svc.port, text.encode())
        assert status == 422 and [f["field"] for f in answer["fields"]] == [field], answer
    metrics = scrape(svc.port)
    assert "sentinel_http_unexpected_errors_total 0.0" in metrics
    assert 'sentinel_http_requests_total{endpoint="/analyze-flow",status="500"}' not in metrics


def test_http_events_train_their_route(svc: Running) -> None:
    """A caller that only uses HTTP still gets a trained model for its route."""
    route = "/http/only"
    verdict: dict[str, Any] = {}

    def trained() -> bool:
        nonlocal verdict
        for i in range(20):
            status, verdict = post_json(
                svc.port,
                {"latency": 80 + (i % 7), "input_length": 400 + i, "errors": 0, "route": route},
            )
            assert status == 200
        return bool(verdict["detector"] == "isolation_forest")

    wait_for(trained, 120, "the HTTP-only route to get a model")
    assert verdict["model_version"] >= 1 and verdict["warming_up"] is False
    _, spike = post_json(
        svc.port, {"latency": 8000, "input_length": 400, "errors": 0, "route": route}
    )
    assert spike["status"] == "THREAT_DETECTED" and "latency" in spike["reason"]


def test_forwarding_can_be_turned_off(bootstrap: str, tmp_path: Path) -> None:
    with running_service(bootstrap, tmp_path, "nofwd", SENTINEL_HTTP_FORWARD="false") as service:
        for _ in range(5):
            assert (
                post_json(
                    service.port, {"latency": 1, "input_length": 1, "errors": 0, "route": "/nf"}
                )[0]
                == 200
            )
        topic = service.env["SENTINEL_INPUT_TOPIC"]
        assert end_offsets(bootstrap, topic, 1) == {0: 0}
