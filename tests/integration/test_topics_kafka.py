"""Topics the service creates are listed, a leader for every partition, before it
subscribes to them (a member that subscribed a moment too early was told its input topic
did not exist, and stopped): the wait that :func:`ensure_topics` makes after creating
them (``sentinel_stream.stream.kafka.topics.wait_until_listed``)."""

from __future__ import annotations

import time

import pytest

from sentinel_stream.config import Settings
from sentinel_stream.stream.kafka.clients import make_admin
from sentinel_stream.stream.kafka.topics import TopicsMissing, wait_until_listed
from tests.support.kafka import create_topics

pytestmark = pytest.mark.kafka


def test_a_topic_never_listed_is_named_once_the_wait_is_over(
    bootstrap: str, topic_prefix: str
) -> None:
    admin = make_admin(Settings(kafka_bootstrap=bootstrap))
    started = time.monotonic()
    with pytest.raises(TopicsMissing, match=f"{topic_prefix}.never"):
        wait_until_listed(admin, {f"{topic_prefix}.never": 1}, timeout=1.0)
    assert time.monotonic() - started >= 1.0  # it waited for it, then gave up


def test_a_topic_with_fewer_partitions_than_created_is_not_yet_listed(
    bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.two"
    create_topics(bootstrap, [topic], partitions=2)
    admin = make_admin(Settings(kafka_bootstrap=bootstrap))
    wait_until_listed(admin, {topic: 2}, timeout=30.0)  # listed as created
    with pytest.raises(TopicsMissing, match=topic):
        wait_until_listed(admin, {topic: 3}, timeout=1.0)
