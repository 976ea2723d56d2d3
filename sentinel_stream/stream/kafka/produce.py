"""Producing when librdkafka's local queue is full: wait for room, never drop.

``Producer.produce`` raises ``BufferError`` when the queue of records not yet sent is
full. Records the delivery guarantee covers (verdicts, dead letters, test and benchmark
input) must not be dropped, so the caller serves delivery reports until there is room.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Producer

Headers = list[tuple[str, str | bytes | None]]


def produce_waiting(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    headers: Headers | None = None,
    on_full: Callable[[], None] | None = None,
    poll_s: float = 0.05,
    partition: int = -1,
) -> None:
    """Queue one record, waiting for room in the local queue (``on_full`` counts waits).
    ``partition`` -1: the producer's partitioner chooses."""
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, headers=headers)
            return
        except BufferError:
            if on_full is not None:
                on_full()
            producer.poll(poll_s)
