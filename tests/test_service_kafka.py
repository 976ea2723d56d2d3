"""`sentinel-stream run` as a real process: topics, HTTP side server, metrics, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient
from helpers import create_topics, event, produce, read_all, wait_for
from prometheus_client.parser import text_string_to_metric_families

from sentinel_stream import __version__

pytestmark = pytest.mark.kafka

PARTITIONS = 3
SECRET_USER = "user-secret-42"
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET on the side server; 4xx/5xx are answers too."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body, ctype = http_get(port, path)
    assert ctype.startswith("application/json"), (path, ctype)
    data: dict[str, Any] = json.loads(body)
    return status, data


def topic_names(prefix: str) -> dict[str, str]:
    return {
        "SENTINEL_INPUT_TOPIC": f"{prefix}.telemetry",
        "SENTINEL_OUTPUT_TOPIC": f"{prefix}.verdicts",
        "SENTINEL_DLQ_TOPIC": f"{prefix}.dlq",
    }


def existing_topics(bootstrap: str) -> dict[str, int]:
    """Topic name -> partition count, as the broker reports it."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15)
    return {name: len(t.partitions) for name, t in md.topics.items()}


def service_env(bootstrap: str, prefix: str, port: int, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("SENTINEL_", "OLLAMA_"))
    }
    env.update(
        {
            "SENTINEL_KAFKA_BOOTSTRAP": bootstrap,
            "SENTINEL_GROUP_ID": f"{prefix}-group",
            **topic_names(prefix),
            "SENTINEL_HOST": "127.0.0.1",
            "SENTINEL_PORT": str(port),
            "SENTINEL_REFIT_WORKERS": "0",
            "SENTINEL_LOG_FORMAT": "json",
            "SENTINEL_COMMIT_INTERVAL_MS": "200",
        }
    )
    env.update(extra)
    return env


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(
                f"service exited with {self.popen.returncode}:\n{self.stderr()[-3000:]}"
            )
        return True


def start(env: dict[str, str], tmp_path: Path, name: str = "service") -> Proc:
    stderr_path = tmp_path / f"{name}.stderr.log"
    with stderr_path.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "sentinel_stream", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return Proc(popen, stderr_path)


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


def ready(proc: Proc, port: int) -> bool:
    proc.alive()
    try:
        return http_get(port, "/ready", timeout=2)[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False  # not listening yet


def scrape(port: int) -> str:
    status, body, ctype = http_get(port, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version="), ctype
    return body.decode("utf-8")


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

    # The three missing topics were created, with the configured partition count.
    topics = existing_topics(bootstrap)
    for topic in names.values():
        assert topics.get(topic) == PARTITIONS, (topic, topics.get(topic))

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
