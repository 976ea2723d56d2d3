"""The hot path's record types say what the published contract says."""

from __future__ import annotations

import json
from typing import get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sentinel_stream.records import (
    EVENT_FIELDS,
    Attribution,
    AttributionRecord,
    Explanation,
    ExplanationBody,
    ExplanationRecord,
    ExplanationRecordDict,
    LlmExplanation,
    LlmExplanationBody,
    SourceRecord,
    SourceRef,
    TelemetryEvent,
    Verdict,
    VerdictRecord,
)


@pytest.mark.parametrize(
    ("typed", "model"),
    [
        (VerdictRecord, Verdict),
        (ExplanationBody, Explanation),
        (AttributionRecord, Attribution),
        (SourceRecord, SourceRef),
        (ExplanationRecordDict, ExplanationRecord),
        (LlmExplanationBody, LlmExplanation),
    ],
)
def test_typed_dict_has_the_models_fields(typed: type, model: type[BaseModel]) -> None:
    assert list(get_type_hints(typed)) == list(model.model_fields)
    assert typed.__required_keys__ == frozenset(model.model_fields)  # type: ignore[attr-defined]


def test_the_event_dict_and_model_publish_one_schema() -> None:
    model = TelemetryEvent.model_json_schema()
    fields = EVENT_FIELDS.json_schema()
    for prop in model["properties"].values():
        prop.pop("default", None)  # the model's optional fields default to null
    assert fields["properties"] == model["properties"]
    assert fields["required"] == model["required"]


event_bodies = st.fixed_dictionaries(
    {},
    optional={
        "latency": st.one_of(
            st.floats(), st.integers(min_value=-5, max_value=10**14), st.booleans(), st.text()
        ),
        "input_length": st.one_of(st.integers(min_value=-5, max_value=2**60), st.floats()),
        "errors": st.one_of(st.integers(min_value=-5, max_value=2**54), st.none()),
        "route": st.text(max_size=260),
        "user_id": st.one_of(st.none(), st.text(max_size=260), st.integers()),
        "timestamp": st.one_of(
            st.none(),
            st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
            st.datetimes().map(lambda d: d.isoformat()),
            st.text(max_size=30),
        ),
        "event_id": st.one_of(st.none(), st.text(max_size=130)),
        "other": st.integers(),
    },
)


@settings(max_examples=500, deadline=None)
@given(body=event_bodies)
def test_the_event_dict_and_model_accept_and_reject_the_same(body: dict[str, object]) -> None:
    raw = json.dumps(body).encode()
    try:
        model = TelemetryEvent.model_validate_json(raw).model_dump(exclude_none=True)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as other:
            EVENT_FIELDS.validate_json(raw)
        assert {e["loc"] for e in exc.errors()} == {e["loc"] for e in other.value.errors()}
        return
    assert {k: v for k, v in EVENT_FIELDS.validate_json(raw).items() if v is not None} == model
