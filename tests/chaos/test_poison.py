"""Every kind of poison record, through a real ``sentinel-stream run`` process.

Each of these once stopped a member (and, on restart, the next member that read it), or
could have: the process must stay up, and every record must come out as a verdict or a
dead letter with its original bytes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from confluent_kafka import KafkaError, Producer

# confluent_kafka.admin re-exports NewTopic from cimpl without marking it public
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sentinel_stream.clock import EPOCH_MS_MAX
from sentinel_stream.records import DLQ_ERROR, MAX_RECORD_BYTES
from tests.support.chaos import TALLIES, Tally
from tests.support.kafka import all_committed, read_all, wait_for
from tests.support.service import free_port, ready, service_env, start, topic_names

pytestmark = pytest.mark.kafka

OK = {"latency": 12.5, "input_length": 100, "errors": 0, "route": "/a"}


def _json(**fields: object) -> bytes:
    return orjson.dumps({**OK, **fields})


# (value, Kafka timestamp or None, expected outcome: "verdict" or a dead-letter code)
POISON: list[tuple[bytes | None, int | None, str]] = [
    (_json(timestamp="0001-01-01T00:00:00+01:00"), None, "schema"),
    (_json(timestamp="9999-12-31T23:59:59-01:00"), None, "schema"),
    (_json(timestamp="0001-01-01T00:00:00Z"), None, "verdict"),
    (_json(timestamp="9999-12-31T23:59:59.999+00:00"), None, "verdict"),
    (
        b'{"latency": 1, "input_length": 18446744073709551616, "errors": 0, "route": "/a"}',
        None,
        "schema",
    ),
    (
        b'{"latency": 1, "input_length": 1, "errors": 1' + b"0" * 400 + b', "route": "/a"}',
        None,
        "schema",
    ),
    (_json(latency=1e308), None, "schema"),
    (_json(), EPOCH_MS_MAX + 1, "schema"),  # a Kafka timestamp past year 9999
    (_json(timestamp="2026-01-01T00:00:00Z"), EPOCH_MS_MAX + 1, "verdict"),
    (b'{"latency": 1, "input_length": 1, "errors": 0, "route": "\\ud800"}', None, "invalid_json"),
    (b"\xef\xbb\xbf" + _json(), None, "invalid_json"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, None, "invalid_json"),
    (b"{oops", None, "invalid_json"),
    (b"\xff\xfe\xfd", None, "invalid_utf8"),
    (b"", None, "empty"),
    (None, None, "empty"),
    (_json(pad="x" * MAX_RECORD_BYTES), None, "too_large"),
    (b'{"latency": 1, "pad": "' + b"x" * 1_500_000 + b'"}', None, "too_large"),
    (_json(latency=True), None, "schema"),
    (_json(route="r" * 300), None, "schema"),
]


def test_every_kind_of_poison_record_gets_a_verdict_or_a_dead_letter(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    names = topic_names(topic_prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # An input topic that accepts records over librdkafka's default 1,000,000 bytes, and
    # timestamps far in the future (the broker's default refuses them); the service
    # creates the others (the DLQ sized to hold any input record).
    config = {
        "max.message.bytes": "2000000",
        "message.timestamp.after.max.ms": str(2**63 - 1),
    }
    for f in admin.create_topics(
        [NewTopic(names["SENTINEL_INPUT_TOPIC"], 2, 1, config=config)]
    ).values():
        f.result(30)
    failed: list[str] = []

    def delivered(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            failed.append(err.str())

    # One record per request, so that one refused record cannot take others with it.
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "message.max.bytes": 3_000_000,
            "linger.ms": 0,
            "enable.idempotence": True,
        }
    )
    topic = names["SENTINEL_INPUT_TOPIC"]
    for i, (value, ts, _) in enumerate(POISON):
        p.produce(topic, _json(event_id=f"before-{i}"), b"/a", on_delivery=delivered)
        kwargs: dict[str, Any] = {"timestamp": ts} if ts is not None else {}
        p.produce(topic, value, f"/poison/{i}".encode(), on_delivery=delivered, **kwargs)
        assert p.flush(30) == 0
    p.produce(topic, _json(event_id="last"), b"/a", on_delivery=delivered)
    assert p.flush(30) == 0 and failed == []

    port = free_port()
    env = service_env(bootstrap, topic_prefix, port, SENTINEL_CREATE_TOPICS="true")
    proc = start(env, tmp_path, "poison")
    try:
        wait_for(lambda: ready(proc, port), 120, "/ready")
        expected_verdicts = len(POISON) + 1 + sum(o == "verdict" for _, _, o in POISON)
        expected_dead = sum(o != "verdict" for _, _, o in POISON)
        verdicts = read_all(
            bootstrap, names["SENTINEL_OUTPUT_TOPIC"], lambda m: len(m) >= expected_verdicts, 90
        )
        dead = read_all(
            bootstrap, names["SENTINEL_DLQ_TOPIC"], lambda m: len(m) >= expected_dead, 90
        )
        wait_for(
            lambda: all_committed(
                bootstrap, env["SENTINEL_GROUP_ID"], env["SENTINEL_INPUT_TOPIC"], 2
            ),
            60,
            "every record committed",
        )
        proc.alive()
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(30)
    assert len(verdicts) == expected_verdicts
    got = Counter(cast(bytes, dict(m.headers() or [])[DLQ_ERROR]).decode() for m in dead)
    want = Counter(o for _, _, o in POISON if o != "verdict")
    assert got == want
    # Byte for byte (an empty value and a null one both read back as no bytes).
    originals = Counter(
        (f"/poison/{i}".encode(), v or b"") for i, (v, _, o) in enumerate(POISON) if o != "verdict"
    )
    assert Counter((m.key(), m.value() or b"") for m in dead) == originals
    TALLIES.append(
        Tally(
            "poison records of every kind",
            events_in=len(POISON) * 2 + 1,
            verdicts=len(verdicts),
            notes=[f"{len(dead)} dead letters, each with its original bytes; member stayed up"],
        )
    )
