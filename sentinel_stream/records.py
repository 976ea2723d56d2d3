"""The records that cross the product's boundary: the contract of PRODUCT.md in code.

- The input event is validated with :class:`TelemetryEvent` (strict: a JSON ``true`` is
  not a number, NaN and infinities are not latencies).
- The output records are declared twice, on purpose: as pydantic models
  (:class:`Verdict`, :class:`ExplanationRecord`), from which the JSON Schemas under
  ``schemas/`` are generated and against which tests validate what the service
  publishes; and as ``TypedDict`` s (:class:`VerdictRecord`), which is what the hot path
  builds: a plain dict costs a fraction of a model instance per event, and the type
  checker still checks every key. ``tests/unit/test_records.py`` holds the two equal.
- The dead-letter headers and the schema version are named here once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, NotRequired, TypedDict

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict as PydanticTypedDict

MAX_RECORD_BYTES = 64 * 1024
"""A record larger than this is a bad record (``too_large``), per the input contract."""

SCHEMA_VERSION: Literal[1] = 1
"""The ``schema_version`` of every record the service writes."""

DLQ_ERROR = "sentinel.error"
DLQ_DETAIL = "sentinel.error.detail"
DLQ_SOURCE_TOPIC = "sentinel.source.topic"
DLQ_SOURCE_PARTITION = "sentinel.source.partition"
DLQ_SOURCE_OFFSET = "sentinel.source.offset"
DEAD_LETTER_HEADERS: tuple[str, ...] = (
    DLQ_ERROR,
    DLQ_DETAIL,
    DLQ_SOURCE_TOPIC,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_OFFSET,
)
DETAIL_MAX = 512
"""Longest ``sentinel.error.detail``: it names fields and rules, never values."""


LATENCY_MAX_MS = 1e12
"""The largest latency accepted (about 31 years): far beyond any real request, and small
enough that every later step (log space, float32 windows, ratios in the rule text) stays
finite."""
COUNT_MAX = 2**53 - 1
"""The largest ``input_length`` and ``errors`` accepted: JavaScript's largest safe integer,
so every count is exact as a float64 and in every JSON reader."""


def _utc_in_range(ts: datetime | None) -> datetime | None:
    """A timestamp whose UTC time falls outside years 1-9999 cannot be written as RFC 3339
    (``0001-01-01T00:00:00+01:00`` is year 0 in UTC): refuse it here, with its field named,
    rather than fail when the verdict is written."""
    if ts is None:
        return None
    try:
        return ts.astimezone(UTC)
    except OverflowError:
        raise ValueError("its UTC time falls outside years 1-9999") from None


Latency = Annotated[
    float, Field(ge=0, le=LATENCY_MAX_MS, allow_inf_nan=False, description="milliseconds")
]
Count = Annotated[int, Field(ge=0, le=COUNT_MAX)]
Route = Annotated[str, Field(min_length=1, max_length=256)]
UserId = Annotated[str | None, Field(max_length=256, description="personal data")]
Timestamp = Annotated[
    AwareDatetime | None,
    AfterValidator(_utc_in_range),
    Field(
        description="RFC 3339 with offset, its UTC time within years 1-9999; "
        "default: the Kafka record's timestamp"
    ),
]
EventId = Annotated[str | None, Field(max_length=128)]
_EVENT_CONFIG = ConfigDict(strict=True, extra="ignore")


class TelemetryEvent(BaseModel):
    """One request's telemetry, as a producer emits it to the input topic.

    Every number is bounded (:data:`LATENCY_MAX_MS`, :data:`COUNT_MAX`) and every timestamp
    must be writable in UTC, so that nothing a valid event holds can fail a later step.
    """

    model_config = ConfigDict(**_EVENT_CONFIG, frozen=True)

    latency: Latency
    input_length: Count
    errors: Count
    route: Route
    user_id: UserId = None
    timestamp: Timestamp = None
    event_id: EventId = None


@with_config(_EVENT_CONFIG)
class TelemetryEventFields(PydanticTypedDict):
    """The same event, the same rules, validated into a plain dict: what the doors
    validate with. A dict costs well under half of a model instance per event, and the
    Kafka door validates every record (``tests/unit/test_records.py`` holds the two
    definitions equal)."""

    latency: Latency
    input_length: Count
    errors: Count
    route: Route
    user_id: NotRequired[UserId]
    timestamp: NotRequired[Timestamp]
    event_id: NotRequired[EventId]


EVENT_FIELDS: TypeAdapter[TelemetryEventFields] = TypeAdapter(TelemetryEventFields)
"""Validates one input event (``validate_json`` on a record's bytes)."""


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
    schema_version: Literal[1] = SCHEMA_VERSION
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
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str
    route: str
    created_at: datetime
    explanation: LlmExplanation


class AnalyzeFlowResponse(BaseModel):
    """``POST /analyze-flow``'s answer: the v1 API's fields, then additive ones."""

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
    forwarded: bool | None = Field(
        None,
        description="with forwarding on: false when the event could not be handed to the "
        "input topic (the service's queue was full), so it trains no model",
    )
    answered_by: str | None = Field(
        None,
        description="the member (SENTINEL_INSTANCE_ID) whose model answered: the route's "
        "owner, asked by the member the caller reached",
    )


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the bad field; '(body)' for the whole body")
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx answer of the HTTP API."""

    model_config = ConfigDict(title="ErrorResponse")

    error: str = Field(description="a short machine code")
    message: str
    fields: list[FieldError] = Field(default_factory=list)


# -- the hot path's shapes of the output records ------------------------------------------


class SourceRecord(TypedDict):
    topic: str
    partition: int
    offset: int


class AttributionRecord(TypedDict):
    feature: str
    value: float
    typical: float | None
    direction: str
    weight: float


class ExplanationBody(TypedDict):
    source: Literal["rules", "llm"]
    text: str
    attributions: list[AttributionRecord]


class VerdictRecord(TypedDict):
    """A :class:`Verdict` as the hot path builds it (see the module doc)."""

    kind: Literal["verdict"]
    schema_version: Literal[1]
    event_id: str
    route: str
    event_time: str
    scored_at: str
    status: Literal["OK", "THREAT_DETECTED"]
    is_anomaly: bool
    score: float
    threshold: float
    detector: Literal["isolation_forest", "rules"]
    warming_up: bool
    model_version: int | None
    window_size: int
    explanation: ExplanationBody
    source: SourceRecord | None


class LlmExplanationBody(TypedDict):
    source: Literal["llm"]
    text: str
    model: str


class ExplanationRecordDict(TypedDict):
    """An :class:`ExplanationRecord` as the explainer builds it."""

    kind: Literal["explanation"]
    schema_version: Literal[1]
    event_id: str
    route: str
    created_at: str
    explanation: LlmExplanationBody


# -- validation errors ---------------------------------------------------------------------


def field_errors(exc: ValidationError, whole: str = "(record)") -> list[dict[str, str]]:
    """Each bad field by its dotted path (``whole`` for the document itself), with
    pydantic's message, never the value."""
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or whole
        out.append({"field": loc, "message": err["msg"]})
    return out


def describe_validation(exc: ValidationError) -> tuple[str, str]:
    """A dead-letter code (``invalid_json`` or ``schema``) and a detail naming each bad
    field, for the ``sentinel.error`` headers and HTTP's 4xx answers."""
    errors = exc.errors(include_input=False, include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return "invalid_json", "not a JSON document: " + errors[0]["msg"]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in field_errors(exc))
    return "schema", detail[:DETAIL_MAX]
