"""The start-up topic check: every topic the service uses exists, or is created."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sentinel_stream.config import Settings


class TopicsMissing(Exception):
    """Topics the service needs do not exist and may not be created."""


class BrokerUnreachable(Exception):
    """No broker answered at the configured bootstrap address."""


def required_topics(settings: Settings) -> list[str]:
    return [settings.input_topic, settings.output_topic, settings.dlq_topic]


def ensure_topics(admin: AdminClient, settings: Settings, timeout: float = 15.0) -> list[str]:
    """Check the topics; create the missing ones if allowed. Returns the ones created."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"no Kafka broker answered at {settings.kafka_bootstrap} within {timeout:.0f} s "
            f"(SENTINEL_KAFKA_BOOTSTRAP): {exc}"
        ) from None
    missing = [t for t in required_topics(settings) if t not in metadata.topics]
    if not missing:
        return []
    if not settings.create_topics:
        raise TopicsMissing(
            "missing Kafka topics: "
            + ", ".join(missing)
            + "; create them, or set SENTINEL_CREATE_TOPICS=true to let the service create them"
        )
    futures = admin.create_topics(
        [NewTopic(t, settings.topic_partitions, settings.topic_replication) for t in missing],
        operation_timeout=timeout,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(topic)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another member created it first
            raise TopicsMissing(f"could not create topic {topic}: {err}") from None
    return created
