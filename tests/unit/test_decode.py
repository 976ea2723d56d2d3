"""Decoding: every rule of the input contract, and bad records keep their bytes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from confluent_kafka import KafkaError, Message

from sentinel_stream.clock import EPOCH_MS_MAX, EPOCH_MS_MIN
from sentinel_stream.engine import Event
from sentinel_stream.records import COUNT_MAX, LATENCY_MAX_MS, MAX_RECORD_BYTES
from sentinel_stream.stream.decode import BadRecord, decode_batch, decode_record

GOOD = {"latency": 12.5, "input_length": 10, "errors": 0, "route": "/a"}


def dec(value: bytes | None, key: bytes | None = b"/a") -> Event | BadRecord:
    return decode_record(key, value, "telemetry", 2, 41, 1_700_000_000_123)


def test_valid_event_defaults() -> None:
    ev = dec(orjson.dumps(GOOD))
    assert isinstance(ev, Event)
    assert ev.event_id == "telemetry-2-41"
    assert ev.event_time == "2023-11-14T22:13:20.123Z"
    assert ev.source == ("telemetry", 2, 41)


def test_own_timestamp_and_id_and_unknown_fields() -> None:
    ev = dec(
        orjson.dumps(
            {**GOOD, "timestamp": "2026-01-01T01:00:00.250+01:00", "event_id": "e1", "x": 1}
        )
    )
    assert isinstance(ev, Event)
    assert ev.event_time == "2026-01-01T00:00:00.250Z"
    assert ev.event_id == "e1"


BAD_CASES = [
    (b"{not json", "invalid_json", ""),
    (b"\xff\xfe\x00garbage", "invalid_utf8", ""),
    (orjson.dumps({**GOOD, "errors": True}), "schema", "errors"),
    (orjson.dumps({**GOOD, "input_length": 1.5}), "schema", "input_length"),
    (orjson.dumps({**GOOD, "latency": "12"}), "schema", "latency"),
    (orjson.dumps({k: v for k, v in GOOD.items() if k != "route"}), "schema", "route"),
    (orjson.dumps({**GOOD, "latency": -1}), "schema", "latency"),
    (orjson.dumps({**GOOD, "errors": -3}), "schema", "errors"),
    (b'{"latency": NaN, "input_length": 1, "errors": 0, "route": "/a"}', "schema", "latency"),
    (b'{"latency": 1e999, "input_length": 1, "errors": 0, "route": "/a"}', "schema", "latency"),
    (orjson.dumps({**GOOD, "route": ""}), "schema", "route"),
    (orjson.dumps({**GOOD, "route": "r" * 257}), "schema", "route"),
    (orjson.dumps({**GOOD, "user_id": "u" * 257}), "schema", "user_id"),
    (orjson.dumps({**GOOD, "event_id": "e" * 129}), "schema", "event_id"),
    (orjson.dumps({**GOOD, "timestamp": "2026-01-01T00:00:00"}), "schema", "timestamp"),
    (b"[1, 2]", "schema", ""),
    # Values a valid schema would have let through before: each later step must be safe.
    (orjson.dumps({**GOOD, "timestamp": "0001-01-01T00:00:00+01:00"}), "schema", "timestamp"),
    (orjson.dumps({**GOOD, "timestamp": "9999-12-31T23:59:59-01:00"}), "schema", "timestamp"),
    (
        b'{"latency": 1, "input_length": 18446744073709551616, "errors": 0, "route": "/a"}',
        "schema",
        "input_length",
    ),
    (
        b'{"latency": 1, "input_length": 1, "errors": 1' + b"0" * 400 + b', "route": "/a"}',
        "schema",
        "errors",
    ),
    (orjson.dumps({**GOOD, "latency": 1e300}), "schema", "latency"),
    (b'{"latency": 1, "input_length": 1, "errors": 0, "route": "\\ud800"}', "invalid_json", ""),
    (
        b'\xef\xbb\xbf{"latency": 1, "input_length": 1, "errors": 0, "route": "/a"}',
        "invalid_json",
        "",
    ),
    (b'{"a":' * 3000 + b"1" + b"}" * 3000, "invalid_json", ""),
    (orjson.dumps({**GOOD, "pad": "x" * MAX_RECORD_BYTES}), "too_large", ""),
    (b"", "empty", ""),
]


@pytest.mark.parametrize(("value", "code", "field"), BAD_CASES)
def test_bad_records(value: bytes, code: str, field: str) -> None:
    rec = dec(value, key=b"\x00key")
    assert isinstance(rec, BadRecord)
    assert rec.error == code
    assert rec.value == value and rec.key == b"\x00key"
    assert field in rec.detail
    assert (rec.topic, rec.partition, rec.offset) == ("telemetry", 2, 41)


def test_detail_never_carries_the_value() -> None:
    rec = dec(orjson.dumps({**GOOD, "user_id": "secret-person-" + "x" * 300}))
    assert isinstance(rec, BadRecord)
    assert "secret-person" not in rec.detail


def test_the_extremes_that_are_valid_decode_and_format() -> None:
    for ts, want in [
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("9999-12-31T23:59:59.999+00:00", "9999-12-31T23:59:59.999Z"),
        ("0001-01-01T05:30:00+05:30", "0001-01-01T00:00:00.000Z"),
    ]:
        ev = dec(
            orjson.dumps(
                {
                    **GOOD,
                    "timestamp": ts,
                    "latency": LATENCY_MAX_MS,
                    "input_length": COUNT_MAX,
                    "errors": COUNT_MAX,
                }
            )
        )
        assert isinstance(ev, Event), ts
        assert ev.event_time == want


@pytest.mark.parametrize("kafka_ms", [EPOCH_MS_MAX + 1, EPOCH_MS_MIN - 1, 2**62])
def test_a_kafka_timestamp_rfc_3339_cannot_write_is_a_schema_error(kafka_ms: int) -> None:
    rec = decode_record(b"/a", orjson.dumps(GOOD), "telemetry", 0, 7, kafka_ms)
    assert isinstance(rec, BadRecord) and rec.error == "schema" and "timestamp" in rec.detail
    # With its own timestamp the event does not need the record's.
    own = orjson.dumps({**GOOD, "timestamp": "2026-01-01T00:00:00Z"})
    assert isinstance(decode_record(b"/a", own, "telemetry", 0, 7, kafka_ms), Event)


def test_a_record_without_a_kafka_timestamp_takes_the_time_of_decoding() -> None:
    before = datetime.now(UTC)
    ev = decode_record(b"/a", orjson.dumps(GOOD), "telemetry", 0, 7, None)
    assert isinstance(ev, Event)
    when = datetime.fromisoformat(ev.event_time)
    assert before - timedelta(seconds=1) <= when <= datetime.now(UTC)


def test_the_batch_decoder_equals_decode_record() -> None:
    cases: list[tuple[bytes | None, int | None]] = [(v, 1_700_000_000_123) for v, _, _ in BAD_CASES]
    cases += [
        (orjson.dumps(GOOD), 1_700_000_000_123),
        (orjson.dumps({**GOOD, "event_id": "own", "route": "/b"}), 5),
        (orjson.dumps({**GOOD, "timestamp": "2026-01-01T00:00:00+02:00"}), EPOCH_MS_MAX + 1),
        (orjson.dumps(GOOD), EPOCH_MS_MAX + 1),
        (orjson.dumps({**GOOD, "latency": 7.5, "errors": 3}), 0),
    ]
    msgs = [
        Message(
            topic="telemetry",
            partition=i % 3,
            offset=100 + i,
            key=b"k%d" % i,
            value=value,
            timestamp=(1, ts) if ts is not None else (0, -1),
        )
        for i, (value, ts) in enumerate(cases)
    ]
    batch = decode_batch(msgs, "telemetry", {0, 1, 2}, lambda err: None)
    one_by_one = [
        decode_record(m.key(), m.value(), "telemetry", m.partition() or 0, m.offset() or 0, ts)
        for m, (_, ts) in zip(msgs, cases, strict=True)
    ]
    events = [r for r in one_by_one if isinstance(r, Event)]
    bad = [r for r in one_by_one if isinstance(r, BadRecord)]
    assert bad == batch.bad
    assert len(events) == len(batch.events) == len(batch.raws) == len(batch.features)
    for mine, theirs in zip(batch.events, events, strict=True):
        if theirs.produced_ms is not None and mine.produced_ms is not None:
            assert abs(mine.produced_ms - theirs.produced_ms) < 5_000  # "now" for no stamp
            mine.produced_ms = theirs.produced_ms
            mine.event_time = (
                theirs.event_time
                if mine.event_time[:13] == theirs.event_time[:13]
                else mine.event_time
            )
        assert mine == theirs
    assert batch.features.tolist() == [[e.latency, e.input_length, e.errors] for e in events]
    assert batch.last == {
        0: max(100 + i for i in range(len(cases)) if i % 3 == 0),
        1: max(100 + i for i in range(len(cases)) if i % 3 == 1),
        2: max(100 + i for i in range(len(cases)) if i % 3 == 2),
    }


def test_the_batch_decoder_leaves_revoked_partitions_and_reports_errors() -> None:
    msgs = [
        Message(
            topic="telemetry", partition=0, offset=1, value=orjson.dumps(GOOD), timestamp=(1, 5)
        ),
        Message(
            topic="telemetry", partition=1, offset=1, value=orjson.dumps(GOOD), timestamp=(1, 5)
        ),
        Message(error=KafkaError(KafkaError._TRANSPORT)),
    ]
    errors: list[KafkaError] = []
    batch = decode_batch(msgs, "telemetry", {1}, errors.append)
    assert batch.skipped == 1 and len(batch.events) == 1 and batch.last == {1: 1}
    assert [e.code() for e in errors] == [KafkaError._TRANSPORT]
