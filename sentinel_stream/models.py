"""The records that cross the product's boundary, as pydantic models.

These models are the contract of ../PRODUCT.md in code: the input event is validated
with :class:`TelemetryEvent` (strict: a JSON ``true`` is not a number, NaN and
infinities are not latencies), and the JSON Schemas published under ``schemas/`` are
generated from the output models here (``sentinel-stream schemas``).

The hot path does not build :class:`Verdict` objects (building a model per event
costs more than scoring it); it builds plain dicts of the same shape, and a test
validates what the pipeline publishes against these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

MAX_RECORD_BYTES = 64 * 1024
"""A record larger than this is a bad record (``too_large``), per the input contract."""

SCHEMA_VERSION = 1

FEATURES: tuple[str, ...] = ("latency", "input_length", "errors")
"""The telemetry features the detector learns from, in column order."""


class TelemetryEvent(BaseModel):
    """One request's telemetry, as a producer emits it to the input topic."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    latency: Annotated[float, Field(ge=0, allow_inf_nan=False, description="milliseconds")]
    input_length: Annotated[int, Field(ge=0)]
    errors: Annotated[int, Field(ge=0)]
    route: Annotated[str, Field(min_length=1, max_length=256)]
    user_id: Annotated[str | None, Field(max_length=256, description="personal data")] = None
    timestamp: Annotated[
        AwareDatetime | None,
        Field(description="RFC 3339 with offset; default: the Kafka record's timestamp"),
    ] = None
    event_id: Annotated[str | None, Field(max_length=128)] = None


class Attribution(BaseModel):
    """How much one feature made an event anomalous, and which way it moved."""

    feature: Literal["latency", "input_length", "errors"]
    value: float
    typical: float | None = Field(description="the route's median, null with no history")
    direction: Literal["high", "low", "typical"]
    weight: float = Field(ge=0, le=1, description="share of the anomaly; weights sum to 1")


class Explanation(BaseModel):
    """Why a verdict is what it is, in words and per feature."""

    source: Literal["rules", "llm"]
    text: str
    attributions: list[Attribution] = Field(default_factory=list)


class SourceRef(BaseModel):
    """Where the event was read from, so that a verdict can be traced to its record."""

    topic: str
    partition: int
    offset: int


class Verdict(BaseModel):
    """The record published on the output topic for every valid input event."""

    model_config = ConfigDict(title="Verdict")

    kind: Literal["verdict"] = "verdict"
    schema_version: Literal[1] = 1
    event_id: str
    route: str
    event_time: datetime
    scored_at: datetime
    status: Literal["OK", "THREAT_DETECTED"]
    is_anomaly: bool
    score: float = Field(ge=0, le=1, description="higher = more anomalous")
    threshold: float = Field(ge=0, le=1, description="the score at which the verdict flips")
    detector: Literal["isolation_forest", "rules"]
    warming_up: bool
    model_version: int | None = Field(description="null while warming up")
    window_size: int = Field(ge=0, description="events in the route's window when scored")
    explanation: Explanation
    source: SourceRef | None = Field(description="null for events that came over HTTP")


class LlmExplanation(BaseModel):
    """An LLM's explanation body: it follows a verdict, never holds one up."""

    source: Literal["llm"] = "llm"
    text: str
    model: str


class ExplanationRecord(BaseModel):
    """The record that carries an LLM explanation, on the output topic after the verdict."""

    model_config = ConfigDict(title="ExplanationRecord")

    kind: Literal["explanation"] = "explanation"
    schema_version: Literal[1] = 1
    event_id: str
    route: str
    created_at: datetime
    explanation: LlmExplanation


DEAD_LETTER_HEADERS: tuple[str, ...] = (
    "sentinel.error",
    "sentinel.error.detail",
    "sentinel.source.topic",
    "sentinel.source.partition",
    "sentinel.source.offset",
)


class AnalyzeFlowResponse(BaseModel):
    """``POST /analyze-flow``'s answer: the older API's fields, then additive ones."""

    model_config = ConfigDict(title="AnalyzeFlowResponse")

    status: Literal["OK", "THREAT_DETECTED"]
    action: Literal["freeze"] | None = Field(None, description="THREAT_DETECTED only")
    reason: str | None = Field(None, description="THREAT_DETECTED only: why, in words")
    reason_source: Literal["llm"] | None = Field(
        None, description="'llm' when the reason is the LLM's (else the rule text)"
    )
    prediction_score: float | None = Field(None, ge=0, le=1, description="THREAT_DETECTED only")
    confidence: float | None = Field(
        None, ge=0, le=1, description="THREAT_DETECTED only: 0.5 at the threshold, 1 far above"
    )
    event_id: str
    score: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0, le=1)
    detector: Literal["isolation_forest", "rules"]
    warming_up: bool
    model_version: int | None
    explanation: Explanation


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the bad field; '(body)' for the whole body")
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx answer of the HTTP API."""

    model_config = ConfigDict(title="ErrorResponse")

    error: str = Field(description="a short machine code")
    message: str
    fields: list[FieldError] = Field(default_factory=list)
