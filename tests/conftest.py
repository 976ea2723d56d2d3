"""Shared fixtures: a real Kafka broker for the session, unique topics per test."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_broker import broker_for_tests


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """A real broker: KAFKA_BOOTSTRAP_SERVERS, else testcontainers, else local-kafka.sh."""
    with broker_for_tests() as servers:
        yield servers


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
