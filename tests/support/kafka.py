"""Test helpers that talk to the real broker: produce, read back, wait with deadlines."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, Producer, TopicPartition

# confluent_kafka.admin re-exports NewTopic from cimpl without marking it public
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sentinel_stream.stream.kafka.produce import produce_waiting


def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int = 3, replication: int = 1
) -> None:
    """Create topics; those named ``*.state`` or ``*.members`` are compacted, as the
    service's must be (the members topic has one partition)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(
                n,
                1 if n.endswith(".members") else partitions,
                replication,
                config={"cleanup.policy": "compact"} if n.endswith((".state", ".members")) else {},
            )
            for n in names
        ]
    )
    for f in futures.values():
        f.result(timeout=30)


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    # Java clients' partitioner, the service's default SENTINEL_PARTITIONER.
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
        }
    )
    n = 0
    for key, value in records:
        produce_waiting(p, topic, value, key)
        n += 1
    assert p.flush(60) == 0
    return n


def event(route: str = "/api/test", **fields: Any) -> bytes:
    body: dict[str, Any] = {"latency": 100.0, "input_length": 500, "errors": 0, "route": route}
    body.update(fields)
    return orjson.dumps(body)


def read_all(
    bootstrap: str,
    topic: str,
    until: Callable[[list[Message]], bool],
    timeout: float = 60.0,
) -> list[Message]:
    """Read ``topic`` from the beginning until ``until(records)`` holds or the deadline."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    c.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            for m in c.consume(1000, 0.2):
                if m.error() is None:
                    out.append(m)
    finally:
        c.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex}"})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        c.close()


def all_committed(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    """True when the group's committed offset is the end of every partition."""
    ends = end_offsets(bootstrap, topic, partitions)
    got = committed(bootstrap, group, topic, partitions)
    return all(got[p] == ends[p] for p in ends if ends[p] > 0)
