"""Producing the loop's outputs: verdicts to the output topic, bad records to the DLQ.

One record's trouble stays that record's: a verdict that cannot be serialised or
produced becomes a dead letter (``processing``), and a dead letter the DLQ topic refuses
for its size is replaced by one without the value (its headers say where the original
still is), so that nothing a record contains stops the member. The producer's queue is
never overrun: when it is full the loop waits for room (counted), it never drops.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sentinel_stream.engine import Encoded, Event
from sentinel_stream.metrics import Metrics
from sentinel_stream.records import (
    DETAIL_MAX,
    DLQ_DETAIL,
    DLQ_ERROR,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
    VerdictRecord,
)
from sentinel_stream.stream.decode import BadRecord
from sentinel_stream.stream.errors import error_of
from sentinel_stream.stream.kafka.produce import Headers, produce_waiting

log = structlog.get_logger("sentinel_stream.publish")

RECORD_OVERHEAD = 512
"""Bytes a record batch adds around one record (header, lengths, timestamps), rounded up."""
MAX_KEY = 4096
"""A dead letter sent without its value keeps at most this much of its key."""


DlqHeaders = list[tuple[str, bytes | None]]


def dead_letter_headers(b: BadRecord) -> DlqHeaders:
    return [
        (DLQ_ERROR, b.error.encode()),
        (DLQ_DETAIL, b.detail[:DETAIL_MAX].encode("utf-8", "replace")),
        (DLQ_SOURCE_TOPIC, b.topic.encode()),
        (DLQ_SOURCE_PARTITION, str(b.partition).encode()),
        (DLQ_SOURCE_OFFSET, str(b.offset).encode()),
    ]


def processing_error(
    key: bytes | None, value: bytes | None, source: tuple[str, int, int], exc: BaseException
) -> BadRecord:
    """A valid record that failed later: its class names the failure, never its values."""
    topic, partition, offset = source
    detail = f"{type(exc).__name__} while processing the record"
    return BadRecord(key, value, "processing", detail, topic, partition, offset)


class Publisher:
    """Produces verdicts and dead letters on the loop's producer."""

    def __init__(
        self,
        producer: Producer,
        output_topic: str,
        dlq_topic: str,
        metrics: Metrics,
        anomalies_only: bool = False,
        on_anomaly: Callable[[VerdictRecord], None] | None = None,
        on_wait: Callable[[], None] | None = None,
        dlq_max_bytes: int | None = None,
    ) -> None:
        self._producer = producer
        self._out = output_topic
        self._dlq = dlq_topic
        self.metrics = metrics
        self._anomalies_only = anomalies_only
        self._on_anomaly = on_anomaly
        self._on_wait = on_wait
        """Called while waiting for room in the producer's queue (the loop's heartbeat)."""
        self._dlq_max = dlq_max_bytes
        """The DLQ topic's ``max.message.bytes``, when known: a dead letter that would
        exceed it goes without its value at once (see :meth:`dead_letter`)."""

    def _full(self) -> None:
        self.metrics.produce_retries.inc()
        if self._on_wait is not None:
            self._on_wait()

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None
    ) -> None:
        produce_waiting(self._producer, topic, value, key, headers, on_full=self._full)

    def verdicts(
        self, events: list[Event], raws: list[tuple[bytes | None, bytes | None]], batch: Encoded
    ) -> dict[str, int]:
        """Produce a batch's verdicts (keyed by route); an event that failed, or whose
        verdict cannot be produced, becomes a dead letter of its original bytes.
        Returns the anomalies published per detector."""
        produce = self._producer.produce
        out = self._out
        flagged = {i for i, _ in batch.anomalies}
        published = 0
        for i, payload in enumerate(batch.payloads):
            if payload is None or (self._anomalies_only and i not in flagged):
                continue
            key = events[i].route.encode()
            try:
                try:
                    produce(out, payload, key)
                except BufferError:
                    self._produce(out, key, payload, None)
            except (KafkaException, UnicodeEncodeError) as exc:
                source = events[i].source
                assert source is not None, "Kafka events carry their source"
                self.dead_letter(processing_error(raws[i][0], raws[i][1], source, exc))
                flagged.discard(i)
                continue
            published += 1
        self.metrics.verdicts_published.inc(published)
        by_detector: dict[str, int] = {}
        for i, v in batch.anomalies:
            if i not in flagged:
                continue
            by_detector[v["detector"]] = by_detector.get(v["detector"], 0) + 1
            if self._on_anomaly is not None:
                self._on_anomaly(v)
        for i, failure in batch.failed:
            self.failed(failure.event, raws[i], failure.error)
        return by_detector

    def failed(self, event: Event, raw: tuple[bytes | None, bytes | None], exc: Exception) -> None:
        """An event the engine could not score: to the DLQ, the loop goes on."""
        assert event.source is not None
        log.warning("processing_failed", error=type(exc).__name__, offset=event.source[2])
        self.metrics.processing_failures.inc()
        self.dead_letter(processing_error(raw[0], raw[1], event.source, exc))

    def dead_letter(self, b: BadRecord) -> None:
        headers = dead_letter_headers(b)
        size = (
            len(b.key or b"")
            + len(b.value or b"")
            + sum(len(k) + len(v or b"") for k, v in headers)
        )
        if self._dlq_max is not None and size + RECORD_OVERHEAD > self._dlq_max:
            self._without_value(b.key, b.value, headers)
            return
        try:
            self._produce(self._dlq, b.key, b.value, list(headers))
        except KafkaException as exc:  # larger than this producer may send
            err = error_of(exc)
            if err is None or err.code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            self._without_value(b.key, b.value, headers)
            return
        self.metrics.dead_letters.labels(b.error).inc()
        log.info("dead_letter", reason=b.error, partition=b.partition, offset=b.offset)

    def on_delivery(self, err: KafkaError | None, msg: Message) -> KafkaError | None:
        """A delivery report (failures only). A dead letter too large for the DLQ topic is
        replaced here; returns the error the checkpoint must see, or None."""
        if err is None:
            return None
        self.metrics.delivery_failures.inc()
        if (
            msg.topic() == self._dlq
            and msg.value() is not None
            and err.code() == KafkaError.MSG_SIZE_TOO_LARGE
        ):
            self._too_large_for_dlq(msg)
            return None
        log.error("delivery_failed", topic=msg.topic(), error=err.str())
        return err

    def _without_value(self, key: bytes | None, value: bytes | None, headers: DlqHeaders) -> None:
        """The dead letter without its value: the headers point at the original, which
        stays in the source topic."""
        found = dict(headers)
        detail = (
            f"the original value ({len(value or b'')} bytes) is larger than the DLQ topic "
            "accepts; it stays at the source topic, partition and offset in these headers"
        )
        replacement: DlqHeaders = [
            (DLQ_ERROR, found.get(DLQ_ERROR) or b"too_large"),
            (DLQ_DETAIL, detail.encode()),
            (DLQ_SOURCE_TOPIC, found.get(DLQ_SOURCE_TOPIC)),
            (DLQ_SOURCE_PARTITION, found.get(DLQ_SOURCE_PARTITION)),
            (DLQ_SOURCE_OFFSET, found.get(DLQ_SOURCE_OFFSET)),
        ]
        self.metrics.dead_letters_truncated.inc()
        code = (found.get(DLQ_ERROR) or b"too_large").decode("ascii", "replace")
        self.metrics.dead_letters.labels(code).inc()
        log.warning("dead_letter_without_value", size=len(value or b""))
        self._produce(self._dlq, key[:MAX_KEY] if key else key, None, list(replacement))

    def _too_large_for_dlq(self, msg: Message) -> None:
        headers: DlqHeaders = []
        for name, value in list(msg.headers() or []):
            raw = value.encode() if isinstance(value, str) else value
            headers.append((str(name), raw if isinstance(raw, bytes) else None))
        self._without_value(msg.key(), msg.value(), headers)
