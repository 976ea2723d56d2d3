"""``SENTINEL_HTTP_PROCESS=true``: HTTP served from a process of its own, on a real broker.

The HTTP process answers from its replica of the state topic (the loop's models), forwards
its events to the loop, and answers ``/health``, ``/ready`` and ``/metrics`` for the whole
member. Faults as they happen: the HTTP process killed (it is started again), the loop's
process killed (the HTTP process goes with it), stopped (the probes say so).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Message
from prometheus_client.parser import text_string_to_metric_families

from sentinel_stream.http.upstream import NOT_ANSWERING
from tests.support.kafka import event, produce, read_all, wait_for
from tests.support.service import (
    Running,
    analyze,
    free_port,
    get_json,
    http_get,
    running_service,
    scrape,
    service_env,
    start,
)

pytestmark = pytest.mark.kafka

ROUTE = "/hp/checkout"
PROBE = {"latency": 95.0, "input_length": 500, "errors": 0, "route": ROUTE}


def http_process(parent: int) -> int | None:
    """The HTTP process the member started (a spawned child, not multiprocessing's
    resource tracker), or None."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            return int(child)
    return None


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def metric(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"{name}{labels} not in the exposition")


@pytest.fixture
def member(bootstrap: str, tmp_path: Path) -> Iterator[Running]:
    with running_service(
        bootstrap, tmp_path, "hp", SENTINEL_HTTP_PROCESS="true", SENTINEL_MIN_HISTORY="64"
    ) as running:
        yield running


def train(bootstrap: str, running: Running, first: int = 0, n: int = 200) -> set[int]:
    """Events ``first`` to ``first + n`` of ROUTE through Kafka; once the loop published
    the verdicts of them all, the model versions every verdict read named."""
    env = running.env
    produce(
        bootstrap,
        env["SENTINEL_INPUT_TOPIC"],
        [
            (ROUTE.encode(), event(ROUTE, latency=90.0 + j % 20, event_id=f"k-{j}"))
            for j in range(first, first + n)
        ],
    )
    ids = {f"k-{j}" for j in range(first, first + n)}

    def all_in(msgs: list[Message]) -> bool:
        return ids <= {orjson.loads(m.value() or b"{}")["event_id"] for m in msgs}

    verdicts = read_all(bootstrap, env["SENTINEL_OUTPUT_TOPIC"], all_in, 120)
    return {
        v["model_version"]
        for v in (orjson.loads(m.value() or b"{}") for m in verdicts)
        if v.get("model_version") is not None
    }


def answers_from_a_model(port: int) -> dict[str, Any]:
    """The first answer of the HTTP process that comes from the route's model."""
    answers: list[dict[str, Any]] = []

    def from_a_model() -> bool:
        try:
            answers.append(analyze(port, PROBE))
        except OSError:
            return False  # not listening yet
        return bool(answers[-1]["detector"] == "isolation_forest")

    wait_for(from_a_model, 60, "the HTTP process answering from the route's model")
    return answers[-1]


def test_the_http_process_answers_from_the_loops_models_and_forwards(
    bootstrap: str, member: Running
) -> None:
    port = member.port
    train(bootstrap, member)
    # The HTTP process never fits (it never learns): a model can only be the loop's, come
    # through the state topic.
    answer = answers_from_a_model(port)
    versions = train(bootstrap, member, first=200, n=20)
    assert 1 <= answer["model_version"] <= max(versions)
    assert answer["forwarded"] is True
    # The forwarded event reaches the loop, which publishes its verdict.
    out = read_all(
        bootstrap,
        member.env["SENTINEL_OUTPUT_TOPIC"],
        lambda m: any(
            orjson.loads(x.value() or b"{}")["event_id"] == answer["event_id"] for x in m
        ),
        60,
    )
    assert any(orjson.loads(x.value() or b"{}")["event_id"] == answer["event_id"] for x in out)
    # One member's metrics: each family once, the HTTP process's and the loop's counts.
    text = scrape(port)
    names = [fam.name for fam in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    posts = metric(text, "sentinel_requests_total", endpoint="analyze-flow", method="post")
    assert posts >= 1
    assert metric(text, "sentinel_events_valid_total", door="http") == posts
    assert metric(text, "sentinel_records_consumed_total") >= 220 + 1
    assert metric(text, "sentinel_replica_records_total", outcome="applied") >= 1
    assert metric(text, "sentinel_http_process_restarts_total") == 0
    status, health = get_json(port, "/health")
    assert status == 200
    assert health["components"]["detector"]["models_trained"] == 1


def test_a_killed_http_process_is_started_again_and_goes_with_a_killed_member(
    bootstrap: str, member: Running
) -> None:
    port, parent = member.port, member.proc.popen.pid
    train(bootstrap, member)
    answers_from_a_model(port)
    first = http_process(parent)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: http_process(parent) not in (None, first), 30, "a new HTTP process")
    second = http_process(parent)
    assert second is not None

    # The new process reads the state topic again: the route's model comes back.
    answers_from_a_model(port)
    assert metric(scrape(port), "sentinel_http_process_restarts_total") == 1
    member.proc.popen.send_signal(signal.SIGKILL)
    member.proc.popen.wait(10)
    wait_for(lambda: gone(second), 10, "the HTTP process to exit with its member")


def test_the_probes_say_when_the_loops_process_does_not_answer(member: Running) -> None:
    port, parent = member.port, member.proc.popen.pid
    os.kill(parent, signal.SIGSTOP)
    try:
        status, health = get_json(port, "/health")
        assert status == 503
        assert health["reason"] == NOT_ANSWERING
        status, body, _ = http_get(port, "/ready")
        assert status == 503
        assert NOT_ANSWERING in orjson.loads(body)["reasons"]
        # The HTTP process's own families are still served.
        assert metric(scrape(port), "sentinel_requests_total", endpoint="health", method="get") >= 1
    finally:
        os.kill(parent, signal.SIGCONT)
    wait_for(lambda: get_json(port, "/health")[0] == 200, 30, "/health once the loop answers")


def test_sigterm_stops_both_processes(member: Running) -> None:
    parent = member.proc.popen.pid
    child = http_process(parent)
    assert child is not None
    member.proc.popen.send_signal(signal.SIGTERM)
    assert member.proc.popen.wait(60) == 0, member.proc.stderr()[-3000:]
    assert gone(child)


def test_a_member_whose_http_process_cannot_listen_exits_saying_so(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(
            bootstrap,
            topic_prefix,
            port,
            SENTINEL_CREATE_TOPICS="true",
            SENTINEL_TOPIC_PARTITIONS="1",
            SENTINEL_HTTP_PROCESS="true",
        )
        proc = start(env, tmp_path, "taken")
        try:
            code = proc.popen.wait(90)
        finally:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(10)
    assert code == 1
    assert "the HTTP process exited with 1 before it listened on 127.0.0.1:" in proc.stderr()


def test_sigterm_while_the_http_process_starts_stops_the_member(
    bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The member waits for its HTTP process to listen before it runs its loop: a stop
    asked meanwhile is kept and carried out, not lost."""
    env = service_env(
        bootstrap,
        topic_prefix,
        free_port(),
        SENTINEL_CREATE_TOPICS="true",
        SENTINEL_TOPIC_PARTITIONS="1",
        SENTINEL_HTTP_PROCESS="true",
    )
    proc = start(env, tmp_path, "early")
    try:
        wait_for(lambda: "http_process_started" in proc.stderr(), 60, "the HTTP process started")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(60) == 0, proc.stderr()[-3000:]
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(10)
    assert "http_process_serving" in proc.stderr()
    assert "service_stopped" in proc.stderr()
