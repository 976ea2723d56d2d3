"""Which Kafka failures heal: one list in the code, the same in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from sentinel_stream.stream.errors import FATAL, HEALS, Backoff, heals

README = Path(__file__).resolve().parents[2] / "README.md"


def _name(code: int) -> str:
    return KafkaError(code).name()


def test_the_readme_names_every_code_on_its_side() -> None:
    text = README.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if "_ALL_BROKERS_DOWN" in line)
    heal_cell, fatal_cell = row.strip("| ").split(" | ")
    named = {"heals": set(re.findall(r"`([A-Z_]+)`", heal_cell))}
    named["fatal"] = set(re.findall(r"`([A-Z_]+)`", fatal_cell))
    assert named["heals"] == {_name(c) for c in HEALS}
    assert named["fatal"] == {_name(c) for c in FATAL}


@pytest.mark.parametrize("code", sorted(HEALS))
def test_healing_codes_heal(code: int) -> None:
    assert heals(KafkaError(code))


@pytest.mark.parametrize("code", sorted(FATAL))
def test_fatal_codes_stop(code: int) -> None:
    assert not heals(KafkaError(code))


def test_an_error_librdkafka_calls_fatal_stops_even_if_its_code_heals() -> None:
    assert not heals(KafkaError(KafkaError._TRANSPORT, fatal=True))
    assert heals(KafkaError(KafkaError.INVALID_MSG, retriable=True))
    assert not heals(KafkaError(KafkaError.INVALID_MSG))


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.failed(now=0.0) for _ in range(4)] == [0.1, 0.2, 0.4, 0.5]
    assert not b.ready(now=0.4) and b.ready(now=0.5)
    b.succeeded()
    assert b.ready(now=0.0) and b.failed(now=0.0) == 0.1
