"""Fire-and-forget records from the server's side: forwarded HTTP events, LLM explanations.

HTTP events are telemetry too: they are produced to the input topic, keyed by route, so
a caller who only uses HTTP still trains its routes' models (the Kafka loop learns them
as any other event, and publishes their verdicts). LLM explanations follow their
verdicts on the output topic. Neither may hold anything up: produce is asynchronous, a
full local queue drops the record, and every outcome is counted by kind
(``sentinel_side_records_total{kind,outcome}``). Verdicts and dead letters do not come
this way: the loop's own producer and checkpoint give them their delivery guarantee.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import structlog
from confluent_kafka import KafkaError, Message, Producer

from sentinel_stream.config import Settings
from sentinel_stream.metrics import Metrics
from sentinel_stream.stream.kafka.clients import producer_config

log = structlog.get_logger("sentinel_stream.side_producer")

Kind = Literal["forward", "explanation"]
TIMEOUT_MS = 120_000
"""A side record not acknowledged by then is given up (counted)."""


class SideProducer:
    """Produces records keyed by route, never blocking, with counted outcomes."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        self._producer = Producer(
            producer_config(
                settings,
                extra={
                    "queue.buffering.max.messages": str(settings.side_queue_max),
                    "message.timeout.ms": str(TIMEOUT_MS),
                    "delivery.report.only.error": False,
                    # No reader waits on these records (the HTTP answer has gone): wait
                    # 50 ms to fill a batch, so that the broker and the loop's consumer
                    # handle a request per partition every 50 ms, not every 2 ms
                    # (bench/http_load.py: 0.29 -> 0.38-0.39 of plain, forwarding on).
                    "linger.ms": "50",
                    # Forwarded events land where the telemetry producers' would.
                    "partitioner": settings.partitioner,
                },
            )
        )
        self._reports = {kind: self._report(kind) for kind in ("forward", "explanation")}

    def _report(self, kind: Kind) -> Callable[[KafkaError | None, Message], None]:
        delivered = self._metrics.side_records.labels(kind, "delivered")
        failed = self._metrics.side_records.labels(kind, "failed")

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                delivered.inc()
                return
            failed.inc()
            log.warning("side_produce_failed", kind=kind, error=err.str())

        return report

    def send(self, topic: str, route: str, value: bytes, kind: Kind) -> bool:
        """Queue one record; False (and counted) when the producer's queue is full.

        Delivery reports are served by :meth:`poll`, which the service calls ten times a
        second, not here: a poll per request put on every request a cost that one poll
        per 100 ms pays for all of them."""
        try:
            self._producer.produce(topic, value, route.encode(), on_delivery=self._reports[kind])
        except BufferError:
            self._metrics.side_records.labels(kind, "dropped").inc()
            return False
        return True

    def poll(self) -> None:
        """Serve delivery reports (counted by kind); frees their room in the queue."""
        self._producer.poll(0)

    def close(self, timeout: float = 10.0) -> int:
        """Flush; returns the records still not delivered (given up, counted as failed
        when librdkafka reports them)."""
        left = int(self._producer.flush(timeout))
        if left:
            log.warning("side_records_not_delivered", records=left)
        return left
