"""Shared fixtures: a real Kafka broker for the session, unique topics per test.

The broker starts only when a test asks for ``bootstrap`` (the integration tests), so the
unit tests run without Java.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.kafka_broker import broker_for_tests


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """A real broker: KAFKA_BOOTSTRAP_SERVERS, else testcontainers, else local-kafka.sh."""
    with broker_for_tests() as servers:
        yield servers


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
