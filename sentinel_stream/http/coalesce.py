"""Concurrent /analyze-flow requests scored as one engine batch.

Each request is one event, and most of what scoring one event costs is fixed per call
(installing finished fits, taking the lock, building arrays, one compiled call per
route). Requests that arrive while the event loop is busy are queued and scored
together on the loop's next turn: under load a handful share one call, and a lone
request waits for nothing but the turn (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from sentinel_stream.engine import Event
from sentinel_stream.records import VerdictRecord

Score = Callable[[Sequence[Event]], list[VerdictRecord]]

MAX_BATCH = 256
"""Requests scored together at most: bounds one call's time, so that others' wait is."""


class Coalescer:
    """Queues events and scores them together on the event loop's next turn."""

    def __init__(self, score: Score, max_batch: int = MAX_BATCH) -> None:
        self._score = score
        self._max = max_batch
        self._pending: list[tuple[Event, asyncio.Future[VerdictRecord]]] = []
        self._scheduled = False
        self.batches = 0
        self.events = 0

    async def verdict(self, event: Event) -> VerdictRecord:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[VerdictRecord] = loop.create_future()
        self._pending.append((event, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending[: self._max], self._pending[self._max :]
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._scheduled = False
        self.batches += 1
        self.events += len(pending)
        try:
            verdicts = self._score([event for event, _ in pending])
        except Exception as exc:  # every waiting request learns of it (a JSON 500 each)
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), verdict in zip(pending, verdicts, strict=True):
            if not future.done():
                future.set_result(verdict)
