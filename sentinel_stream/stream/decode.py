"""Bytes in, validated events or bad records out: nothing is dropped, nothing raises.

Decoding is the first step of the data path and the only one that sees raw bytes. A
record that is too large, not UTF-8, not JSON, or breaks the input contract becomes a
:class:`BadRecord` that keeps its original key and value, so that the dead-letter topic
gets them byte for byte. The error detail names fields and rules, never values: it is
logged and put in a header, and payloads may carry personal data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import ValidationError

from sentinel_stream.clock import in_range, iso_utc_ms
from sentinel_stream.engine import Event
from sentinel_stream.records import MAX_RECORD_BYTES, TelemetryEvent, describe_validation


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
        return code, detail


def decode_record(
    key: bytes | None,
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
) -> Event | BadRecord:
    """Turn one Kafka record into an :class:`Event` or a :class:`BadRecord`.

    ``timestamp_ms`` is the record's Kafka timestamp, None when the record has none (the
    time of decoding stands in for it then).
    """
    if not value:
        return BadRecord(key, value, "empty", "record has no value", topic, partition, offset)
    result = decode_value(value)
    if isinstance(result, tuple):
        return BadRecord(key, value, result[0], result[1], topic, partition, offset)
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    elif result.timestamp is None and not in_range(timestamp_ms):
        # The event's time would be the record's, which RFC 3339 cannot write.
        detail = "timestamp: absent, and the Kafka record's timestamp is outside years 1-9999"
        return BadRecord(key, value, "schema", detail, topic, partition, offset)
    return Event.from_record(
        result,
        default_id=f"{topic}-{partition}-{offset}",
        default_time=iso_utc_ms(timestamp_ms) if result.timestamp is None else "",
        source=(topic, partition, offset),
        produced_ms=timestamp_ms,
    )
