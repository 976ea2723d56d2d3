"""Chaos on real brokers: one stopped and started again, and a 3-broker cluster losing one.

Each case owns its brokers (``private_broker``, ``private_cluster``), runs members as
real processes, and counts what a ``read_committed`` reader saw against what the broker
acknowledged (see :mod:`tests.support.chaos`).

``CHAOS_OUTAGE_S`` sets the broker outage (default 20 s; ``scripts/chaos.sh`` runs the
60 s the service promises to ride out).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chaos import (
    RATE,
    SESSION_TIMEOUT_MS,
    Group,
    VerifiableConsumer,
    VerifiableProducer,
    seconds,
    tally,
)
from tests.support.kafka import create_topics, wait_for
from tests.support.kafka_broker import LocalKafka, private_broker, private_cluster
from tests.support.service import http_get, scrape, topic_names

pytestmark = pytest.mark.kafka

OUTAGE_S = float(os.environ.get("CHAOS_OUTAGE_S", "20"))
PARTITIONS = 6


def _status(port: int, path: str) -> int:
    try:
        return http_get(port, path, timeout=5)[0]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _analyze(port: int, route: str) -> dict[str, Any]:
    body = json.dumps({"latency": 50.0, "input_length": 10, "errors": 0, "route": route})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/analyze-flow",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


@pytest.fixture
def broker() -> Iterator[LocalKafka]:
    with private_broker() as kafka:
        yield kafka


@pytest.fixture
def cluster() -> Iterator[LocalKafka]:
    with private_cluster(3) as kafka:
        yield kafka


def test_a_broker_outage_is_ridden_out(broker: LocalKafka, tmp_path: Path) -> None:
    prefix = "outage"
    names = topic_names(prefix)
    create_topics(broker.bootstrap, names.values(), PARTITIONS)
    group = Group(broker.bootstrap, prefix, tmp_path, {"SENTINEL_SIDE_QUEUE_MAX": "100"})
    events = int((seconds(10) + OUTAGE_S) * RATE)
    group.start("a")
    group.wait_ready("a")
    port = group.members["a"][1]
    consumer = VerifiableConsumer(broker.bootstrap, names["SENTINEL_OUTPUT_TOPIC"])
    producer = VerifiableProducer(
        broker.bootstrap, names["SENTINEL_INPUT_TOPIC"], events, RATE, "outage"
    ).start()
    try:
        time.sleep(seconds(4))
        fault_start = time.monotonic()
        broker.stop_node(1)
        # While no broker answers: alive, not ready, HTTP still answers and says when its
        # event could not be handed on.
        wait_for(lambda: _status(port, "/ready") == 503, 30, "/ready to turn 503")
        health: list[int] = []
        not_forwarded = 0
        while time.monotonic() - fault_start < OUTAGE_S:
            group.alive()
            health.append(_status(port, "/health"))
            for _ in range(20):
                if _analyze(port, "/http/during-outage").get("forwarded") is False:
                    not_forwarded += 1
            time.sleep(0.5)
        assert set(health) == {200}, health
        assert not_forwarded > 0
        broker.start_node(1)
        wait_for(lambda: _status(port, "/ready") == 200, 120, "/ready back to 200")
        producer.finish()
        assert consumer.wait_for(producer.acked, 240), "acknowledged events without a verdict"
        group.alive()
        metrics = scrape(port)
    finally:
        producer.stop()
        consumer.stop()
        group.close()
    dropped = _sample(metrics, 'sentinel_side_records_total{kind="forward",outcome="dropped"}')
    assert dropped >= not_forwarded
    t = tally(f"broker stopped for {OUTAGE_S:.0f} s", producer, consumer, fault_start)
    t.notes.append(f"/health 200 throughout; {not_forwarded} HTTP events answered forwarded=false")
    assert t.events_in == events and t.lost == 0, t


def test_a_cluster_loses_a_broker_mid_stream(cluster: LocalKafka, tmp_path: Path) -> None:
    prefix = "cluster"
    names = topic_names(prefix)
    create_topics(cluster.bootstrap, names.values(), PARTITIONS, replication=3)
    group = Group(cluster.bootstrap, prefix, tmp_path, {"SENTINEL_TOPIC_REPLICATION": "3"})
    events = int(seconds(24) * RATE)
    group.start("a")
    group.start("b")
    group.wait_ready("a")
    group.wait_ready("b")
    consumer = VerifiableConsumer(cluster.bootstrap, names["SENTINEL_OUTPUT_TOPIC"])
    producer = VerifiableProducer(
        cluster.bootstrap, names["SENTINEL_INPUT_TOPIC"], events, RATE, "cluster"
    ).start()
    try:
        time.sleep(seconds(6))
        victim = cluster.leader(names["SENTINEL_INPUT_TOPIC"], 0)
        fault_start = time.monotonic()
        cluster.kill_node(victim)
        time.sleep(seconds(8))
        group.alive()
        cluster.start_node(victim)
        producer.finish()
        assert consumer.wait_for(producer.acked, 240), "acknowledged events without a verdict"
        group.alive()
    finally:
        producer.stop()
        consumer.stop()
        group.close()
    t = tally(
        "3-broker cluster, a leader killed (-9) and restarted", producer, consumer, fault_start
    )
    t.notes.append(f"replication 3, min.insync.replicas 2, session {SESSION_TIMEOUT_MS} ms")
    assert t.events_in == events and t.lost == 0, t


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
