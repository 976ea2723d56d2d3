"""HTTP events are telemetry too: they are produced to the input topic, keyed by route.

So a caller who only uses HTTP still trains its routes' models: the Kafka loop learns
from these events as from any other (and publishes their verdicts). Forwarding never
holds up an HTTP answer: produce is asynchronous, a full local queue drops the event and
counts it, and a delivery failure is counted and logged.
"""

from __future__ import annotations

import structlog
from confluent_kafka import KafkaError, Message, Producer

from sentinel_stream.config import Settings
from sentinel_stream.kafka.clients import producer_config

log = structlog.get_logger("sentinel_stream.forward")


class TelemetryForwarder:
    """Produces HTTP events to the input topic, fire-and-forget with counted failures."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.input_topic
        self._producer = Producer(producer_config(settings, self._on_delivery))
        self.dropped = 0
        self.failed = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            log.warning("forward_failed", error=err.str())

    def forward(self, route: str, value: bytes) -> bool:
        """Queue one event; False (and counted) when the producer's queue is full."""
        try:
            self._producer.produce(self._topic, value, route.encode())
        except BufferError:
            self.dropped += 1
            return False
        self._producer.poll(0)
        return True

    def poll(self) -> None:
        self._producer.poll(0)

    def close(self, timeout: float = 10.0) -> int:
        return int(self._producer.flush(timeout))
