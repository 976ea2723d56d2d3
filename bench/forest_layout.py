"""The compact forest layout against the previous, complete one: bytes, scoring, fitting.

Not a test: it prints figures, each next to the previous layout's from the same run
(``tests/support/complete_forest.py`` keeps that layout and its kernel).

- bytes per model (``--trees`` trees, ``max_samples`` 256), and sklearn's pickled model;
- ``score_route`` per call and per row on batches of 1, 10 and 1,000 rows, cycling over
  ``--models`` different models (as the service cycles over routes, so a model is
  rarely still in the CPU cache when its route comes back);
- the compile step of a fit (layout, split ranges, out-of-bag scores of the training
  rows) on top of sklearn's own fit: now the layout and ranges in NumPy and the
  out-of-bag walk in the C kernel, before numba kernels (kept for the comparison).

    python bench/forest_layout.py [--models 200] [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from sentinel_stream.detect.fit import _IsolationForest, fit_forest, in_bag_rows
from sentinel_stream.detect.forest import CompiledForest
from sentinel_stream.detect.kernels import score_route
from sentinel_stream.detect.rules import RULES_THRESHOLD
from tests.support.complete_forest import CompleteForest

COLS = np.array([0, 1], dtype=np.intp)


def telemetry(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.lognormal([np.log(100), np.log(500), -5.0], [0.3, 0.3, 1.0], size=(n, 3))
    return np.log1p(raw).astype(np.float32)


def per_call(fn: Callable[[int], object], calls: int) -> float:
    t = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - t) / calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    new: list[CompiledForest] = []
    old: list[CompleteForest] = []
    pickled = 0
    for m in range(args.models):
        x = telemetry(rng, 1000)
        forest, model = fit_forest(x[:, COLS], args.trees, 256, m, one_sided=(0, 1))
        new.append(forest)
        old.append(CompleteForest.from_sklearn(model, x[:, COLS], forest.floor))
        if m == 0:
            pickled = len(pickle.dumps(model))
    queries = telemetry(rng, 5000)
    queries[::50, 0] += 3.0  # some rows beyond the training range (a 20x latency)
    reference = np.array([np.log1p(100.0), np.log1p(500.0), 0.0])
    scale = np.full(3, np.log(20.0))

    def new_call(n: int) -> Callable[[int], object]:
        def call(i: int) -> object:
            at = (i * n) % (len(queries) - n)
            return score_route(
                queries[at : at + n], reference, scale, new[i % len(new)], COLS, 0.7,
                RULES_THRESHOLD, True,
            )  # fmt: skip

        return call

    def old_call(n: int) -> Callable[[int], object]:
        def call(i: int) -> object:
            at = (i * n) % (len(queries) - n)
            return old[i % len(old)].score_route(
                queries[at : at + n], reference, scale, COLS, 0.7, RULES_THRESHOLD, True
            )

        return call

    # Same scores from both layouts (the unit tests prove it; a benchmark that timed two
    # different things would be worthless).
    for i in range(5):
        a = new_call(1000)(i)[0]  # type: ignore[index]
        b = old_call(1000)(i)[0]  # type: ignore[index]
        np.testing.assert_array_max_ulp(a, b, maxulp=1)
    scoring: dict[str, dict[str, float]] = {}
    for n in (1, 10, 1000):
        calls = max(20, 20_000 // n)
        per_call(new_call(n), calls)  # compile, warm
        per_call(old_call(n), calls)
        times: dict[str, list[float]] = {"new": [], "old": []}
        for _ in range(args.repeats):  # interleaved: both see the same machine noise
            times["old"].append(per_call(old_call(n), calls))
            times["new"].append(per_call(new_call(n), calls))
        scoring[str(n)] = {
            "old_us_per_call": round(statistics.median(times["old"]) * 1e6, 2),
            "new_us_per_call": round(statistics.median(times["new"]) * 1e6, 2),
        }
    fit = fit_cost(rng, args.trees, args.repeats)
    result: dict[str, Any] = {
        "trees": args.trees,
        "bytes_per_model_old": int(np.median([f.nbytes for f in old])),
        "bytes_per_model_new": int(np.median([f.nbytes for f in new])),
        "bytes_sklearn_pickle": pickled,
        "split_nodes_per_tree": round(float(np.mean([f.n_splits for f in new])) / args.trees, 1),
        "score_route": scoring,
        "fit_ms": fit,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"one model, {args.trees} trees, max_samples 256 (median over {args.models} fits):")
    print(f"  complete layout (before) {result['bytes_per_model_old']:>9,} bytes")
    print(
        f"  compact layout (now)     {result['bytes_per_model_new']:>9,} bytes "
        f"({result['split_nodes_per_tree']} split nodes per tree)"
    )
    print(f"  sklearn pickle           {pickled:>9,} bytes")
    print(f"score_route, cycling over {args.models} models (median of {args.repeats}):")
    print(
        f"  {'rows':>6} {'before us/call':>15} {'now us/call':>12} {'now/before':>11} "
        f"{'now us/row':>11}"
    )
    for rows, s in scoring.items():
        ratio = s["new_us_per_call"] / s["old_us_per_call"]
        print(
            f"  {rows:>6} {s['old_us_per_call']:>15.2f} {s['new_us_per_call']:>12.2f} "
            f"{ratio:>11.2f} {s['new_us_per_call'] / int(rows):>11.3f}"
        )
    print(
        f"fit of {args.trees} trees on 2,000 rows (median of {args.repeats}): sklearn "
        f"{fit['sklearn']:.1f} ms; compile + out-of-bag: before (numba) "
        f"{fit['compile_old']:.1f} ms, now (NumPy and C) {fit['compile_new']:.1f} ms"
    )
    return 0


def fit_cost(rng: np.random.Generator, trees: int, repeats: int) -> dict[str, float]:
    """Milliseconds: sklearn's fit, then each layout's compile with ranges and the
    training rows' out-of-bag path lengths (what a refit adds to sklearn's fit)."""
    x = telemetry(rng, 2000)[:, COLS]
    out: dict[str, list[float]] = {"sklearn": [], "compile_old": [], "compile_new": []}
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        model = _IsolationForest(n_estimators=trees, max_samples=256, random_state=r).fit(x)
        t1 = time.perf_counter()
        samples = in_bag_rows(model)
        in_bag = np.zeros((trees, len(x)), dtype=np.bool_)
        in_bag[np.arange(trees)[:, None], samples] = True
        t2 = time.perf_counter()
        old = CompleteForest.from_sklearn(model, x)
        old.path_lengths(x, in_bag)
        t3 = time.perf_counter()
        new = CompiledForest.from_sklearn(model, x, None, samples)
        new.path_lengths(x, in_bag)
        t4 = time.perf_counter()
        if r:  # the first round compiles the old kernels
            out["sklearn"].append(t1 - t0)
            out["compile_old"].append(t3 - t2)
            out["compile_new"].append(t4 - t3)
    return {k: round(statistics.median(v) * 1000, 2) for k, v in out.items()}


if __name__ == "__main__":
    raise SystemExit(main())
