"""Synthetic request telemetry with ground truth, for the demo producer and evaluation.

Each route has its own baseline: a median latency between 15 ms and 800 ms, a median
input size between 50 and 8,000 bytes, an error rate between 0 and 2 %, and log-normal
spread around them, with a slow daily-style drift of the latency. Anomalies are
injected at a chosen share, labelled with their kind:

- ``latency_spike``: latency 20-200x the route's median;
- ``error_burst``: 8-40 errors in one request;
- ``oversized_input``: input 20-200x the route's median;
- ``joint_shift``: latency, input and errors all moderately up at once (3-6x each,
  +3 errors), mild on each axis alone;
- ``sustained_shift``: an incident: for the next 20-60 events of the route, latency
  8-30x its median and errors up (started 40 times less often than a spike, so that
  each kind labels about as many events).

Deterministic for a given seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

KINDS = ("latency_spike", "error_burst", "oversized_input", "joint_shift", "sustained_shift")
_INCIDENT_MIN, _INCIDENT_MAX = 20, 60
_WEIGHTS = {"sustained_shift": 2.0 / (_INCIDENT_MIN + _INCIDENT_MAX)}
"""An incident labels about 40 events, so it starts 40 times less often than a spike:
each kind contributes about the same number of labelled events."""


@dataclass(slots=True)
class RouteProfile:
    name: str
    latency_median: float
    latency_sigma: float
    input_median: float
    input_sigma: float
    error_rate: float
    phase: float
    incident_left: int = 0
    incident_factor: float = 1.0


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    event: dict[str, Any]
    is_anomaly: bool
    kind: str | None


def route_names(n: int) -> list[str]:
    bases = ("api", "auth", "search", "cart", "orders", "users", "files", "admin", "feed", "pay")
    return [f"/{bases[i % len(bases)]}/v{1 + i // len(bases)}" for i in range(n)]


def make_profiles(n_routes: int, rng: random.Random) -> list[RouteProfile]:
    return [
        RouteProfile(
            name=name,
            latency_median=math.exp(rng.uniform(math.log(15), math.log(800))),
            latency_sigma=rng.uniform(0.15, 0.35),
            input_median=math.exp(rng.uniform(math.log(50), math.log(8000))),
            input_sigma=rng.uniform(0.15, 0.4),
            error_rate=rng.choice((0.0, 0.002, 0.01, 0.02)),
            phase=rng.uniform(0, 2 * math.pi),
        )
        for name in route_names(n_routes)
    ]


def _errors(rate: float, rng: random.Random) -> int:
    return 1 if rng.random() < rate else 0


def generate(
    n_events: int,
    n_routes: int = 20,
    anomaly_share: float = 0.01,
    seed: int = 7,
    kinds: tuple[str, ...] = KINDS,
) -> Iterator[LabelledEvent]:
    """``n_events`` labelled events over ``n_routes`` routes, interleaved at random."""
    rng = random.Random(seed)
    profiles = make_profiles(n_routes, rng)
    for i in range(n_events):
        p = profiles[rng.randrange(n_routes)]
        drift = 1.0 + 0.25 * math.sin(p.phase + 2 * math.pi * i / max(n_events, 1))
        latency = rng.lognormvariate(math.log(p.latency_median * drift), p.latency_sigma)
        input_length = int(rng.lognormvariate(math.log(p.input_median), p.input_sigma))
        errors = _errors(p.error_rate, rng)
        kind: str | None = None
        if p.incident_left > 0:
            p.incident_left -= 1
            latency *= p.incident_factor
            errors += rng.randint(1, 4)
            kind = "sustained_shift"
        elif rng.random() < anomaly_share:
            kind = rng.choices(kinds, weights=[_WEIGHTS.get(k, 1.0) for k in kinds])[0]
            if kind == "latency_spike":
                latency = p.latency_median * rng.uniform(20, 200)
            elif kind == "error_burst":
                errors = rng.randint(8, 40)
            elif kind == "oversized_input":
                input_length = int(p.input_median * rng.uniform(20, 200))
            elif kind == "joint_shift":
                latency *= rng.uniform(3, 6)
                input_length = int(input_length * rng.uniform(3, 6))
                errors += 3
            else:
                # An incident starts now; its later events are labelled as they come.
                p.incident_left = rng.randint(_INCIDENT_MIN, _INCIDENT_MAX) - 1
                p.incident_factor = rng.uniform(8, 30)
                latency *= p.incident_factor
                errors += rng.randint(1, 4)
        event = {
            "latency": round(latency, 3),
            "input_length": max(input_length, 0),
            "errors": errors,
            "route": p.name,
        }
        yield LabelledEvent(event, kind is not None, kind)
