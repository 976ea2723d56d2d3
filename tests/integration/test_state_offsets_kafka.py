"""A state partition whose offsets the broker cannot give at once (no leader for a moment,
as after a broker restart) is asked again, so its routes keep their models; one that
never answers is given up after a bounded wait, and its partition is not held up."""

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
    bootstrap: str, topic_prefix: str
) -> None:
    # A route with a model, as a member that owned it wrote it: what must come back.
    trained = Engine(settings_for(bootstrap, topic_prefix))
    run(trained, normal("/kept", 600))
    trained.tick()
    state = trained.detector.route_state("/kept")
    assert state is not None and state.model is not None
    snapshot = snapshot_route(trained.detector, "/kept")
    assert snapshot is not None
    version = state.model.version

    store, engine, metrics, resumed, _ = store_for(bootstrap, topic_prefix)
    topic = f"{topic_prefix}.state"

    def appear() -> None:  # the partition answers 1.5 s after the assignment asks
        time.sleep(1.5)
        create_topics(bootstrap, [topic], partitions=1)
        produce(bootstrap, topic, [(b"/kept", snapshot)])

    late = threading.Thread(target=appear)
    late.start()
    try:
        started = time.monotonic()
        store.on_assign([0])
        waited = time.monotonic() - started
    finally:
        late.join()
    assert skipped(metrics) == 0
    assert waited >= 1.0, "the offsets were asked once only"

    def restored() -> bool:
        store.restore_step()
        return resumed == [[0]]

    wait_for(restored, 30, "the state partition to be read to its end and resumed")
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
