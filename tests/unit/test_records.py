"""The hot path's record types say what the published contract says."""

from __future__ import annotations

from typing import get_type_hints

import pytest
from pydantic import BaseModel

from sentinel_stream.records import (
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
