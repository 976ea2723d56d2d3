"""Brokers that fail: a 3-node cluster loses a partition leader mid-stream and loses no
acknowledged record; a single broker keeps its data across a stop and start.

Each test owns its brokers (``private_cluster`` / ``private_broker``): they are killed
and restarted, which the shared session broker must never be.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.support.kafka import create_topics, produce, read_all, wait_for
from tests.support.kafka_broker import LocalKafka, private_broker, private_cluster

pytestmark = pytest.mark.kafka

PARTITIONS = 3
# Records produced per paced step, and the pause that serves delivery reports between
# steps: at most ~1000 records/s, so an outage of ~10 s queues ~10k records.
STEP_RECORDS = 20
STEP_POLL_S = 0.02
# Acknowledged records each partition must gain in a phase before the next step.
PHASE_ACKS = 300
PHASE_TIMEOUT_S = 90.0
MAX_RECORDS = 200_000
# Records queued at once right before the kill: in flight when the leader dies.
BURST = 500


class Ledger:
    """What the producer was told: acknowledged sequence numbers per partition, errors."""

    def __init__(self) -> None:
        self.produced = 0
        self.acked: list[int] = []
        self.acked_by_partition = Counter[int]()
        self.errors: list[str] = []

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        value = msg.value()
        assert value is not None
        partition = msg.partition()
        assert partition is not None
        self.acked.append(int(value))
        self.acked_by_partition[partition] += 1


def produce_step(producer: Producer, topic: str, ledger: Ledger, count: int) -> None:
    """Queue ``count`` records round-robin over the partitions (values: sequence numbers)."""
    for _ in range(count):
        seq = ledger.produced
        producer.produce(
            topic, str(seq).encode(), partition=seq % PARTITIONS, on_delivery=ledger.on_delivery
        )
        ledger.produced += 1


def produce_until(
    producer: Producer, topic: str, ledger: Ledger, done: Callable[[], bool], what: str
) -> None:
    """Keep producing at a paced rate until ``done()``; bounded in time and count."""
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, f"timed out after {PHASE_TIMEOUT_S:.0f} s: {what}"
        assert ledger.produced < MAX_RECORDS, f"produced {MAX_RECORDS} records: {what}"
        assert not ledger.errors, f"delivery failed while {what}: {ledger.errors[:3]}"
        produce_step(producer, topic, ledger, STEP_RECORDS)
        producer.poll(STEP_POLL_S)


def gained_on_every_partition(ledger: Ledger, since: Counter[int]) -> Callable[[], bool]:
    return lambda: all(
        ledger.acked_by_partition[p] - since[p] >= PHASE_ACKS for p in range(PARTITIONS)
    )


def read_committed(bootstrap: str, topic: str, timeout: float = 60.0) -> list[int]:
    """Every record of ``topic`` up to its end offsets, read by a read_committed consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"audit-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in partitions}
        consumer.assign(partitions)
        seen: list[int] = []
        next_offset = {p: 0 for p in ends}
        deadline = time.monotonic() + timeout
        while any(next_offset[p] < ends[p] for p in ends):
            assert time.monotonic() < deadline, f"read {len(seen)} records, ends {ends}"
            for msg in consumer.consume(1000, 0.2):
                assert msg.error() is None, msg.error()
                value = msg.value()
                assert value is not None
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                seen.append(int(value))
                next_offset[partition] = offset + 1
        return seen
    finally:
        consumer.close()


def wait_for_full_isr(cluster: LocalKafka, topic: str) -> None:
    wait_for(
        lambda: all(
            cluster.in_sync_replicas(topic, p) == set(cluster.nodes) for p in range(PARTITIONS)
        ),
        60,
        f"every partition of {topic} to have all {len(cluster.nodes)} nodes in sync",
    )


def test_leader_killed_mid_stream_loses_no_acknowledged_record() -> None:
    topic = f"chaos-{uuid.uuid4().hex[:10]}"
    with private_cluster(3) as cluster:
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic(topic, PARTITIONS, 3)])[topic].result(timeout=30)
        wait_for_full_isr(cluster, topic)

        ledger = Ledger()
        producer = Producer(
            {
                "bootstrap.servers": cluster.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
            }
        )
        produce_until(
            producer, topic, ledger, gained_on_every_partition(ledger, Counter()), "warming up"
        )

        victim = cluster.leader(topic, 0)
        assert victim in cluster.nodes
        produce_step(producer, topic, ledger, BURST)
        in_flight = len(producer)
        cluster.kill_node(victim)
        assert in_flight >= BURST, "the kill must come while records are unacknowledged"
        assert cluster.running_nodes() == set(cluster.nodes) - {victim}

        at_kill = Counter(ledger.acked_by_partition)
        produce_until(
            producer,
            topic,
            ledger,
            gained_on_every_partition(ledger, at_kill),
            f"the two nodes left to acknowledge on every partition (node {victim} killed)",
        )
        wait_for(
            lambda: cluster.leader(topic, 0) not in (victim, -1),
            30,
            f"partition 0 to be led by a node other than {victim}",
        )

        cluster.start_node(victim)
        at_restart = Counter(ledger.acked_by_partition)
        produce_until(
            producer,
            topic,
            ledger,
            gained_on_every_partition(ledger, at_restart),
            f"acknowledgements after node {victim} restarted",
        )
        # The restarted node catches up from its own log and rejoins every ISR.
        wait_for_full_isr(cluster, topic)

        assert producer.flush(PHASE_TIMEOUT_S) == 0, "records still unacknowledged"
        assert ledger.errors == []
        assert len(ledger.acked) == ledger.produced

        seen = read_committed(cluster.bootstrap, topic)
        counts = Counter(seen)
        duplicates = sorted(seq for seq, n in counts.items() if n > 1)
        lost = sorted(set(ledger.acked) - counts.keys())
        assert lost == [], f"{len(lost)} acknowledged records lost, first {lost[:10]}"
        assert duplicates == [], f"{len(duplicates)} records read twice, first {duplicates[:10]}"
        assert len(seen) == len(ledger.acked)


def port_accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def test_private_broker_keeps_its_data_across_stop_and_start() -> None:
    topic = f"outage-{uuid.uuid4().hex[:10]}"
    with private_broker() as broker:
        create_topics(broker.bootstrap, [topic], partitions=1)
        produce(broker.bootstrap, topic, [(b"k", b"before the outage")])

        broker.stop_node(1)
        assert broker.running_nodes() == set()
        assert not port_accepts(broker.address(1))

        broker.start_node(1)
        assert broker.running_nodes() == {1}
        got = read_all(broker.bootstrap, topic, lambda records: len(records) >= 1, timeout=30)
        assert [m.value() for m in got] == [b"before the outage"]
