"""A state partition whose offsets the broker cannot give at once (a broker restarting, a
leader being elected) is asked again, so its routes keep their models; one that never
answers is given up after a bounded wait, and its partition is not held up."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from sentinel_stream.detect.snapshot import snapshot_route
from sentinel_stream.engine import Engine
from sentinel_stream.metrics import Metrics
from sentinel_stream.stream import state as state_module
from sentinel_stream.stream.state import StateStore
from tests.support.kafka import create_topics, produce, wait_for
from tests.support.kafka_broker import private_broker
from tests.support.pipeline import settings_for
from tests.support.telemetry import normal, run

pytestmark = pytest.mark.kafka


def store_for(
    bootstrap: str, prefix: str
) -> tuple[StateStore, Engine, Metrics, list[list[int]], Producer]:
    settings = settings_for(bootstrap, prefix)
    engine = Engine(settings)
    metrics = Metrics()
    resumed: list[list[int]] = []
    producer = Producer({"bootstrap.servers": bootstrap})
    store = StateStore(settings, producer, engine, metrics, lambda ps: None, resumed.append)
    return store, engine, metrics, resumed, producer


def skipped(metrics: Metrics) -> float:
    return float(metrics.state_partitions_unread._value.get())


def test_state_offsets_asked_again_until_the_partition_answers(
    topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker restarts while the assignment asks: room for its start, however slow.
    monkeypatch.setattr(state_module, "OFFSETS_WAIT_S", 120.0)
    with private_broker() as kafka:
        # A route with a model, as a member that owned it wrote it: what must come back.
        trained = Engine(settings_for(kafka.bootstrap, topic_prefix))
        run(trained, normal("/kept", 600))
        trained.tick()
        state = trained.detector.route_state("/kept")
        assert state is not None and state.model is not None
        snapshot = snapshot_route(trained.detector, "/kept")
        assert snapshot is not None
        version = state.model.version
        topic = f"{topic_prefix}.state"
        create_topics(kafka.bootstrap, [topic], partitions=1)
        produce(kafka.bootstrap, topic, [(b"/kept", snapshot)])

        store, engine, metrics, resumed, _ = store_for(kafka.bootstrap, topic_prefix)
        kafka.stop_node(1)  # the partition cannot answer until the broker is back
        waited: list[float] = []

        def assign() -> None:
            started = time.monotonic()
            store.on_assign([0])
            waited.append(time.monotonic() - started)

        asking = threading.Thread(target=assign)
        asking.start()
        try:
            # Down longer than one ask waits: a single ask would give the partition up.
            time.sleep(state_module.OFFSETS_ASK_S + 2.0)
            kafka.start_node(1)
        finally:
            asking.join()
        assert skipped(metrics) == 0
        assert waited[0] >= 1.0, "the offsets were asked once only"

        def restored() -> bool:
            store.restore_step()
            return resumed == [[0]]

        wait_for(restored, 60, "the state partition to be read to its end and resumed")
        got = engine.detector.route_state("/kept")
        assert got is not None and got.model is not None and got.model.version == version
        store.close()
        trained.close()
        engine.close()


def test_a_state_partition_that_never_answers_is_given_up_after_the_wait(
    bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "OFFSETS_WAIT_S", 1.5)
    store, engine, metrics, resumed, _ = store_for(bootstrap, topic_prefix)
    started = time.monotonic()
    store.on_assign([0, 1])  # the state topic does not exist
    waited = time.monotonic() - started
    assert skipped(metrics) == 2
    assert resumed == [[0, 1]], "the partitions must not be held up"
    assert 1.0 <= waited < 10.0, waited  # one wait for the assignment, not one each
    store.close()
    engine.close()
