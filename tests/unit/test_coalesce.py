"""Concurrent requests share one engine call; a lone request waits for nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sentinel_stream.engine import Event
from sentinel_stream.http.coalesce import Coalescer
from sentinel_stream.records import VerdictRecord
from tests.support.telemetry import engine, ev


def test_concurrent_requests_are_scored_in_one_call() -> None:
    e = engine()
    calls: list[int] = []

    def score(events: Sequence[Event]) -> list[VerdictRecord]:
        calls.append(len(events))
        return e.process(events, learn=False)

    coalescer = Coalescer(score)

    async def main() -> list[VerdictRecord]:
        return await asyncio.gather(
            *(coalescer.verdict(ev(f"/c{i % 3}", 100.0 + i, i=i)) for i in range(10))
        )

    verdicts = asyncio.run(main())
    assert calls == [10]
    assert [v["event_id"] for v in verdicts] == [f"e{i}" for i in range(10)]
    assert [v["route"] for v in verdicts] == [f"/c{i % 3}" for i in range(10)]


def test_a_batch_is_bounded() -> None:
    calls: list[int] = []

    def score(events: Sequence[Event]) -> list[VerdictRecord]:
        calls.append(len(events))
        return engine().process(events, learn=False)

    coalescer = Coalescer(score, max_batch=4)

    async def main() -> None:
        await asyncio.gather(*(coalescer.verdict(ev("/b", i=i)) for i in range(10)))

    asyncio.run(main())
    assert calls == [4, 4, 2]


def test_a_failure_reaches_every_waiting_request() -> None:
    def score(events: Sequence[Event]) -> list[VerdictRecord]:
        raise ZeroDivisionError("a bug")

    coalescer = Coalescer(score)

    async def main() -> list[BaseException | VerdictRecord]:
        return await asyncio.gather(
            *(coalescer.verdict(ev("/x", i=i)) for i in range(3)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert all(isinstance(r, ZeroDivisionError) for r in results)
    # and the next request is scored again
    with pytest.raises(ZeroDivisionError):
        asyncio.run(coalescer.verdict(ev("/x")))
