"""One compiled pass that scores a route's batch: rules, forest, and their combination.

Per route and batch, the readable NumPy path (``RuleScorer.score``,
``CompiledForest.score``, ``onto_threshold``) makes a dozen small array operations whose
fixed cost (~70 µs) dwarfs the work for the few events a route has in one poll or one
HTTP request. This kernel does the same arithmetic in one call, row by row.
``tests/test_kernels.py`` proves it returns what the NumPy path returns.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from sentinel_stream.forest import PATH_TABLE, CompiledForest, model_row, tree_path_length

_EMPTY_I8 = np.zeros((0, 1), dtype=np.int8)
_EMPTY_F32 = np.zeros((0, 1), dtype=np.float32)
_EMPTY_U16 = np.zeros((0, 1), dtype=np.uint16)
_EMPTY_FLOOR = np.zeros(0, dtype=np.float32)


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _score_route(
    x: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float64],
    log_factor: npt.NDArray[np.float64],
    cols: npt.NDArray[np.intp],
    floor: npt.NDArray[np.float32],
    feature: npt.NDArray[np.int8],
    threshold: npt.NDArray[np.float32],
    low: npt.NDArray[np.float32],
    high: npt.NDArray[np.float32],
    leaf_code: npt.NDArray[np.uint16],
    table: npt.NDArray[np.float64],
    depth: int,
    denominator: float,
    model_threshold: float,
    rules_threshold: float,
    sum_excess: bool,
    scores: npt.NDArray[np.float64],
    deviations: npt.NDArray[np.float64],
) -> None:  # pragma: no cover - compiled
    n_trees = feature.shape[0]
    v = np.empty(floor.shape[0], dtype=np.float32)
    for i in range(x.shape[0]):
        worst = -np.inf
        excess = 0.0
        for f in range(x.shape[1]):
            d = (np.float64(x[i, f]) - reference[f]) / log_factor[f]
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
    reference: npt.NDArray[np.float64],
    log_factor: npt.NDArray[np.float64],
    forest: CompiledForest | None,
    cols: npt.NDArray[np.intp],
    model_threshold: float,
    rules_threshold: float,
    sum_excess: bool = False,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(scores, rule deviations) of ``rows``: the rules alone without a forest, else
    ``max(forest score, rule score mapped onto the forest's threshold)``."""
    n = rows.shape[0]
    scores = np.empty(n)
    deviations = np.empty((n, rows.shape[1]))
    if forest is None:
        _score_route(
            rows,
            reference,
            log_factor,
            cols,
            _EMPTY_FLOOR,
            _EMPTY_I8,
            _EMPTY_F32,
            _EMPTY_F32,
            _EMPTY_F32,
            _EMPTY_U16,
            PATH_TABLE,
            1,
            0.0,
            rules_threshold,
            rules_threshold,
            sum_excess,
            scores,
            deviations,
        )
    else:
        _score_route(
            rows,
            reference,
            log_factor,
            cols,
            forest.floor,
            forest.feature,
            forest.threshold,
            forest.low,
            forest.high,
            forest.leaf_code,
            PATH_TABLE,
            forest.depth,
            forest.denominator,
            model_threshold,
            rules_threshold,
            sum_excess,
            scores,
            deviations,
        )
    return scores, deviations
