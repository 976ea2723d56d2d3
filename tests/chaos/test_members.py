"""Chaos on real member processes: kill -9, scale out and in, a paused member; at least
once and exactly once.

Each case runs ``sentinel-stream run`` members in one group against a real broker while a
verifiable producer sends events at a steady rate, makes its fault, and counts what a
``read_committed`` reader saw against what the broker acknowledged: lost must be 0 (and
duplicated 0 under exactly-once). The members run with a short session timeout, as a
deployment that wants quick failover does, so a killed member's partitions move within
seconds.

``CHAOS_SCALE`` (default 1) multiplies the events and the time each case runs:
``scripts/chaos.sh`` runs the suite at full length.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chaos import (
    COMMIT_INTERVAL_MS,
    RATE,
    SESSION_TIMEOUT_MS,
    Group,
    Tally,
    VerifiableConsumer,
    VerifiableProducer,
    seconds,
    tally,
)
from tests.support.kafka import create_topics
from tests.support.service import topic_names

pytestmark = pytest.mark.kafka

PARTITIONS = 6

FAULTS = ("kill", "stop", "pause", "start")
"""Actions that disturb the group (``join``, a member that starts and is ready before the
fault, sets the scene)."""


@pytest.fixture
def group(bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Group]:
    names = topic_names(topic_prefix)
    create_topics(bootstrap, names.values(), PARTITIONS)
    g = Group(bootstrap, topic_prefix, tmp_path)
    try:
        yield g
    finally:
        g.close()


def run_case(
    group: Group, case: str, events: int, fault: list[tuple[float, str]], exactly_once: bool
) -> Tally:
    """Send ``events`` at RATE; at each (second, action) of ``fault`` act on the group;
    then count."""
    if exactly_once:
        group.extra["SENTINEL_EXACTLY_ONCE"] = "true"
    group.start("a")
    group.wait_ready("a")
    names = topic_names(group.prefix)
    consumer = VerifiableConsumer(group.bootstrap, names["SENTINEL_OUTPUT_TOPIC"])
    producer = VerifiableProducer(
        group.bootstrap, names["SENTINEL_INPUT_TOPIC"], events, RATE, case
    ).start()
    started = time.monotonic()
    fault_start: float | None = None
    try:
        for at, action in fault:
            while time.monotonic() - started < at:
                group.alive()
                time.sleep(0.1)
            verb, name = action.split()
            if verb == "start":
                group.start(name)
            elif verb == "join":
                group.start(name)
                group.wait_ready(name)
            elif verb == "kill":
                group.kill(name)
            elif verb == "stop":
                group.stop(name)
            elif verb == "pause":
                group.signal(name, signal.SIGSTOP)
            elif verb == "resume":
                group.signal(name, signal.SIGCONT)
            if fault_start is None and verb in FAULTS:
                fault_start = time.monotonic()
        producer.finish()
        assert consumer.wait_for(producer.acked, 180), "not every acknowledged event got a verdict"
        group.alive()
    finally:
        producer.stop()
        consumer.stop()
    t = tally(case, producer, consumer, fault_start)
    assert t.events_in == events and t.lost == 0, t
    if exactly_once:
        assert t.duplicated == 0, t
    return t


def test_kill_9_of_a_member_loses_nothing(group: Group) -> None:
    events = int(seconds(24) * RATE)
    t = run_case(
        group,
        "kill -9 of one of two members",
        events,
        [(0, "join b"), (seconds(8), "kill b"), (seconds(14), "start b")],
        exactly_once=False,
    )
    # Duplicates are bounded by what the killed member processed since its last commit.
    assert t.duplicated <= RATE * (COMMIT_INTERVAL_MS / 1000 + 1), t


def test_scale_out_and_in_under_load(group: Group) -> None:
    events = int(seconds(24) * RATE)
    run_case(
        group,
        "scale 1 -> 3 -> 1 members",
        events,
        [
            (seconds(4), "start b"),
            (seconds(4), "start c"),
            (seconds(12), "stop b"),
            (seconds(12), "stop c"),
        ],
        exactly_once=False,
    )


def test_a_paused_member_past_its_poll_interval_loses_nothing(group: Group) -> None:
    events = int(seconds(30) * RATE)
    pause = SESSION_TIMEOUT_MS / 1000 + 6
    run_case(
        group,
        "a member paused past max.poll.interval.ms",
        events,
        [
            (0, "join b"),
            (seconds(6), "pause b"),
            (seconds(6) + pause, "resume b"),
        ],
        exactly_once=False,
    )


def test_exactly_once_across_kill_9_restart_and_rebalance(group: Group) -> None:
    events = int(seconds(24) * RATE)
    run_case(
        group,
        "exactly once: kill -9, restart, rebalance",
        events,
        [(0, "join b"), (seconds(8), "kill b"), (seconds(14), "start b")],
        exactly_once=True,
    )
