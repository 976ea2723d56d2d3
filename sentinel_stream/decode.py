"""Bytes in, validated events or bad records out: nothing is dropped, nothing raises.

Decoding is the first step of the data path and the only one that sees raw bytes. A
record that is too large, not UTF-8, not JSON, or breaks the input contract becomes a
:class:`BadRecord` that keeps its original key and value, so that the dead-letter topic
gets them byte for byte. The error detail names fields and rules, never values: it is
logged and put in a header, and payloads may carry personal data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from sentinel_stream.models import MAX_RECORD_BYTES, TelemetryEvent

DETAIL_MAX = 512


@dataclass(slots=True)
class Event:
    """A valid event with what the rest of the path needs to score and publish it."""

    route: str
    latency: float
    input_length: int
    errors: int
    event_id: str
    event_time: str
    source: tuple[str, int, int] | None
    """(topic, partition, offset); None for events that did not come from Kafka."""
    produced_ms: int | None = None
    """The Kafka record's timestamp, for the produce-to-verdict lag."""


@dataclass(slots=True)
class BadRecord:
    """A record that cannot be scored, with its original bytes and why."""

    key: bytes | None
    value: bytes | None
    error: str
    detail: str
    topic: str
    partition: int
    offset: int


_second_cache: list[tuple[int, str]] = [(-1, "")]


def iso_utc_ms(epoch_ms: int) -> str:
    """RFC 3339 UTC with milliseconds and a ``Z``, as the verdict contract shows.

    A batch's records mostly share their second, so its text is formatted once: this
    runs for every record without its own timestamp, and strftime costs ~4 µs.
    """
    sec, ms = divmod(epoch_ms, 1000)
    cached_sec, prefix = _second_cache[0]
    if sec != cached_sec:
        prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_cache[0] = (sec, prefix)
    return f"{prefix}{ms:03d}Z"


def format_event_time(ts: datetime) -> str:
    """An event's own timestamp, normalised to UTC so that verdicts sort as text."""
    utc = ts.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def describe_validation(exc: ValidationError) -> tuple[str, str]:
    """An error code and a short detail naming each bad field (never its value)."""
    errors = exc.errors(include_input=False, include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return "invalid_json", "not a JSON document: " + errors[0]["msg"]
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{loc}: {err['msg']}")
    return "schema", "; ".join(parts)


def decode_value(value: bytes) -> TelemetryEvent | tuple[str, str]:
    """Validate one record value; on failure return (code, detail)."""
    if len(value) > MAX_RECORD_BYTES:
        return "too_large", f"record is {len(value)} bytes, limit {MAX_RECORD_BYTES}"
    try:
        return TelemetryEvent.model_validate_json(value)
    except ValidationError as exc:
        code, detail = describe_validation(exc)
        if code == "invalid_json":
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as uexc:
                return "invalid_utf8", f"not UTF-8 at byte {uexc.start}"
        return code, detail[:DETAIL_MAX]


def decode_record(
    key: bytes | None,
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
) -> Event | BadRecord:
    """Turn one Kafka record into an :class:`Event` or a :class:`BadRecord`."""
    if not value:
        return BadRecord(key, value, "empty", "record has no value", topic, partition, offset)
    result = decode_value(value)
    if isinstance(result, tuple):
        return BadRecord(key, value, result[0], result[1], topic, partition, offset)
    ev = result
    return Event(
        route=ev.route,
        latency=ev.latency,
        input_length=ev.input_length,
        errors=ev.errors,
        event_id=ev.event_id or f"{topic}-{partition}-{offset}",
        event_time=(
            format_event_time(ev.timestamp)
            if ev.timestamp is not None
            else iso_utc_ms(timestamp_ms)
        ),
        source=(topic, partition, offset),
        produced_ms=timestamp_ms,
    )
