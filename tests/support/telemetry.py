"""Telemetry for unit tests: events, normal traffic, an engine with inline refits."""

from __future__ import annotations

import math

import numpy as np

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine, Event
from sentinel_stream.records import VerdictRecord


def ev(
    route: str, latency: float = 100.0, input_length: int = 500, errors: int = 0, i: int = 0
) -> Event:
    return Event(route, latency, input_length, errors, f"e{i}", "2026-01-01T00:00:00.000Z", None)


def normal(route: str, n: int, seed: int = 0, start: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [
        ev(
            route,
            float(rng.lognormal(math.log(100), 0.2)),
            int(rng.lognormal(math.log(500), 0.2)),
            int(rng.random() < 0.01),
            start + i,
        )
        for i in range(n)
    ]


def engine(**kw: object) -> Engine:
    return Engine(Settings(refit_workers=0, seed=1, **kw))  # type: ignore[arg-type]


def run(e: Engine, events: list[Event], batch: int = 50) -> list[VerdictRecord]:
    """Process in poll-sized batches, as the pipeline does (models install between them)."""
    out: list[VerdictRecord] = []
    for i in range(0, len(events), batch):
        out += e.process(events[i : i + batch])
    return out
