"""The commit rules: flush first, never commit what was not acknowledged, only forward.

The clients here are small in-process fakes of the two calls the checkpoint makes
(``Producer.flush`` and ``Consumer.commit``): this file checks the order and the rules,
``tests/integration/test_pipeline_kafka.py`` checks the same contract on a real broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, TopicPartition

from sentinel_stream.stream.checkpoint import Checkpoint, DeliveryFailed


@dataclass
class FakeProducer:
    unacknowledged: int = 0
    calls: list[str] = field(default_factory=list)

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return self.unacknowledged


@dataclass
class FakeConsumer:
    log: list[str]
    committed: list[list[tuple[str, int, int]]] = field(default_factory=list)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert not asynchronous
        self.log.append("commit")
        self.committed.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])


class FakeMessage:
    def topic(self) -> str:
        return "out"


def make(interval_s: float = 0.0) -> tuple[Checkpoint, FakeProducer, FakeConsumer]:
    producer = FakeProducer()
    consumer = FakeConsumer(producer.calls)
    cp = Checkpoint(consumer, producer, "in", interval_s)  # type: ignore[arg-type]
    return cp, producer, consumer


def test_commits_the_next_offset_of_each_partition_after_the_flush() -> None:
    cp, producer, consumer = make()
    cp.track(0, 10)
    cp.track(0, 12)
    cp.track(3, 5)
    assert cp.commit() == 2
    assert producer.calls == ["flush", "commit"]
    assert sorted(consumer.committed[0]) == [("in", 0, 13), ("in", 3, 6)]
    assert cp.commit() == 0  # nothing new: nothing committed
    assert len(consumer.committed) == 1


def test_unacknowledged_records_stop_the_commit() -> None:
    cp, producer, consumer = make()
    cp.track(0, 1)
    producer.unacknowledged = 2
    with pytest.raises(DeliveryFailed, match="2 records were not acknowledged"):
        cp.commit(1.0)
    assert consumer.committed == []


def test_a_failed_delivery_stops_the_commit() -> None:
    cp, _, consumer = make()
    cp.track(0, 1)
    cp.on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), FakeMessage())  # type: ignore[arg-type]
    with pytest.raises(DeliveryFailed, match="failed delivery"):
        cp.commit()
    assert consumer.committed == []


def test_offsets_never_go_back_past_a_commit() -> None:
    cp, _, _ = make()
    cp.track(0, 7)
    cp.commit()
    with pytest.raises(RuntimeError, match="goes back"):
        cp.track(0, 3)
    cp.track(0, 9)  # forward is fine


def test_an_older_offset_does_not_move_the_mark_back() -> None:
    cp, _, consumer = make()
    cp.track(1, 9)
    cp.track(1, 4)
    cp.commit()
    assert consumer.committed[0] == [("in", 1, 10)]


def test_forgotten_partitions_are_not_committed() -> None:
    cp, _, consumer = make()
    cp.track(0, 1)
    cp.track(1, 1)
    cp.forget([1])
    cp.commit()
    assert consumer.committed[0] == [("in", 0, 2)]


def test_due_waits_for_the_interval_and_for_work() -> None:
    cp, _, _ = make(interval_s=3600.0)
    assert not cp.due()
    cp.track(0, 1)
    assert not cp.due()
    now, _, _ = make(interval_s=0.0)
    assert not now.due()
    now.track(0, 1)
    assert now.due()
