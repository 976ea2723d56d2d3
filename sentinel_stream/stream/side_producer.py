"""Fire-and-forget records from the server's side: forwarded HTTP events, LLM explanations.

HTTP events are telemetry too: they are produced to the input topic, keyed by route, so
a caller who only uses HTTP still trains its routes' models (the Kafka loop learns them
as any other event, and publishes their verdicts). LLM explanations follow their
verdicts on the output topic. Neither may hold anything up: produce is asynchronous, a
full local queue drops the record and counts it, a delivery failure is counted and
logged. (Verdicts and dead letters do not come this way: the pipeline's own producer
and checkpoint give them at-least-once delivery.)
"""

from __future__ import annotations

import structlog
from confluent_kafka import KafkaError, Message, Producer

from sentinel_stream.config import Settings
from sentinel_stream.stream.kafka.clients import producer_config

log = structlog.get_logger("sentinel_stream.side_producer")


class SideProducer:
    """Produces records keyed by route, never blocking, with counted failures."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(producer_config(settings, self._on_delivery))
        self.dropped = 0
        self.failed = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            log.warning("side_produce_failed", topic=msg.topic(), error=err.str())

    def send(self, topic: str, route: str, value: bytes) -> bool:
        """Queue one record; False (and counted) when the producer's queue is full."""
        try:
            self._producer.produce(topic, value, route.encode())
        except BufferError:
            self.dropped += 1
            return False
        self._producer.poll(0)
        return True

    def poll(self) -> None:
        self._producer.poll(0)

    def close(self, timeout: float = 10.0) -> int:
        return int(self._producer.flush(timeout))
