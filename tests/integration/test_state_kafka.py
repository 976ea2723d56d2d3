"""What a route learnt outlives restarts, rebalances and compaction: real processes, a
real broker, the real state changelog."""

from __future__ import annotations

import signal
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from confluent_kafka import Producer

# confluent_kafka.admin re-exports NewTopic from cimpl without marking it public
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sentinel_stream.detect.snapshot import MAGIC
from tests.support.kafka import create_topics, event, produce, read_all, wait_for
from tests.support.service import (
    Proc,
    free_port,
    ready,
    scrape,
    service_env,
    start,
    topic_names,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 3
ROUTES = [f"/state/{i}" for i in range(6)]


class Member:
    """One ``sentinel-stream run`` process of the test's group."""

    def __init__(self, env: dict[str, str], tmp_path: Path, name: str) -> None:
        self.port = int(env["SENTINEL_PORT"])
        self.proc: Proc = start(env, tmp_path, name)

    def wait_ready(self) -> None:
        wait_for(lambda: ready(self.proc, self.port), 120, "member ready")

    def stop(self) -> str:
        self.proc.popen.send_signal(signal.SIGTERM)
        assert self.proc.popen.wait(60) == 0, self.proc.stderr()[-3000:]
        return self.proc.stderr()

    def kill(self) -> None:
        if self.proc.popen.poll() is None:
            self.proc.popen.kill()
            self.proc.popen.wait(30)


@pytest.fixture
def env_for(bootstrap: str, topic_prefix: str) -> Iterator[Any]:
    def make(name: str, **extra: str) -> dict[str, str]:
        return service_env(
            bootstrap,
            topic_prefix,
            free_port(),
            SENTINEL_CREATE_TOPICS="true",
            SENTINEL_TOPIC_PARTITIONS=str(PARTITIONS),
            SENTINEL_INSTANCE_ID=name,
            SENTINEL_MIN_HISTORY="64",
            **extra,
        )

    yield make


def learn(bootstrap: str, env: dict[str, str], per_route: int, tag: str) -> None:
    produce(
        bootstrap,
        env["SENTINEL_INPUT_TOPIC"],
        [
            (r.encode(), event(r, latency=80.0 + (i * 37) % 40, event_id=f"{tag}-{r}-{i}"))
            for i in range(per_route)
            for r in ROUTES
        ],
    )


def verdicts_of(bootstrap: str, env: dict[str, str], ids: set[str]) -> dict[str, dict[str, Any]]:
    msgs = read_all(
        bootstrap,
        env["SENTINEL_OUTPUT_TOPIC"],
        lambda got: ids <= {orjson.loads(cast(bytes, m.value())).get("event_id") for m in got},
        120,
    )
    out = {}
    for m in msgs:
        v = orjson.loads(cast(bytes, m.value()))
        if v.get("event_id") in ids:
            out[v["event_id"]] = v
    assert set(out) == ids, f"missing verdicts: {sorted(ids - set(out))[:5]}"
    return out


def train(bootstrap: str, env: dict[str, str], per_route: int) -> dict[str, int]:
    """Teach every route until it has a model; returns each route's model version."""
    learn(bootstrap, env, per_route, "learn")
    verdicts_of(bootstrap, env, {f"learn-{r}-{i}" for r in ROUTES for i in range(per_route)})
    # Models install between batches: the next events are scored by them.
    return {r: v["model_version"] for r, v in first_after(bootstrap, env, "trained").items()}


def first_after(bootstrap: str, env: dict[str, str], tag: str) -> dict[str, dict[str, Any]]:
    """One new event per route, and its verdict."""
    learn(bootstrap, env, 1, tag)
    got = verdicts_of(bootstrap, env, {f"{tag}-{r}-0" for r in ROUTES})
    return {v["route"]: v for v in got.values()}


def restarted(
    bootstrap: str, env: dict[str, str], tmp_path: Path
) -> tuple[dict[str, dict[str, Any]], str]:
    """Start a second member on the same group: each route's first verdict after it is
    ready, and its metrics."""
    again = Member(env, tmp_path, "second")
    try:
        again.wait_ready()
        return first_after(bootstrap, env, "after"), scrape(again.port)
    finally:
        again.kill()


def test_a_restart_keeps_every_model(bootstrap: str, env_for: Any, tmp_path: Path) -> None:
    env = env_for("a")
    member = Member(env, tmp_path, "first")
    try:
        member.wait_ready()
        versions = train(bootstrap, env, 150)
        assert all(versions.values()), "every route should have a model before the restart"
        log = member.stop()
    finally:
        member.kill()
    assert '"state_restored"' in log  # the first start restored (nothing) before scoring
    after, metrics = restarted(bootstrap, env, tmp_path)
    for route, v in after.items():
        assert v["detector"] == "isolation_forest" and not v["warming_up"], (route, v)
        assert v["model_version"] >= versions[route], (route, v["model_version"])
    assert _sample(metrics, "sentinel_state_routes_restored_total") >= len(ROUTES)


def test_a_member_that_joins_scores_its_new_routes_with_their_models(
    bootstrap: str, env_for: Any, tmp_path: Path
) -> None:
    env_a = env_for("a")
    a = Member(env_a, tmp_path, "a")
    b: Member | None = None
    try:
        a.wait_ready()
        versions = train(bootstrap, env_a, 150)
        assert all(versions.values())
        env_b = env_for("b")
        b = Member(env_b, tmp_path, "b")
        b.wait_ready()
        # Both members own partitions now: b's came with their state.
        wait_for(lambda: ready(a.proc, a.port), 60, "a ready after the rebalance")
        after = first_after(bootstrap, env_a, "after")
        b_metrics = scrape(b.port)
    finally:
        a.kill()
        if b is not None:
            b.kill()
    for route, v in after.items():
        assert v["detector"] == "isolation_forest" and not v["warming_up"], (route, v)
        assert v["model_version"] >= versions[route]
    assert _sample(b_metrics, "sentinel_state_routes_restored_total") >= 1


def test_restore_after_compaction_and_with_unreadable_records(
    bootstrap: str, topic_prefix: str, env_for: Any, tmp_path: Path
) -> None:
    names = topic_names(topic_prefix)
    env = env_for("a", SENTINEL_REFIT_EVERY="20", SENTINEL_REFIT_MIN_INTERVAL_S="0")
    # A state topic that compacts at once: every refit writes a snapshot, most of them
    # superseded, and the cleaner removes those.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    compacting = {
        "cleanup.policy": "compact",
        "segment.ms": "200",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "100",
    }
    admin.create_topics(
        [NewTopic(names["SENTINEL_STATE_TOPIC"], PARTITIONS, 1, config=compacting)]
    )[names["SENTINEL_STATE_TOPIC"]].result(30)
    create_topics(
        bootstrap,
        [names[k] for k in ("SENTINEL_INPUT_TOPIC", "SENTINEL_OUTPUT_TOPIC", "SENTINEL_DLQ_TOPIC")],
        PARTITIONS,
    )
    member = Member(env, tmp_path, "first")
    try:
        member.wait_ready()
        versions = train(bootstrap, env, 200)
        assert all(versions.values())
        member.stop()
    finally:
        member.kill()
    state = names["SENTINEL_STATE_TOPIC"]
    routes = {r.encode() for r in ROUTES}

    def snapshots() -> int:
        return sum(m.key() in routes for m in read_all(bootstrap, state, lambda got: False, 3))

    written = snapshots()
    # Compaction can only shrink a topic that holds superseded snapshots.
    assert written > len(routes), f"{written} snapshots of {len(routes)} routes"
    # Unreadable records: garbage, and a snapshot of a schema version from the future.
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(state, b"not a snapshot at all", b"/corrupt/1", partition=0)
    p.produce(state, struct.pack("<3sHI", MAGIC, 999, 2) + b"{}", b"/corrupt/2", partition=1)
    assert p.flush(30) == 0

    def compacted() -> bool:
        # The cleaner never touches a partition's active segment: a new record in every
        # partition rolls it (segment.ms), and then the superseded snapshots can go.
        for partition in range(PARTITIONS):
            p.produce(state, None, b"/roll", partition=partition)
        p.flush(10)
        return snapshots() < written

    wait_for(compacted, 120, "the state topic to be compacted")
    after, metrics = restarted(bootstrap, env, tmp_path)
    for route, v in after.items():
        assert v["detector"] == "isolation_forest" and v["model_version"] >= versions[route]
    assert _sample(metrics, "sentinel_state_records_unreadable_total") == 2
    assert _sample(metrics, "sentinel_state_routes_restored_total") >= len(ROUTES)


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
