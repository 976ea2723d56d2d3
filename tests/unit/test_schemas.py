"""The published JSON Schemas are what the code generates, and real records validate."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import jsonschema
import orjson
import pytest

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine, Event
from sentinel_stream.records import ExplanationRecord
from sentinel_stream.tools.schemas import SCHEMAS, render
from tests.support.kafka import event

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return schema


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_published_schema_is_what_the_code_generates(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.is_file(), f"{path} is missing: run `sentinel-stream schemas`"
    assert path.read_text(encoding="utf-8") == render(SCHEMAS[name]), (
        f"{path} differs from the model: run `sentinel-stream schemas` and commit the result"
    )


def test_no_stale_schema_is_published() -> None:
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_published_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def make_event(i: int, route: str = "/api/test", **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "route": route,
        "latency": 100.0 + i % 7,
        "input_length": 500 + i % 13,
        "errors": 0,
        "event_id": f"ev-{i}",
        "event_time": "2026-01-01T00:00:00.000Z",
        "source": ("telemetry", 0, i),
    }
    fields.update(kw)
    return Event(**fields)


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(Settings(refit_workers=0, seed=1))
    try:
        yield e
    finally:
        e.close()


def assert_times(v: dict[str, Any]) -> None:
    # jsonschema checks "format": "date-time" only with an optional package; check here.
    for key in ("event_time", "scored_at"):
        assert datetime.fromisoformat(v[key]).tzinfo is not None, (key, v[key])


def test_verdicts_from_the_engine_validate_against_the_published_schema(engine: Engine) -> None:
    check = validator("verdict.schema.json")
    warming = engine.process([make_event(0)])
    assert warming[0]["warming_up"] and warming[0]["model_version"] is None
    # A model fitted during one batch is installed before the next one is scored.
    normal = engine.process([make_event(i) for i in range(1, 200)])
    trained = engine.process([make_event(i) for i in range(200, 300)])[-1]
    assert trained["detector"] == "isolation_forest" and isinstance(trained["model_version"], int)
    threat = engine.process(
        [make_event(999, latency=90000.0, errors=30, source=None, event_id="boom")]
    )[0]
    assert threat["is_anomaly"] and threat["status"] == "THREAT_DETECTED"
    assert threat["explanation"]["attributions"] and threat["source"] is None
    for v in [warming[0], normal[0], normal[-1], trained, threat]:
        # What the pipeline publishes is the orjson form of the dict.
        published = orjson.loads(orjson.dumps(v))
        check.validate(published)
        assert_times(published)


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("score",), 1.5),
        (("status",), "MAYBE"),
        (("detector",), "magic"),
        (("explanation", "source"), "oracle"),
        (("source",), {"topic": "t", "partition": "zero", "offset": 1}),
        (("model_version",), "seven"),
    ],
)
def test_verdict_schema_rejects_broken_verdicts(
    engine: Engine, path: tuple[str, ...], bad: object
) -> None:
    v = cast(dict[str, Any], copy.deepcopy(engine.process([make_event(0)])[0]))
    validator("verdict.schema.json").validate(v)
    target = v
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError):
        validator("verdict.schema.json").validate(v)


def test_verdict_schema_requires_every_field(engine: Engine) -> None:
    v = engine.process([make_event(0)])[0]
    check = validator("verdict.schema.json")
    for key in v:
        if key in ("kind", "schema_version"):
            continue  # defaults in the model, so not required by the schema
        broken: dict[str, Any] = {k: x for k, x in v.items() if k != key}
        with pytest.raises(jsonschema.ValidationError):
            check.validate(broken)


def test_producer_events_validate_against_the_event_schema() -> None:
    check = validator("telemetry-event.schema.json")
    check.validate(orjson.loads(event("/api/x", user_id="u1", timestamp="2026-01-01T00:00:00Z")))
    with pytest.raises(jsonschema.ValidationError):
        check.validate(orjson.loads(event("/api/x", latency=-1)))
    with pytest.raises(jsonschema.ValidationError):
        check.validate({"latency": 1.0, "input_length": 1, "errors": 0})


def test_explanation_record_validates_against_its_schema() -> None:
    record = ExplanationRecord.model_validate(
        {
            "event_id": "ev-1",
            "route": "/api/test",
            "created_at": "2026-01-01T00:00:00Z",
            "explanation": {"text": "a latency spike", "model": "llama3.2:1b"},
        }
    )
    check = validator("explanation.schema.json")
    check.validate(json.loads(record.model_dump_json()))
    with pytest.raises(jsonschema.ValidationError):
        check.validate({**json.loads(record.model_dump_json()), "kind": "verdict"})
