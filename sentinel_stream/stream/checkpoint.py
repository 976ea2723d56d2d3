"""The one place where "processed" becomes "committed": the at-least-once contract.

:meth:`Checkpoint.commit`, in order:

1. flush the producer: every verdict and dead letter produced for the records processed
   so far is acknowledged by the broker (``acks=all``, idempotent), or the flush times
   out;
2. if any record was not acknowledged (timeout, or a delivery error reported by
   librdkafka after its own retries), raise :class:`DeliveryFailed`: nothing is
   committed, and the consumer stops; a restart reprocesses from the last commit;
3. commit ``offset + 1`` of the last processed record of each partition, synchronously.

Offsets only move forward (:meth:`track` refuses to go back): a record is never
committed before the ones before it were processed.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition


class DeliveryFailed(Exception):
    """Records were produced but not acknowledged: committing would lose them."""


class Checkpoint:
    """Tracks processed offsets and commits them once their outputs are acknowledged."""

    def __init__(
        self, consumer: Consumer, producer: Producer, topic: str, interval_s: float
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._topic = topic
        self._interval = interval_s
        self._next: dict[int, int] = {}
        """partition -> the offset to commit (last processed + 1), not yet committed."""
        self._committed: dict[int, int] = {}
        self._last_commit = time.monotonic()
        self._errors: list[str] = []
        self._errors_lock = threading.Lock()
        self.commits = 0

    # -- called by the producer's delivery reports (only failures report) ---------------

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            with self._errors_lock:
                self._errors.append(f"{msg.topic()}: {err.str()}")

    # -- tracking ------------------------------------------------------------------------

    def track(self, partition: int, offset: int) -> None:
        """Record that ``offset`` of ``partition`` is processed (its outputs produced)."""
        nxt = offset + 1
        if nxt <= self._committed.get(partition, -1):
            raise RuntimeError(f"offset {offset} of partition {partition} goes back past a commit")
        if nxt > self._next.get(partition, -1):
            self._next[partition] = nxt

    def forget(self, partitions: list[int]) -> None:
        """Partitions lost without a chance to commit: another member will redo them."""
        for p in partitions:
            self._next.pop(p, None)
            self._committed.pop(p, None)

    def due(self) -> bool:
        return bool(self._next) and time.monotonic() - self._last_commit >= self._interval

    def commit(self, timeout: float = 30.0) -> int:
        """Flush, check, commit. Returns the number of partitions committed."""
        self._last_commit = time.monotonic()
        remaining = self._producer.flush(timeout)
        if remaining > 0:
            raise DeliveryFailed(
                f"{remaining} records were not acknowledged by the broker within {timeout:.0f} s"
            )
        with self._errors_lock:
            errors, self._errors = self._errors, []
        if errors:
            raise DeliveryFailed(
                f"{len(errors)} records failed delivery after retries; first: {errors[0]}"
            )
        if not self._next:
            return 0
        offsets = [TopicPartition(self._topic, p, o) for p, o in self._next.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET:
                return 0
            raise
        self._committed.update(self._next)
        self._next.clear()
        self.commits += 1
        return len(offsets)
