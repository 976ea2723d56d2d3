"""librdkafka settings for each client, with the defaults the delivery guarantee needs.

User settings (``SENTINEL_KAFKA_OPT_*``, the properties file) are applied last, except
the few that the at-least-once contract depends on: offsets are committed by the
pipeline, never automatically, and the producer is idempotent with ``acks=all``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message
from confluent_kafka.admin import AdminClient

from sentinel_stream.config import Settings
from sentinel_stream.logs import kafka_logger

_CONSUMER_FIXED = {"enable.auto.commit": "false", "enable.auto.offset.store": "false"}
_PRODUCER_FIXED = {"enable.idempotence": "true", "acks": "all"}


def consumer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "group.id": settings.group_id,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": "false",
        # Bound what librdkafka prefetches per partition (memory), in KiB.
        "queued.max.messages.kbytes": "65536",
        "fetch.wait.max.ms": "50",
        "statistics.interval.ms": "5000",
    }
    conf.update(settings.kafka_common())
    conf.update(extra)
    conf.update(_CONSUMER_FIXED)
    conf["logger"] = kafka_logger()
    return conf


def producer_config(
    settings: Settings, on_delivery: Callable[[KafkaError | None, Message], None] | None = None
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "linger.ms": "5",
        "batch.num.messages": "10000",
        "queue.buffering.max.messages": "200000",
        "queue.buffering.max.kbytes": "262144",
        "delivery.timeout.ms": "120000",
        # Only failures call back: success costs no Python call per record.
        "delivery.report.only.error": True,
    }
    conf.update(settings.kafka_common())
    conf.update(_PRODUCER_FIXED)
    if on_delivery is not None:
        conf["on_delivery"] = on_delivery
    conf["logger"] = kafka_logger()
    return conf


def make_admin(settings: Settings) -> AdminClient:
    conf: dict[str, Any] = dict(settings.kafka_common())
    conf["logger"] = kafka_logger()
    return AdminClient(conf)
