"""The detector's fixed cost per route group: many warm routes, a few events each.

At 10,000 events/s spread over hundreds of routes, a route has 1-3 events per poll, and
what ``Detector.score_and_learn`` costs per call (the Python around the kernel, small
arrays, the kernel call itself) matters more than what it costs per event. This
benchmark warms ``--routes`` routes until each has a model and a full window (its long
memory sampling what leaves it, as on a route that has run for a while), then times
``score_and_learn`` on 1-3 rows per call, round-robin over the routes, as the service
calls it (``learn=True``, the Kafka door) and as the HTTP door does (``learn=False``).

Models come from a small pool fitted once (the cost of scoring does not depend on which
forest a route has), so the warm-up takes seconds, not a fit per route.

    python bench/route_groups.py --routes 1000 --groups 30000 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sentinel_stream.detect.detector import Detector
from sentinel_stream.detect.params import DetectorParams
from sentinel_stream.detect.refit import FitResult, InlineRefitter, RequestFactory, fit_route
from sentinel_stream.detect.rules import telemetry_rules

POOL = 8
WARM_ROWS = 1100


class PoolRefitter(InlineRefitter):
    """Answers every fit at once with one of a few models fitted up front."""

    def __init__(self, results: list[FitResult]) -> None:
        super().__init__()
        self._pool = results
        self._n = 0

    def submit(self, route: str, first: bool, make: RequestFactory) -> None:
        request = make()
        if request is None:
            return
        model = self._pool[self._n % len(self._pool)]
        self._n += 1
        self._done.append(
            FitResult(
                route,
                request.token,
                model.forest,
                model.threshold,
                len(request.rows),
                0.0,
                tail_score=model.tail_score,
            )
        )


def telemetry(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = np.column_stack(
        [
            rng.lognormal(np.log(100), 0.2, n),
            rng.lognormal(np.log(500), 0.2, n),
            rng.random(n) < 0.01,
        ]
    )
    return np.log1p(raw).astype(np.float32)


def warmed(routes: int) -> Detector:
    from sentinel_stream.detect.refit import FitRequest

    rng = np.random.default_rng(0)
    pool = [
        fit_route(
            FitRequest("/pool", 1, telemetry(rng, 1000)[:, :2], 100, 256, 0.001, 0.68, i, (0, 1))
        )
        for i in range(POOL)
    ]
    params = DetectorParams(
        max_routes=max(routes, 10_000),
        max_models=max(routes, 5_000),
        model_features=(0, 1),
        one_sided=(0, 1),
        seed=1,
    )
    d = Detector(params, telemetry_rules(20.0, 5), PoolRefitter(pool))
    # Past a full window (1,000 rows): the long memory samples what leaves it, as on a
    # route that has run for a while.
    warm = telemetry(rng, WARM_ROWS)
    for r in range(routes):
        for start in range(0, WARM_ROWS, 100):
            d.install_completed()
            d.score_and_learn(f"/route/{r}", warm[start : start + 100])
    d.install_completed()
    assert d.models_trained == routes, d.models_trained
    return d


def timed(d: Detector, routes: int, groups: int, learn: bool, rows: np.ndarray) -> float:
    """Seconds per group over ``groups`` calls of 1-3 rows, round-robin."""
    names = [f"/route/{r}" for r in range(routes)]
    sizes = [1 + (g * 7) % 3 for g in range(groups)]
    t = time.perf_counter()
    at = 0
    for g in range(groups):
        if g % 100 == 0:
            d.install_completed()  # the engine installs finished fits once per batch
        n = sizes[g]
        d.score_and_learn(names[g % routes], rows[at : at + n], learn)
        at = (at + n) % (len(rows) - 3)
    return (time.perf_counter() - t) / groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--groups", type=int, default=30_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    d = warmed(args.routes)
    rows = telemetry(np.random.default_rng(1), 50_000)
    timed(d, args.routes, 2000, True, rows)  # compile, caches
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        timed(d, args.routes, args.groups, True, rows)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    out = {}
    for learn in (True, False):
        runs = [timed(d, args.routes, args.groups, learn, rows) for _ in range(args.repeats)]
        out["learn" if learn else "score_only"] = round(statistics.median(runs) * 1e6, 2)
    table = table_cost(args.routes, args.groups, args.repeats)
    if args.json:
        print(json.dumps({"routes": args.routes, "us_per_group": out, "table_us": table}))
        return 0
    print(
        f"score_and_learn, 1-3 rows per call over {args.routes:,} warm routes (median of "
        f"{args.repeats} runs of {args.groups:,} calls)"
    )
    print(f"  learn=True  (Kafka door): {out['learn']:.2f} us per route group")
    print(f"  learn=False (HTTP door):  {out['score_only']:.2f} us per route group")
    print(
        f"of which the route table's lookup: {table['route_table']:.2f} us (frequency sketch "
        f"{table['sketch']:.2f} us); a plain LRU's: {table['plain_lru']:.2f} us"
    )
    return 0


def table_cost(routes: int, calls: int, repeats: int) -> dict[str, float]:
    """Microseconds per lookup of a known route: the detector's table (segmented LRU and
    the arrival counted in the frequency sketch), the sketch alone, and a plain LRU (an
    OrderedDict, what the table was before admission), in the same run."""
    from collections import OrderedDict

    from sentinel_stream.detect.routes import FrequencySketch, RouteTable

    @dataclass
    class Entry:
        held: int = 0

    names = [f"/route/{r}" for r in range(routes)]
    table: RouteTable[Entry] = RouteTable(10_000, None, lambda r: Entry())
    plain: OrderedDict[str, Entry] = OrderedDict()
    sketch = FrequencySketch(10_000)
    for r in names:
        table.touch(r)
        plain[r] = Entry()

    def lru(r: str) -> None:
        plain.move_to_end(r)

    cases: dict[str, Callable[[str], object]] = {
        "route_table": table.touch,
        "sketch": sketch.add,
        "plain_lru": lru,
    }
    out = {}
    for name, fn in cases.items():
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            for g in range(calls):
                fn(names[g % routes])
            runs.append((time.perf_counter() - t) / calls)
        out[name] = round(statistics.median(runs) * 1e6, 3)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
