"""One compiled pass that scores a route's batch: rules, forest, and their combination.

Per route and batch, the readable NumPy path (``RuleScorer.score``,
``CompiledForest.score``, :func:`onto_threshold`) makes a dozen small array operations
whose fixed cost dwarfs the work for the few events a route has in one poll or one HTTP
request. This kernel does the same arithmetic in one call, row by row.
``tests/unit/test_kernels.py`` proves it returns what the NumPy path returns.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from sentinel_stream.detect.forest import (
    PATH_TABLE,
    CompiledForest,
    fit_scored,
    model_row,
    tree_path_length,
)

F64 = npt.NDArray[np.float64]

_NO_FOREST = CompiledForest(
    feature=np.zeros((0, 1), dtype=np.int8),
    threshold=np.zeros((0, 1), dtype=np.float32),
    leaf_code=np.zeros((0, 1), dtype=np.uint16),
    depth=1,
    denominator=0.0,
    n_features=0,
    low=np.zeros((0, 1), dtype=np.float32),
    high=np.zeros((0, 1), dtype=np.float32),
    floor=np.zeros(0, dtype=np.float32),
)
"""A forest of no trees: the kernel then scores by the rules alone."""


def onto_threshold(scores: F64, source: float, target: float) -> F64:
    """Map scores whose threshold is ``source`` onto a scale whose threshold is ``target``.

    Piecewise linear and monotone, with 0 -> 0, source -> target, 1 -> 1, so that a rule
    score and a model score can be compared as one number against one threshold. (The
    readable reference for what the kernel does per row.)
    """
    low = scores * (target / source)
    high = target + (scores - source) * ((1.0 - target) / (1.0 - source))
    mapped: F64 = np.where(scores < source, low, high)
    return mapped


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _score_route(
    x: npt.NDArray[np.float32],
    reference: F64,
    scale: F64,
    cols: npt.NDArray[np.intp],
    floor: npt.NDArray[np.float32],
    feature: npt.NDArray[np.int8],
    threshold: npt.NDArray[np.float32],
    low: npt.NDArray[np.float32],
    high: npt.NDArray[np.float32],
    leaf_code: npt.NDArray[np.uint16],
    table: F64,
    depth: int,
    denominator: float,
    model_threshold: float,
    rules_threshold: float,
    sum_excess: bool,
    scores: F64,
    deviations: F64,
) -> None:  # pragma: no cover - compiled
    n_trees = feature.shape[0]
    v = np.empty(floor.shape[0], dtype=np.float32)
    for i in range(x.shape[0]):
        worst = -np.inf
        excess = 0.0
        for f in range(x.shape[1]):
            d = (np.float64(x[i, f]) - reference[f]) / scale[f]
            deviations[i, f] = d
            worst = max(worst, d)
            excess += max(d, 0.0)
        rule = min(max((excess if sum_excess else worst) / 2.0, 0.0), 1.0)
        if n_trees == 0:
            scores[i] = rule
            continue
        model_row(x, i, cols, floor, v)
        total = 0.0
        for t in range(n_trees):
            total += tree_path_length(v, t, feature, threshold, low, high, leaf_code, table, depth)
        forest = 1.0 if denominator == 0 else 2.0 ** (-(total / denominator))
        if rule < rules_threshold:
            mapped = rule * (model_threshold / rules_threshold)
        else:
            mapped = model_threshold + (rule - rules_threshold) * (
                (1.0 - model_threshold) / (1.0 - rules_threshold)
            )
        scores[i] = max(forest, mapped)


def score_route(
    rows: npt.NDArray[np.float32],
    reference: F64,
    scale: F64,
    forest: CompiledForest | None,
    cols: npt.NDArray[np.intp],
    model_threshold: float,
    rules_threshold: float,
    sum_excess: bool = False,
) -> tuple[F64, F64]:
    """(scores, rule deviations) of ``rows``: the rules alone without a forest, else
    ``max(forest score, rule score mapped onto the forest's threshold)``. ``reference``
    and ``scale`` are the route's rule reference and unit of deviation per feature."""
    n = rows.shape[0]
    scores = np.empty(n)
    deviations = np.empty((n, rows.shape[1]))
    f = forest if forest is not None else _NO_FOREST
    _score_route(
        rows,
        reference,
        scale,
        cols,
        f.floor,
        f.feature,
        f.threshold,
        f.low,
        f.high,
        f.leaf_code,
        PATH_TABLE,
        f.depth,
        f.denominator,
        model_threshold if forest is not None else rules_threshold,
        rules_threshold,
        sum_excess,
        scores,
        deviations,
    )
    return scores, deviations


def warm_up_kernel() -> None:
    """Compile (or load from numba's cache) the scoring kernels before the first event
    needs them, so that no verdict waits for a compilation."""
    x = np.zeros((4, 1), dtype=np.float32)
    forest, _, _ = fit_scored(np.arange(8, dtype=np.float32).reshape(-1, 1), 2, 4, 0, (0,))
    forest.score(x)
    ones = np.ones(1)
    cols = np.zeros(1, dtype=np.intp)
    for model in (forest, None):
        for sum_excess in (False, True):
            score_route(x, ones, ones, model, cols, 0.7, 0.5, sum_excess)
