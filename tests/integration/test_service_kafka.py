"""`sentinel-stream run` as a real process: topics, HTTP side server, metrics, exit codes."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sentinel_stream import __version__
from tests.support.kafka import create_topics, event, produce, read_all, wait_for
from tests.support.service import (
    START_TIMEOUT_S,
    Proc,
    existing_topics,
    free_port,
    get_json,
    ready,
    scrape,
    service_env,
    start,
    topic_names,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 3
SECRET_USER = "user-secret-42"


def run_to_exit(env: dict[str, str], tmp_path: Path, timeout: float = 90.0) -> tuple[int, str]:
    proc = start(env, tmp_path, "short")
    try:
        code = proc.popen.wait(timeout=timeout)
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(10)
    return code, proc.stderr()


@pytest.fixture
def service(bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[tuple[Proc, int]]:
    """The service with SENTINEL_CREATE_TOPICS=true on unique, not yet existing topics."""
    port = free_port()
    env = service_env(
        bootstrap,
        topic_prefix,
        port,
        SENTINEL_CREATE_TOPICS="true",
        SENTINEL_TOPIC_PARTITIONS=str(PARTITIONS),
    )
    proc = start(env, tmp_path)
    try:
        yield proc, port
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(10)


def samples(text: str) -> dict[str, float]:
    """Unlabelled sample name -> value."""
    return {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if not s.labels
    }


def test_creates_topics_serves_health_ready_metrics_and_stops_on_sigterm(
    bootstrap: str, topic_prefix: str, service: tuple[Proc, int]
) -> None:
    proc, port = service
    names = topic_names(topic_prefix)
    input_topic, output_topic = names["SENTINEL_INPUT_TOPIC"], names["SENTINEL_OUTPUT_TOPIC"]

    wait_for(lambda: ready(proc, port), START_TIMEOUT_S, "/ready to answer 200")

    # The missing topics were created, with the configured partition count (the members
    # topic has one).
    topics = existing_topics(bootstrap)
    for variable, topic in names.items():
        want = 1 if variable == "SENTINEL_MEMBERS_TOPIC" else PARTITIONS
        assert topics.get(topic) == want, (topic, topics.get(topic))

    status, body = get_json(port, "/ready")
    assert status == 200 and body["status"] == "ready"
    assert body["partitions"] == list(range(PARTITIONS))

    status, health = get_json(port, "/health")
    assert status == 200
    assert health["status"] == "healthy"
    assert health["version"] == __version__
    assert health["history_size"] == 0
    assert health["detector_trained"] is False
    assert health["timestamp"]
    consumer = health["components"]["consumer"]
    assert consumer["state"] == "running"
    assert consumer["assigned_partitions"] == list(range(PARTITIONS))
    assert health["components"]["producer"]["state"] == "up"
    assert health["components"]["detector"]["routes_tracked"] == 0

    # Events carrying personal data, on routes that must not become metric labels.
    routes = [f"/private-route-{topic_prefix}-{i}" for i in range(4)]
    n = 60
    produce(
        bootstrap,
        input_topic,
        [
            (routes[i % 4].encode(), event(routes[i % 4], user_id=SECRET_USER, event_id=f"e{i}"))
            for i in range(n)
        ],
    )
    verdicts = read_all(bootstrap, output_topic, lambda got: len(got) >= n, 90)
    assert sorted(orjson.loads(m.value() or b"")["event_id"] for m in verdicts) == sorted(
        f"e{i}" for i in range(n)
    )

    def grown() -> bool:
        proc.alive()
        h = get_json(port, "/health")[1]
        return bool(h["history_size"] == n and h["components"]["detector"]["routes_tracked"] == 4)

    wait_for(grown, 30, "/health to count the events and routes")

    def consumed_all() -> bool:
        proc.alive()
        return samples(scrape(port)).get("sentinel_records_consumed_total") == n

    wait_for(consumed_all, 30, f"sentinel_records_consumed_total == {n}")

    text = scrape(port)
    families = list(text_string_to_metric_families(text))
    assert families
    for fam in families:
        for s in fam.samples:
            assert s.name.startswith(("sentinel_", "python_", "process_")), s.name
    type_lines = [line.split() for line in text.splitlines() if line.startswith("# TYPE ")]
    sentinel_types = {
        parts[2]: parts[3] for parts in type_lines if parts[2].startswith("sentinel_")
    }
    assert len(sentinel_types) >= 12, sorted(sentinel_types)
    counters = [name for name, kind in sentinel_types.items() if kind == "counter"]
    assert counters
    for name in counters:
        assert name.endswith("_total"), name
    for fam in families:
        if fam.type == "counter":
            for s in fam.samples:
                assert s.name in (fam.name + "_total", fam.name + "_created"), s.name
    got = samples(text)
    assert got["sentinel_records_consumed_total"] == n
    assert got["sentinel_verdicts_published_total"] == n
    assert got["sentinel_routes_tracked"] == 4
    assert got["sentinel_assigned_partitions"] == PARTITIONS
    valid = {
        s.labels["door"]: s.value
        for fam in families
        if fam.name == "sentinel_events_valid"
        for s in fam.samples
        if s.name.endswith("_total")
    }
    assert valid.get("kafka") == n

    # No personal data and no raw route in the metrics, whatever the label.
    assert SECRET_USER not in text
    for route in routes:
        assert route not in text
    for fam in families:
        for s in fam.samples:
            for value in s.labels.values():
                assert "private-route" not in value and SECRET_USER not in value

    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(timeout=60) == 0, proc.stderr()[-3000:]
    log = proc.stderr()
    assert SECRET_USER not in log
    events = []
    for line in log.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line).get("event"))
    for expected in ("topics_created", "service_started", "shutdown_requested", "service_stopped"):
        assert expected in events, (expected, events)


def test_missing_topics_without_create_topics_exits_2_naming_them(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    names = topic_names(topic_prefix)
    env = service_env(bootstrap, topic_prefix, free_port())
    code, err = run_to_exit(env, tmp_path)
    assert code == 2, err[-3000:]
    for topic in names.values():
        assert topic in err
    assert "SENTINEL_CREATE_TOPICS" in err
    assert "Traceback" not in err
    assert not set(names.values()) & set(existing_topics(bootstrap)), "nothing may be created"


def test_only_the_missing_topics_are_named(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    names = topic_names(topic_prefix)
    create_topics(bootstrap, [names["SENTINEL_INPUT_TOPIC"]], 1)
    env = service_env(bootstrap, topic_prefix, free_port())
    code, err = run_to_exit(env, tmp_path)
    assert code == 2, err[-3000:]
    assert names["SENTINEL_OUTPUT_TOPIC"] in err and names["SENTINEL_DLQ_TOPIC"] in err
    assert names["SENTINEL_INPUT_TOPIC"] not in err


def test_bad_setting_exits_2_naming_the_variable(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = service_env(bootstrap, topic_prefix, free_port(), SENTINEL_PORT="notaport")
    code, err = run_to_exit(env, tmp_path, timeout=60)
    assert code == 2, err[-3000:]
    assert "SENTINEL_PORT" in err
    assert "Traceback" not in err
    assert not set(topic_names(topic_prefix).values()) & set(existing_topics(bootstrap))
