"""Bytes in, validated events or bad records out: nothing is dropped, nothing raises.

Decoding is the first step of the data path and the only one that sees raw bytes. A
record that is too large, not UTF-8, not JSON, or breaks the input contract becomes a
:class:`BadRecord` that keeps its original key and value, so that the dead-letter topic
gets them byte for byte. The error detail names fields and rules, never values: it is
logged and put in a header, and payloads may carry personal data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, Message
from pydantic import ValidationError

from sentinel_stream.clock import format_event_time, in_range, iso_utc_ms
from sentinel_stream.engine import Event
from sentinel_stream.records import (
    EVENT_FIELDS,
    MAX_RECORD_BYTES,
    TelemetryEventFields,
    describe_validation,
)

validate = EVENT_FIELDS.validate_json


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


def decode_value(value: bytes) -> TelemetryEventFields | tuple[str, str]:
    """Validate one record value; on failure return (code, detail)."""
    if len(value) > MAX_RECORD_BYTES:
        return "too_large", f"record is {len(value)} bytes, limit {MAX_RECORD_BYTES}"
    try:
        return validate(value)
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
    own_time = result.get("timestamp") is not None
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    elif not own_time and not in_range(timestamp_ms):
        # The event's time would be the record's, which RFC 3339 cannot write.
        detail = "timestamp: absent, and the Kafka record's timestamp is outside years 1-9999"
        return BadRecord(key, value, "schema", detail, topic, partition, offset)
    return Event.from_record(
        result,
        default_id=f"{topic}-{partition}-{offset}",
        default_time="" if own_time else iso_utc_ms(timestamp_ms),
        source=(topic, partition, offset),
        produced_ms=timestamp_ms,
    )


@dataclass(slots=True)
class Decoded:
    """One consumed batch, decoded: what the rest of the loop needs of it."""

    events: list[Event]
    raws: list[tuple[bytes | None, bytes | None]]
    """Each event's original key and value (for a dead letter, should it fail later)."""
    features: npt.NDArray[np.float64]
    """(events, 3): latency, input length, errors (what the engine scores)."""
    bad: list[BadRecord]
    last: dict[int, int]
    """Partition -> the last offset in the batch (processed once its outputs are out)."""
    skipped: int
    """Records of partitions no longer owned: left to their new owner."""


def decode_batch(
    msgs: list[Message],
    topic: str,
    owned: Collection[int],
    on_error: Callable[[KafkaError], None],
) -> Decoded:
    """:func:`decode_record` for a consumed batch, with the features built as it goes.

    The loop body is :func:`decode_record`, inlined: this runs once per record and is
    most of what the Kafka door costs besides librdkafka itself (the benchmark report
    has the profile). ``tests/unit/test_decode.py`` holds the two equal.
    """
    events: list[Event] = []
    raws: list[tuple[bytes | None, bytes | None]] = []
    bad: list[BadRecord] = []
    last: dict[int, int] = {}
    features: list[float] = []
    add = features.extend
    skipped = 0
    for msg in msgs:
        err = msg.error()
        if err is not None:
            on_error(err)
            continue
        partition = msg.partition() or 0
        if partition not in owned:
            skipped += 1
            continue
        offset = msg.offset() or 0
        last[partition] = offset
        key, value = msg.key(), msg.value()
        ts_type, ts = msg.timestamp()
        timestamp_ms = None if ts_type == TIMESTAMP_NOT_AVAILABLE else ts
        if not value or len(value) > MAX_RECORD_BYTES:
            rec = decode_record(key, value, topic, partition, offset, timestamp_ms)
            assert isinstance(rec, BadRecord)
            bad.append(rec)
            continue
        try:
            fields = validate(value)
        except ValidationError:
            rec = decode_record(key, value, topic, partition, offset, timestamp_ms)
            assert isinstance(rec, BadRecord)
            bad.append(rec)
            continue
        ts_own = fields.get("timestamp")
        if ts_own is not None:
            event_time = format_event_time(ts_own)
        elif timestamp_ms is None:
            timestamp_ms = int(time.time() * 1000)
            event_time = iso_utc_ms(timestamp_ms)
        elif in_range(timestamp_ms):
            event_time = iso_utc_ms(timestamp_ms)
        else:
            rec = decode_record(key, value, topic, partition, offset, timestamp_ms)
            assert isinstance(rec, BadRecord)
            bad.append(rec)
            continue
        latency, input_length, errors = fields["latency"], fields["input_length"], fields["errors"]
        events.append(
            Event(
                fields["route"],
                latency,
                input_length,
                errors,
                fields.get("event_id") or f"{topic}-{partition}-{offset}",
                event_time,
                (topic, partition, offset),
                timestamp_ms,
            )
        )
        add((latency, input_length, errors))
        raws.append((key, value))
    return Decoded(
        events,
        raws,
        np.array(features, dtype=np.float64).reshape(-1, 3),
        bad,
        last,
        skipped,
    )
