"""The commit rules: flush first, never commit what was not acknowledged, only forward;
failures that heal wait, failures that cannot heal stop.

The clients here are small in-process fakes of the calls the checkpoint makes
(``Producer.flush`` and the transaction calls, ``Consumer.commit``): this file checks the
order and the rules; ``tests/integration/test_pipeline_kafka.py`` and the chaos suite
check the same contract on real brokers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from sentinel_stream.stream.checkpoint import AtLeastOnce, CommitFailed, Transactional


@dataclass
class FakeProducer:
    unacknowledged: int = 0
    calls: list[str] = field(default_factory=list)
    commit_errors: list[KafkaError] = field(default_factory=list)

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        return self.unacknowledged

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], metadata: object, timeout: float
    ) -> None:
        self.calls.append("send_offsets")

    def commit_transaction(self, timeout: float) -> None:
        if self.commit_errors:
            raise KafkaException(self.commit_errors.pop(0))
        self.calls.append("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")


@dataclass
class FakeConsumer:
    log: list[str]
    committed: list[list[tuple[str, int, int]]] = field(default_factory=list)
    errors: list[KafkaError] = field(default_factory=list)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        if self.errors:
            raise KafkaException(self.errors.pop(0))
        self.log.append("commit_async" if asynchronous else "commit")
        self.committed.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def consumer_group_metadata(self) -> object:
        return object()


class FakeMessage:
    def topic(self) -> str:
        return "out"


def make(interval_s: float = 0.0) -> tuple[AtLeastOnce, FakeProducer, FakeConsumer]:
    producer = FakeProducer()
    consumer = FakeConsumer(producer.calls)
    cp = AtLeastOnce(consumer, producer, "in", interval_s)  # type: ignore[arg-type]
    return cp, producer, consumer


def test_commits_the_next_offset_of_each_partition_after_the_flush() -> None:
    cp, producer, consumer = make()
    cp.track(0, 10)
    cp.track(0, 12)
    cp.track(3, 5)
    assert cp.commit().partitions == 2
    assert producer.calls == ["flush", "commit"]
    assert sorted(consumer.committed[0]) == [("in", 0, 13), ("in", 3, 6)]
    assert cp.commit().partitions == 0  # nothing new: nothing committed
    assert len(consumer.committed) == 1


def test_unacknowledged_records_defer_the_commit_and_keep_the_offsets() -> None:
    cp, producer, consumer = make()
    cp.track(0, 1)
    producer.unacknowledged = 2
    outcome = cp.commit(1.0)
    assert outcome.deferred is not None and "2 records" in outcome.deferred
    assert consumer.committed == [] and cp.pending
    producer.unacknowledged = 0  # the broker is back
    assert cp.commit().partitions == 1
    assert consumer.committed == [[("in", 0, 2)]]


def test_a_delivery_lost_for_a_reason_that_heals_rewinds() -> None:
    cp, _, consumer = make()
    cp.track(0, 1)
    cp.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), FakeMessage())  # type: ignore[arg-type]
    outcome = cp.commit()
    assert outcome.rewind and outcome.deferred is not None
    assert consumer.committed == [] and not cp.pending


def test_a_delivery_that_cannot_heal_stops() -> None:
    cp, _, consumer = make()
    cp.track(0, 1)
    err = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    cp.on_delivery(err, FakeMessage())  # type: ignore[arg-type]
    with pytest.raises(CommitFailed, match="TOPIC_AUTHORIZATION_FAILED"):
        cp.commit()
    assert consumer.committed == []


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._TRANSPORT,
    ],
)
def test_a_commit_that_races_a_rebalance_or_a_moving_coordinator_is_retried(code: int) -> None:
    cp, _, consumer = make()
    cp.track(1, 4)
    consumer.errors.append(KafkaError(code))
    assert cp.commit().deferred is not None and cp.pending
    assert cp.commit().partitions == 1
    assert consumer.committed == [[("in", 1, 5)]]


def test_a_commit_refused_for_good_stops() -> None:
    cp, _, consumer = make()
    cp.track(1, 4)
    consumer.errors.append(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    with pytest.raises(CommitFailed, match="GROUP_AUTHORIZATION_FAILED"):
        cp.commit()


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


def transactional() -> tuple[Transactional, FakeProducer]:
    producer = FakeProducer()
    consumer = FakeConsumer(producer.calls)
    return Transactional(consumer, producer, "in", 0.0), producer  # type: ignore[arg-type]


def test_a_transaction_sends_its_offsets_then_commits() -> None:
    cp, producer = transactional()
    cp.begin()
    cp.begin()  # one transaction until it is committed
    cp.track(0, 3)
    assert cp.commit().partitions == 1
    assert producer.calls == ["begin", "send_offsets", "commit_transaction"]
    cp.begin()
    assert producer.calls[-1] == "begin"


def test_a_transaction_the_broker_wants_aborted_is_aborted_and_rewound() -> None:
    cp, producer = transactional()
    cp.begin()
    cp.track(0, 3)
    abortable = KafkaError(KafkaError.INVALID_TXN_STATE, txn_requires_abort=True)
    producer.commit_errors.append(abortable)
    outcome = cp.commit()
    assert outcome.rewind and producer.calls[-1] == "abort" and not cp.pending
    assert cp.aborts == 1


def test_a_failed_delivery_aborts_the_transaction() -> None:
    cp, producer = transactional()
    cp.begin()
    cp.track(0, 3)
    cp.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), FakeMessage())  # type: ignore[arg-type]
    assert cp.commit().rewind and "commit_transaction" not in producer.calls


@dataclass
class Answered:
    """A partition in the consumer's ``on_commit`` report (confluent-kafka's
    TopicPartition cannot be made with an error)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None


def answer(
    partition: int, offset: int, error: KafkaError | None = None, topic: str = "in"
) -> list[TopicPartition]:
    """The consumer's ``on_commit`` report for one partition."""
    return [Answered(topic, partition, offset, error)]  # type: ignore[list-item]


def test_an_interval_commit_does_not_wait_for_its_answer() -> None:
    cp, producer, consumer = make()
    cp.track(0, 4)
    outcome = cp.commit(wait=False)
    assert outcome.partitions == 1 and outcome.deferred is None
    assert producer.calls == ["flush", "commit_async"]  # acknowledged first, then sent
    assert cp.committed(0) == 5 and not cp.pending
    cp.on_commit(None, answer(0, 5))  # the broker took it: nothing more to do
    assert cp.commit(wait=False).partitions == 0 and len(consumer.committed) == 1


def test_an_asynchronous_commit_refused_for_a_reason_that_heals_is_sent_again() -> None:
    cp, _, consumer = make()
    cp.track(0, 4)
    cp.commit(wait=False)
    cp.on_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), answer(0, 5))
    assert cp.pending  # back in line for the next interval
    assert cp.commit(wait=False).partitions == 1
    assert consumer.committed == [[("in", 0, 5)], [("in", 0, 5)]]


def test_a_newer_offset_wins_over_a_refused_older_one() -> None:
    cp, _, consumer = make()
    cp.track(0, 4)
    cp.commit(wait=False)
    cp.track(0, 8)
    cp.on_commit(None, answer(0, 5, KafkaError(KafkaError._TRANSPORT)))
    cp.commit(wait=False)
    assert consumer.committed[-1] == [("in", 0, 9)]


def test_an_asynchronous_commit_refused_for_good_stops_at_the_next_commit() -> None:
    cp, _, _ = make()
    cp.track(0, 4)
    cp.commit(wait=False)
    cp.on_commit(None, answer(0, 5, KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)))
    with pytest.raises(CommitFailed, match="GROUP_AUTHORIZATION_FAILED"):
        cp.commit(wait=False)


def test_answers_to_other_commits_are_ignored() -> None:
    """A synchronous commit's report, another topic's, or one for a partition that moved
    to another member changes nothing."""
    cp, _, _ = make()
    cp.track(0, 4)
    cp.track(1, 2)
    cp.commit(wait=False)
    cp.forget([1])
    refused = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)
    cp.on_commit(None, answer(1, 3, refused))  # forgotten partition
    cp.on_commit(None, answer(0, 5, refused, topic="other"))
    cp.on_commit(None, answer(0, 99, refused))  # not the offset that was sent
    assert not cp.pending
    cp.track(0, 6)
    assert cp.commit(wait=False).partitions == 1
