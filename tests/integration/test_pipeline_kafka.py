"""The whole data path on a real broker: verdicts, dead letters, commits, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import cast

import jsonschema
import orjson
import pytest

from sentinel_stream.config import Settings
from sentinel_stream.records import DEAD_LETTER_HEADERS, MAX_RECORD_BYTES, Verdict
from sentinel_stream.tools.synthetic import generate
from tests.support.kafka import (
    all_committed,
    committed,
    create_topics,
    event,
    produce,
    read_all,
    wait_for,
)
from tests.support.pipeline import Running, service_topics, settings_for, values

pytestmark = pytest.mark.kafka
PARTITIONS = 3


@pytest.fixture
def topics(bootstrap: str, topic_prefix: str) -> Iterator[Settings]:
    s = settings_for(bootstrap, topic_prefix)
    create_topics(bootstrap, service_topics(s), PARTITIONS)
    yield s


def test_every_event_one_verdict_and_bad_records_to_dlq(bootstrap: str, topics: Settings) -> None:
    s = topics
    good = [(f"/r{i % 5}".encode(), event(f"/r{i % 5}", event_id=f"ev-{i}")) for i in range(300)]
    bad = [
        (b"/r1", b"{oops"),
        (b"\xfe\xff", b"\xff\xfe\xfdnot utf8"),
        (b"/r1", orjson.dumps({"latency": True, "input_length": 1, "errors": 0, "route": "/r1"})),
        (b"/r1", orjson.dumps({"latency": 1, "input_length": 1, "route": "/r1"})),
        (b"/r1", orjson.dumps({"latency": -5, "input_length": 1, "errors": 0, "route": "/r1"})),
        (b"/r1", b'{"latency": NaN, "input_length": 1, "errors": 0, "route": "/r1"}'),
        (b"/r1", orjson.dumps({"latency": 1, "input_length": 1, "errors": 0, "route": "x" * 300})),
        (b"/r1", b" " * (MAX_RECORD_BYTES + 1)),
        (None, None),
    ]
    records = good[:150] + bad + good[150:]
    produce(bootstrap, s.input_topic, records)
    with Running(s) as run:
        verdicts = read_all(bootstrap, s.output_topic, lambda got: len(got) >= 300, 90)
        dead = read_all(bootstrap, s.dlq_topic, lambda got: len(got) >= len(bad), 60)
        wait_for(
            lambda: all_committed(bootstrap, s.group_id, s.input_topic, PARTITIONS),
            60,
            "offsets of every record committed",
        )
        assert run.pipeline.status.assigned
    got = values(verdicts)
    ids = Counter(v["event_id"] for v in got)
    assert set(ids) == {f"ev-{i}" for i in range(300)} and max(ids.values()) == 1
    schema = Verdict.model_json_schema(mode="serialization")
    for v in got[:20]:
        Verdict.model_validate(v)
        jsonschema.validate(v, schema)
        assert v["route"].encode() == next(
            m.key()
            for m in verdicts
            if orjson.loads(cast(bytes, m.value()))["event_id"] == v["event_id"]
        )
    assert Counter((m.key(), m.value()) for m in dead) == Counter(bad)
    codes: Counter[str] = Counter()
    for m in dead:
        headers = dict(m.headers() or [])
        assert set(DEAD_LETTER_HEADERS) <= set(headers)
        assert headers["sentinel.source.topic"] == s.input_topic.encode()
        codes[cast(bytes, headers["sentinel.error"]).decode()] += 1
    assert codes == {"invalid_json": 1, "invalid_utf8": 1, "schema": 5, "too_large": 1, "empty": 1}


def test_anomalies_flagged_normal_mostly_not(bootstrap: str, topics: Settings) -> None:
    s = topics
    data = list(
        generate(
            6000,
            n_routes=4,
            anomaly_share=0.01,
            seed=11,
            kinds=("latency_spike", "error_burst", "oversized_input"),
        )
    )
    produce(
        bootstrap,
        s.input_topic,
        [
            (d.event["route"].encode(), orjson.dumps({**d.event, "event_id": f"e{i}"}))
            for i, d in enumerate(data)
        ],
    )
    with Running(s):
        msgs = read_all(bootstrap, s.output_topic, lambda got: len(got) >= len(data), 120)
    by_id = {v["event_id"]: v for v in values(msgs)}
    assert len(by_id) == len(data)
    warmed = [(d, by_id[f"e{i}"]) for i, d in enumerate(data) if not by_id[f"e{i}"]["warming_up"]]
    anomalies = [v for d, v in warmed if d.is_anomaly]
    normals = [v for d, v in warmed if not d.is_anomaly]
    assert len(anomalies) >= 20
    assert sum(v["is_anomaly"] for v in anomalies) / len(anomalies) >= 0.9
    assert sum(v["is_anomaly"] for v in normals) / len(normals) < 0.01
    flagged = next(v for v in anomalies if v["is_anomaly"])
    assert flagged["explanation"]["attributions"] and flagged["detector"] == "isolation_forest"


def test_anomalies_only_option(bootstrap: str, topic_prefix: str) -> None:
    s = settings_for(bootstrap, topic_prefix, anomalies_only=True)
    create_topics(bootstrap, service_topics(s), 1)
    produce(
        bootstrap,
        s.input_topic,
        [(b"/a", event("/a", event_id=f"n{i}")) for i in range(50)]
        + [(b"/a", event("/a", latency=90000.0, errors=30, event_id="boom"))],
    )
    with Running(s):
        wait_for(
            lambda: all_committed(bootstrap, s.group_id, s.input_topic, 1),
            60,
            "all records committed",
        )
        msgs = read_all(bootstrap, s.output_topic, lambda got: len(got) >= 1, 30)
    assert [v["event_id"] for v in values(msgs)] == ["boom"]


def test_sigterm_mid_stream_then_restart_loses_and_repeats_nothing(
    bootstrap: str, topics: Settings
) -> None:
    s = topics
    n = 30000
    produce(
        bootstrap,
        s.input_topic,
        [(f"/k{i % 7}".encode(), event(f"/k{i % 7}", event_id=f"x{i}")) for i in range(n)],
    )
    env = {
        **os.environ,
        "SENTINEL_KAFKA_BOOTSTRAP": bootstrap,
        "SENTINEL_GROUP_ID": s.group_id,
        "SENTINEL_INPUT_TOPIC": s.input_topic,
        "SENTINEL_OUTPUT_TOPIC": s.output_topic,
        "SENTINEL_DLQ_TOPIC": s.dlq_topic,
        "SENTINEL_STATE_TOPIC": s.state_topic,
        "SENTINEL_MEMBERS_TOPIC": s.members_topic,
        "SENTINEL_PORT": "0",
        "SENTINEL_BATCH_MAX": "200",
        "SENTINEL_REFIT_WORKERS": "1",
        "SENTINEL_LOG_FORMAT": "json",
    }
    cmd = [sys.executable, "-m", "sentinel_stream", "run"]
    first = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        # Stop it mid-stream: once some verdicts exist but far from all.
        read_all(bootstrap, s.output_topic, lambda got: len(got) >= 2000, 120)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-2000:]
    done_first = sum(
        max(o, 0) for o in committed(bootstrap, s.group_id, s.input_topic, PARTITIONS).values()
    )
    assert 0 < done_first < n, "the first run should have stopped mid-stream"
    second = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        msgs = read_all(bootstrap, s.output_topic, lambda got: len(got) >= n, 180)
        wait_for(
            lambda: all_committed(bootstrap, s.group_id, s.input_topic, PARTITIONS),
            60,
            "all offsets committed by the second run",
        )
        second.send_signal(signal.SIGTERM)
        _, err2 = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err2[-2000:]
    ids = Counter(orjson.loads(cast(bytes, m.value()))["event_id"] for m in msgs)
    assert len(ids) == n and max(ids.values()) == 1
    assert '"shutdown_requested"' in err and '"pipeline_stopped"' in err
