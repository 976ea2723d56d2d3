"""The compiled route scorer returns what the readable NumPy path returns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numba import njit

from sentinel_stream.detect.baseline import Baseline
from sentinel_stream.detect.fit import fit_forest
from sentinel_stream.detect.forest import PATH_TABLE
from sentinel_stream.detect.kernels import onto_threshold, score_route, tree_path_length
from sentinel_stream.detect.rules import (
    RULES_THRESHOLD,
    RuleScorer,
    generic_rules,
    telemetry_rules,
)


@pytest.mark.parametrize("kind", ["sum", "max", "unknown"])
@pytest.mark.parametrize("with_model", [True, False])
@pytest.mark.parametrize("n", [1, 3, 500])
def test_kernel_equals_numpy_path(with_model: bool, n: int, kind: str) -> None:
    rng = np.random.default_rng(n)
    raw = rng.lognormal([4.6, 6.0, -3.0], [0.3, 0.3, 1.0], size=(1000, 3))
    rows = np.log1p(np.round(raw)).astype(np.float32)
    sum_excess = kind == "sum"
    if kind == "unknown":  # relative rules: a unit of deviation per feature and route
        rules = generic_rules(3, 0.5)
    else:
        rules = RuleScorer(telemetry_rules(20.0, 5).specs, sum_excess=sum_excess)
    baseline = Baseline.of(rows)
    reference, scale = rules.reference(baseline), rules.scale(baseline)
    cols = np.array([0, 1], dtype=np.intp)
    forest, _ = fit_forest(rows[:, cols], 100, 256, seed=2, one_sided=(0, 1))
    queries = np.vstack([rows[:n], rows[:n] + rng.normal(0, 2, size=(n, 3)).astype(np.float32)])
    threshold = 0.66
    scores, deviations = score_route(
        queries,
        reference,
        scale,
        forest if with_model else None,
        cols,
        threshold,
        RULES_THRESHOLD,
        sum_excess,
    )
    rule = rules.score(queries, reference, scale)
    np.testing.assert_allclose(deviations, rule.deviations, rtol=0, atol=1e-12)
    if with_model:
        expected = np.maximum(
            forest.score(queries[:, cols]), onto_threshold(rule.scores, RULES_THRESHOLD, threshold)
        )
    else:
        expected = rule.scores
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)


def test_onto_threshold_is_monotone_and_fixes_the_threshold() -> None:
    s = np.linspace(0, 1, 101)
    m = onto_threshold(s, 0.5, 0.7)
    assert np.all(np.diff(m) > 0)
    assert onto_threshold(np.array([0.5]), 0.5, 0.7)[0] == 0.7
    assert onto_threshold(np.array([1.0]), 0.5, 0.7)[0] == 1.0


@njit  # type: ignore[untyped-decorator,unused-ignore]
def kernel_path_lengths(
    v: Any, nodes: Any, split: Any, root: Any, tree_start: Any, out: Any
) -> None:  # pragma: no cover - compiled
    for i in range(v.shape[0]):
        total = 0.0
        for t in range(root.shape[0]):
            total += tree_path_length(v[i], t, nodes, split, root, tree_start, PATH_TABLE)
        out[i] = total


@njit  # type: ignore[untyped-decorator,unused-ignore]
def kernel_scores_of(totals: Any, denominator: float, out: Any) -> None:  # pragma: no cover
    for i in range(totals.shape[0]):
        out[i] = 2.0 ** (-(totals[i] / denominator))


@pytest.mark.parametrize(
    ("one_sided", "n_trees", "degenerate"),
    [((), 100, False), ((0, 1), 100, False), ((0,), 51, False), ((), 31, True)],
)
def test_the_kernels_forest_walk_is_the_numpy_walk(
    one_sided: tuple[int, ...], n_trees: int, degenerate: bool
) -> None:
    rng = np.random.default_rng(6)
    rows = np.log1p(rng.lognormal([4.6, 6.0, 0.0], 0.3, size=(1500, 3))).astype(np.float32)
    if degenerate:  # trees whose root is a leaf (every row they sampled the same)
        rows[:1490] = rows[0]
    cols = np.array([0, 1], dtype=np.intp)
    forest, _ = fit_forest(rows[:, cols], n_trees, 64, seed=3, one_sided=one_sided)
    assert (forest.root < 0).any() == degenerate
    queries = np.vstack(
        [rows[-300:], rows[-300:] * rng.uniform(0.05, 20, size=(300, 3)).astype(np.float32)]
    ).astype(np.float32)
    # The walk, bit for bit: every path length of every tree, summed in the same order.
    v = np.maximum(queries[:, cols], forest.floor)
    totals = np.empty(len(v))
    f = forest
    kernel_path_lengths(v, f.nodes, f.split, f.root, f.tree_start, totals)
    np.testing.assert_array_equal(totals, forest.path_lengths(v, np.zeros((0, 0), dtype=bool)))
    # The route scorer walks two trees at once for two features: the same totals, so the
    # same scores bit for bit (numba's pow; NumPy's may differ from it in the last bit).
    # With the rules' reference far above every row, the rule score is 0 and the
    # kernel's score is its forest score alone.
    expected = np.empty(len(v))
    kernel_scores_of(totals, forest.denominator, expected)
    far = np.full(3, 1e6)
    for n in (1, 7, len(queries)):
        scores, _ = score_route(queries[:n], far, np.ones(3), forest, cols, 0.6, RULES_THRESHOLD)
        np.testing.assert_array_equal(scores, expected[:n])
        np.testing.assert_array_max_ulp(scores, forest.score(queries[:n, cols]), maxulp=1)
