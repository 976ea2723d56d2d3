"""librdkafka settings for each client, with the defaults the delivery guarantee needs.

User settings (``SENTINEL_KAFKA_OPT_*``, the properties file) are applied last, except
the few that the at-least-once contract depends on: offsets are committed by the
pipeline, never automatically, and the producer is idempotent with ``acks=all``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
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
        # Bound what librdkafka prefetches (memory), in KiB: 16 MiB is ~100,000 events,
        # a second of the loop's work at full speed; librdkafka's default, 64 MiB, sat in
        # the process's resident memory after every backlog (README, *Memory*).
        "queued.max.messages.kbytes": "16384",
        # Latency over request count: a fetch answers within 10 ms when there is little
        # to fetch (under load it fills at once anyway).
        "fetch.wait.max.ms": "10",
        # Broker states and lag for the probes: /ready follows the broker within a second.
        "statistics.interval.ms": "1000",
    }
    conf.update(settings.kafka_common())
    conf.update(extra)
    conf.update(_CONSUMER_FIXED)
    conf["logger"] = kafka_logger()
    return conf


def reader_config(settings: Settings, role: str) -> dict[str, Any]:
    """A consumer that assigns itself partitions and commits nothing (the state topic's
    readers): a group id of its own, ``<group>-<role>-<random>``, so it never touches the
    loop's group, and no statistics (no probe reads them)."""
    return consumer_config(
        settings,
        **{
            "group.id": f"{settings.group_id}-{role}-{uuid.uuid4().hex[:8]}",
            "statistics.interval.ms": "0",
        },
    )


def producer_config(
    settings: Settings,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    max_message_bytes: int | None = None,
    transactional: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The loop's producer (and, with defaults, the side producer).

    At-least-once: a record is never given up locally (``message.timeout.ms`` 0, no
    limit): during a broker outage the queue fills, consumption pauses, and everything
    is delivered when the broker returns. Exactly-once: a transaction cannot outlive its
    timeout, so neither can a record in it; one that times out aborts the transaction,
    and the loop processes its records again.
    """
    conf: dict[str, Any] = {
        "linger.ms": "2",
        "batch.num.messages": "10000",
        "queue.buffering.max.messages": str(settings.produce_queue_max),
        "queue.buffering.max.kbytes": "262144",
        "message.timeout.ms": "0",
        # Only failures call back: success costs no Python call per record.
        "delivery.report.only.error": True,
    }
    if max_message_bytes is not None:
        conf["message.max.bytes"] = str(max_message_bytes)
    if transactional:
        timeout_ms = transaction_timeout_ms(settings)
        conf["transactional.id"] = f"{settings.group_id}-{settings.instance_id}"
        conf["transaction.timeout.ms"] = str(timeout_ms)
        conf["message.timeout.ms"] = str(timeout_ms)
    conf.update(settings.kafka_common())
    conf.update(extra or {})
    conf.update(_PRODUCER_FIXED)
    if on_delivery is not None:
        conf["on_delivery"] = on_delivery
    conf["logger"] = kafka_logger()
    return conf


def transaction_timeout_ms(settings: Settings) -> int:
    """Long enough for a commit interval and a slow commit; short, so that read_committed
    readers are held up briefly when a member dies with a transaction open."""
    return max(10_000, 10 * settings.commit_interval_ms)


def make_admin(settings: Settings) -> AdminClient:
    conf: dict[str, Any] = dict(settings.kafka_common())
    conf["logger"] = kafka_logger()
    return AdminClient(conf)
