"""The start-up topic check: every topic the service uses exists, or is created.

The dead-letter topic must hold any record the input topic accepted, byte for byte, so
its ``max.message.bytes`` (when the service creates it) and the producer's
``message.max.bytes`` follow the input topic's limit, with room for the dead-letter
headers. A DLQ created by hand with a smaller limit is reported at start; a dead letter
it refuses is sent again without its value (see :mod:`sentinel_stream.stream.publish`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from sentinel_stream.config import Settings

log = structlog.get_logger("sentinel_stream.topics")

BROKER_DEFAULT_LIMIT = 1_048_588
"""Kafka's default ``max.message.bytes`` (``message.max.bytes`` on the broker)."""
HEADROOM = 64 * 1024
"""Room above the input topic's limit for a dead letter's key and headers."""
LIBRDKAFKA_MAX = 1_000_000_000
"""The largest ``message.max.bytes`` librdkafka accepts."""


class TopicsMissing(Exception):
    """Topics the service needs do not exist and may not be created."""


class BrokerUnreachable(Exception):
    """No broker answered at the configured bootstrap address."""


class StateTopicUnfit(TopicsMissing):
    """The state topic exists but cannot be a route changelog as it is."""


@dataclass(frozen=True, slots=True)
class TopicLimits:
    """What the topics accept, read at start."""

    input_max_bytes: int
    """The input topic's ``max.message.bytes``: the largest record it can hold."""
    dlq_max_bytes: int | None
    """The DLQ topic's, when it could be read."""
    input_partitions: int = 0
    """The input topic's partition count (0: unknown)."""

    @property
    def producer_max_bytes(self) -> int:
        """``message.max.bytes`` for the loop's producer: any input record fits as a
        dead letter."""
        return min(max(1_000_000, self.input_max_bytes + HEADROOM), LIBRDKAFKA_MAX)


def required_topics(settings: Settings) -> list[str]:
    return [
        settings.input_topic,
        settings.output_topic,
        settings.dlq_topic,
        settings.state_topic,
        settings.members_topic,
    ]


def _max_message_bytes(admin: AdminClient, topics: list[str], timeout: float) -> dict[str, int]:
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    out: dict[str, int] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entry = future.result(timeout=timeout).get("max.message.bytes")
        except KafkaException as exc:
            log.warning("topic_config_unreadable", topic=resource.name, error=str(exc))
            continue
        if entry is not None and entry.value is not None:
            out[resource.name] = int(entry.value)
    return out


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
    partitions = {name: len(t.partitions) for name, t in metadata.topics.items()}
    if not missing:
        check_state_topic(admin, settings, partitions, timeout)
        return []
    if not settings.create_topics:
        raise TopicsMissing(
            "missing Kafka topics: "
            + ", ".join(missing)
            + "; create them, or set SENTINEL_CREATE_TOPICS=true to let the service create them"
        )
    input_limit = BROKER_DEFAULT_LIMIT
    if settings.input_topic not in missing:
        input_limit = _max_message_bytes(admin, [settings.input_topic], timeout).get(
            settings.input_topic, BROKER_DEFAULT_LIMIT
        )
    new = []
    # The state topic is co-partitioned with the input: a route's state lives in the
    # partition number its events arrive on.
    input_partitions = partitions.get(settings.input_topic, settings.topic_partitions)
    for t in missing:
        config = {}
        count = settings.topic_partitions
        if t == settings.dlq_topic:
            config["max.message.bytes"] = str(input_limit + HEADROOM)
        if t == settings.state_topic:
            config["cleanup.policy"] = "compact"
            config["max.message.bytes"] = str(settings.state_max_bytes + HEADROOM)
            count = input_partitions
        if t == settings.members_topic:
            config["cleanup.policy"] = "compact"
            count = 1
        new.append(NewTopic(t, count, settings.topic_replication, config=config))
    futures = admin.create_topics(new, operation_timeout=timeout)
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
    wait_until_listed(admin, {t.topic: t.num_partitions for t in new}, timeout)
    if settings.state_topic not in missing:
        check_state_topic(admin, settings, partitions, timeout)
    return created


def wait_until_listed(admin: AdminClient, topics: dict[str, int], timeout: float) -> None:
    """Wait until the cluster's metadata lists each topic with its partitions (topic ->
    count), every one with a leader.

    A created topic is not at once in every broker's metadata: the controller has
    accepted it, the brokers learn of it a moment later. A consumer that subscribes in
    that moment is told the topic does not exist (``UNKNOWN_TOPIC_OR_PART``), which is
    rightly fatal for a topic that is really missing, and stopped a freshly started
    member on a loaded broker. Raises :class:`TopicsMissing` naming the topics still not
    listed after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pending = dict(topics)
    while True:
        try:
            listed = admin.list_topics(timeout=max(0.5, deadline - time.monotonic())).topics
        except KafkaException:
            listed = {}
        for name, count in list(pending.items()):
            t = listed.get(name)
            if (
                t is not None
                and t.error is None
                and len(t.partitions) >= count
                and all(p.error is None and p.leader >= 0 for p in t.partitions.values())
            ):
                del pending[name]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TopicsMissing(
                f"topics created, but not listed with a leader for every partition within "
                f"{timeout:.0f} s: {', '.join(sorted(pending))}"
            )
        time.sleep(0.05)


def check_state_topic(
    admin: AdminClient, settings: Settings, partitions: dict[str, int], timeout: float
) -> None:
    """A state topic made by hand must be compacted and co-partitioned with the input."""
    state, source = settings.state_topic, settings.input_topic
    if partitions.get(state) != partitions.get(source):
        raise StateTopicUnfit(
            f"state topic {state} has {partitions.get(state)} partitions, the input topic "
            f"{source} {partitions.get(source)}: they must be equal (SENTINEL_STATE_TOPIC)"
        )
    resource = ConfigResource(ResourceType.TOPIC, state)
    future = admin.describe_configs([resource], request_timeout=timeout)[resource]
    entry = future.result(timeout=timeout).get("cleanup.policy")
    policy = entry.value if entry is not None else ""
    if "compact" not in (policy or ""):
        raise StateTopicUnfit(
            f"state topic {state} has cleanup.policy={policy}: set cleanup.policy=compact, "
            "or its routes' state is deleted by retention"
        )


def read_limits(admin: AdminClient, settings: Settings, timeout: float = 15.0) -> TopicLimits:
    """The input and DLQ topics' size limits; warns when the DLQ cannot hold every
    record the input topic can."""
    limits = _max_message_bytes(admin, [settings.input_topic, settings.dlq_topic], timeout)
    topic = admin.list_topics(settings.input_topic, timeout=timeout).topics.get(
        settings.input_topic
    )
    found = TopicLimits(
        limits.get(settings.input_topic, BROKER_DEFAULT_LIMIT),
        limits.get(settings.dlq_topic),
        len(topic.partitions) if topic is not None and topic.error is None else 0,
    )
    if found.dlq_max_bytes is not None and found.dlq_max_bytes < found.input_max_bytes + HEADROOM:
        log.warning(
            "dlq_smaller_than_input",
            dlq_max_message_bytes=found.dlq_max_bytes,
            input_max_message_bytes=found.input_max_bytes,
            advice=f"set max.message.bytes={found.input_max_bytes + HEADROOM} on the DLQ "
            "topic; until then, larger dead letters are sent without their value",
        )
    return found
