"""Any member answers /analyze-flow from the route's model: the owner's, asked over HTTP.

Also: the partitioner the members compute owners with is Kafka's own (checked against
librdkafka's, which producers use), and a member whose routes arrive elsewhere than the
partitioner says counts it.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer

from sentinel_stream.stream.owners import partition_of
from tests.support.kafka import create_topics, event, produce, read_all, wait_for
from tests.support.service import (
    analyze,
    free_port,
    ready,
    scrape,
    service_env,
    start,
    topic_names,
)

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("partitioner", ["murmur2_random", "consistent_random"])
def test_the_partitioner_is_librdkafkas(
    bootstrap: str, topic_prefix: str, partitioner: str
) -> None:
    topic = f"{topic_prefix}.keys"
    create_topics(bootstrap, [topic], 7)
    got: dict[bytes, int] = {}

    def delivered(err: KafkaError | None, msg: Message) -> None:
        assert err is None
        got[msg.key() or b""] = msg.partition() or 0

    p = Producer({"bootstrap.servers": bootstrap, "partitioner": partitioner})
    keys = [f"/route/{i}/{'x' * (i % 5)}".encode() for i in range(300)] + ["/ümlaut".encode()]
    for key in keys:
        p.produce(topic, b"v", key, on_delivery=delivered)
    assert p.flush(30) == 0
    assert {k: partition_of(k, 7, partitioner) for k in keys} == got


def test_a_member_that_does_not_own_a_route_answers_from_its_owners_model(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    names = topic_names(topic_prefix)
    create_topics(bootstrap, names.values(), 2)
    common = {"SENTINEL_MIN_HISTORY": "64"}
    port_a, port_b = free_port(), free_port()
    env_a = service_env(bootstrap, topic_prefix, port_a, SENTINEL_INSTANCE_ID="a", **common)
    env_b = service_env(bootstrap, topic_prefix, port_b, SENTINEL_INSTANCE_ID="b", **common)
    a = start(env_a, tmp_path, "a")
    b = None
    try:
        wait_for(lambda: ready(a, port_a), 120, "a ready")
        b = start(env_b, tmp_path, "b")
        wait_for(lambda: ready(b, port_b), 120, "b ready")
        # One route on each partition: whichever member owns which, each asks the other
        # about one of them.
        routes: dict[int, str] = {}
        i = 0
        while len(routes) < 2:
            route = f"/owned/{i}"
            routes.setdefault(partition_of(route.encode(), 2, "murmur2_random"), route)
            i += 1
        produce(
            bootstrap,
            names["SENTINEL_INPUT_TOPIC"],
            [
                (r.encode(), event(r, latency=90.0 + j % 20, event_id=f"{r}-{j}"))
                for j in range(200)
                for r in routes.values()
            ],
        )
        read_all(bootstrap, names["SENTINEL_OUTPUT_TOPIC"], lambda m: len(m) >= 400, 120)
        probe = {"latency": 95.0, "input_length": 500, "errors": 0}
        answers: dict[str, dict[str, dict[str, Any]]] = {}

        def both_answer_from_models() -> bool:
            for route in routes.values():
                answers[route] = {
                    "a": analyze(port_a, {**probe, "route": route}),
                    "b": analyze(port_b, {**probe, "route": route}),
                }
            return all(
                x["detector"] == "isolation_forest"
                for pair in answers.values()
                for x in pair.values()
            )

        wait_for(both_answer_from_models, 60, "both members answering from the models")
        metrics = {m: scrape(port) for m, port in (("a", port_a), ("b", port_b))}
    finally:
        for proc in (a, b):
            if proc is not None and proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGKILL)
                proc.popen.wait(30)
    owners = {route: pair["a"]["answered_by"] for route, pair in answers.items()}
    assert set(owners.values()) == {"a", "b"}, owners  # each member owns one route
    for route, pair in answers.items():
        # Whichever member was asked, the owner's model answered, with the same score.
        assert pair["a"]["answered_by"] == pair["b"]["answered_by"] == owners[route]
        assert pair["a"]["model_version"] == pair["b"]["model_version"] is not None
        assert pair["a"]["score"] == pair["b"]["score"]
    for m in ("a", "b"):
        assert 'sentinel_http_owner_answers_total{outcome="owner"}' in metrics[m]
        assert "sentinel_route_partition_mismatches_total 0.0" in metrics[m]
