"""Nothing a record contains stops the loop: every record gets a verdict or a dead letter.

Each case runs the real pipeline on a real broker. A record that fails inside the engine
is provoked with an engine whose scoring raises for one route (nothing a valid record
can contain does that any more: the stand-in is for the failure mode, a bug, not for the
code under test, which is the loop's isolation of it).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
from aiohttp import web
from confluent_kafka import Producer

# confluent_kafka.admin re-exports NewTopic from cimpl without marking it public
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine
from sentinel_stream.engine.engine import _Batch
from sentinel_stream.http.server import make_app
from sentinel_stream.process import SWITCH_INTERVAL_S
from sentinel_stream.records import DLQ_DETAIL, DLQ_ERROR, DLQ_SOURCE_OFFSET, VerdictRecord
from sentinel_stream.stream.kafka.clients import make_admin
from sentinel_stream.stream.kafka.topics import HEADROOM, ensure_topics, read_limits
from tests.support.kafka import all_committed, create_topics, event, produce, read_all, wait_for
from tests.support.pipeline import Running, service_topics, settings_for, values
from tests.support.service import free_port

pytestmark = pytest.mark.kafka


class BrokenForOneRoute(Engine):
    """An engine with a bug that only events of ``/boom`` reach."""

    def _score_group(self, route: str, idx: list[int], b: _Batch) -> None:
        if route == "/boom":
            raise ZeroDivisionError("a bug")
        super()._score_group(route, idx, b)


def test_a_record_that_fails_in_the_engine_goes_to_the_dlq_alone(
    bootstrap: str, topic_prefix: str
) -> None:
    s = settings_for(bootstrap, topic_prefix)
    create_topics(bootstrap, service_topics(s), 1)
    records = [(b"/ok", event("/ok", event_id=f"a{i}")) for i in range(50)]
    boom = (b"/boom", event("/boom", event_id="boom"))
    records = [*records[:20], boom, *records[20:]]  # one batch: the others share it
    produce(bootstrap, s.input_topic, records)
    with Running(s, engine=BrokenForOneRoute(s)) as run:
        verdicts = read_all(bootstrap, s.output_topic, lambda got: len(got) >= 50, 60)
        dead = read_all(bootstrap, s.dlq_topic, lambda got: len(got) >= 1, 60)
        wait_for(lambda: all_committed(bootstrap, s.group_id, s.input_topic, 1), 60, "commit")
        metrics = run.pipeline.metrics
    assert {v["event_id"] for v in values(verdicts)} == {f"a{i}" for i in range(50)}
    assert [(m.key(), m.value()) for m in dead] == [boom]
    headers = cast(dict[str, bytes], dict(dead[0].headers() or []))
    assert headers[DLQ_ERROR] == b"processing"
    assert b"ZeroDivisionError" in headers[DLQ_DETAIL] and headers[DLQ_SOURCE_OFFSET] == b"20"
    assert metrics.processing_failures._value.get() == 1


def _topics_with_limit(bootstrap: str, s: Settings, input_max: int, dlq_max: int | None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [
        NewTopic(s.input_topic, 1, 1, config={"max.message.bytes": str(input_max)}),
        NewTopic(s.output_topic, 1, 1),
        NewTopic(s.state_topic, 1, 1, config={"cleanup.policy": "compact"}),
        NewTopic(s.members_topic, 1, 1, config={"cleanup.policy": "compact"}),
    ]
    if dlq_max is not None:
        new.append(NewTopic(s.dlq_topic, 1, 1, config={"max.message.bytes": str(dlq_max)}))
    for f in admin.create_topics(new).values():
        f.result(30)


def _oversized_run(bootstrap: str, s: Settings) -> tuple[list[VerdictRecord], list[object]]:
    big = b'{"latency": 1, "pad": "' + b"x" * 1_500_000 + b'"}'
    produce_big = [(b"/big", big)]
    # Idempotent: a retried first request (the topic is new) must not land after the rest.
    p = Producer(
        {"bootstrap.servers": bootstrap, "message.max.bytes": 3_000_000, "enable.idempotence": True}
    )
    for key, value in [(b"/a", event("/a", event_id="before")), *produce_big]:
        p.produce(s.input_topic, value, key)
    p.produce(s.input_topic, event("/a", event_id="after"), b"/a")
    assert p.flush(30) == 0
    admin = make_admin(s)
    ensure_topics(admin, s)
    with Running(s, limits=read_limits(admin, s)) as run:
        verdicts = read_all(bootstrap, s.output_topic, lambda got: len(got) >= 2, 60)
        dead = read_all(bootstrap, s.dlq_topic, lambda got: len(got) >= 1, 60)
        wait_for(lambda: all_committed(bootstrap, s.group_id, s.input_topic, 1), 60, "commit")
        assert run.pipeline.status.error is None
    return values(verdicts), dead  # type: ignore[return-value]


def test_a_record_over_a_megabyte_the_broker_accepted_is_dead_lettered_whole(
    bootstrap: str, topic_prefix: str
) -> None:
    s = settings_for(bootstrap, topic_prefix, create_topics=True)
    _topics_with_limit(bootstrap, s, 2_000_000, None)  # the service creates the DLQ
    verdicts, dead = _oversized_run(bootstrap, s)
    assert [v["event_id"] for v in verdicts] == ["before", "after"]
    (letter,) = dead
    assert len(letter.value()) > 1_500_000  # type: ignore[attr-defined]
    assert dict(letter.headers())[DLQ_ERROR] == b"too_large"  # type: ignore[attr-defined]
    created = read_limits(make_admin(s), s)
    assert created.dlq_max_bytes == 2_000_000 + HEADROOM


def test_a_dlq_made_by_hand_too_small_gets_the_letter_without_its_value(
    bootstrap: str, topic_prefix: str
) -> None:
    s = settings_for(bootstrap, topic_prefix)
    _topics_with_limit(bootstrap, s, 2_000_000, 1_000_000)
    verdicts, dead = _oversized_run(bootstrap, s)
    assert [v["event_id"] for v in verdicts] == ["before", "after"]
    (letter,) = dead
    headers = dict(letter.headers())  # type: ignore[attr-defined]
    assert letter.value() is None and letter.key() == b"/big"  # type: ignore[attr-defined]
    assert headers[DLQ_ERROR] == b"too_large" and headers[DLQ_SOURCE_OFFSET] == b"1"
    assert b"stays at the source" in headers[DLQ_DETAIL]


def test_metrics_and_health_never_fail_while_the_loop_churns_routes(
    bootstrap: str, topic_prefix: str
) -> None:
    """The collectors read the route and model tables the Kafka thread changes."""
    s = settings_for(
        bootstrap,
        topic_prefix,
        max_routes=3000,
        max_models=1500,
        min_history=16,
        n_estimators=5,
        max_samples=16,
        batch_max=200,
    )
    create_topics(bootstrap, service_topics(s), 1)
    n, routes = 24_000, 2000
    produce(
        bootstrap,
        s.input_topic,
        [
            (f"/r{i % routes}".encode(), event(f"/r{i % routes}", latency=50.0 + i % 13))
            for i in range(n)
        ],
    )
    statuses: Counter[int] = Counter()
    # Threads switch as often as the service lets them (it sets a short switch interval).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    with Running(s) as run:
        port = free_port()
        app = make_app(run.engine, run.pipeline.status, run.pipeline.metrics)
        runner = web.AppRunner(app)

        async def serve() -> None:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()

        loop = asyncio.new_event_loop()
        loop.run_until_complete(serve())
        server = threading.Thread(target=loop.run_forever, daemon=True)
        server.start()

        def scrape(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                    return cast(int, r.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        done = threading.Event()

        def hammer() -> None:
            while not done.is_set():
                for path in ("/metrics", "/health"):
                    statuses[scrape(path)] += 1

        with ThreadPoolExecutor(2) as pool:
            for _ in range(2):
                pool.submit(hammer)
            try:
                wait_for(
                    lambda: all_committed(bootstrap, s.group_id, s.input_topic, 1),
                    300,
                    "every record processed",
                )
            finally:
                done.set()
        loop.call_soon_threadsafe(loop.stop)
        server.join(10)
    sys.setswitchinterval(switch)
    assert statuses[200] > 50 and set(statuses) == {200}, statuses
