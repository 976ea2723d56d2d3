"""The compiled route scorer returns what the readable NumPy path returns."""

from __future__ import annotations

import numpy as np
import pytest

from sentinel_stream.detect.baseline import Baseline
from sentinel_stream.detect.fit import fit_forest, in_bag_rows
from sentinel_stream.detect.forest import CompiledForest
from sentinel_stream.detect.kernels import onto_threshold, score_route
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


def numpy_walk(
    forest: CompiledForest, v: np.ndarray, in_bag: np.ndarray | None = None
) -> np.ndarray:
    """Each row's total path length by the readable NumPy walk, tree by tree in order,
    over the trees that did not sample it when ``in_bag`` is given (unscaled)."""
    lengths = forest.tree_path_lengths(v.astype(np.float32))
    total = np.zeros(len(v))
    for t in range(forest.n_trees):
        total += lengths[t] if in_bag is None else np.where(in_bag[t], 0.0, lengths[t])
    return total


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
    totals = forest.path_lengths(v, np.zeros((0, 0), dtype=bool))
    np.testing.assert_array_equal(totals, numpy_walk(forest, v))
    # The route scorer walks four trees at once for two features: the same totals, so
    # the same scores bit for bit (the C library's pow, which Python's ** calls too;
    # NumPy's power may differ from it in the last bit). With the rules' reference far
    # above every row, the rule score is 0 and the kernel's score is its forest score
    # alone.
    expected = np.array([2.0 ** (-(float(t) / forest.denominator)) for t in totals])
    far = np.full(3, 1e6)
    for n in (1, 7, len(queries)):
        scores, _ = score_route(queries[:n], far, np.ones(3), forest, cols, 0.6, RULES_THRESHOLD)
        np.testing.assert_array_equal(scores, expected[:n])
        np.testing.assert_array_max_ulp(scores, forest.score(queries[:n, cols]), maxulp=1)


@pytest.mark.parametrize("n_features", [1, 3, 70])
def test_the_kernels_walk_of_any_width_is_the_numpy_walk(n_features: int) -> None:
    """Models of other than two features take the one-tree-at-a-time walk (above 64
    features, with its row buffer on the heap): the same totals as the NumPy walk."""
    rng = np.random.default_rng(n_features)
    rows = rng.lognormal(0.0, 0.5, size=(600, n_features)).astype(np.float32)
    cols = np.arange(n_features, dtype=np.intp)
    forest, _ = fit_forest(rows, 50, 128, seed=4, one_sided=())
    queries = np.vstack([rows[:50], rows[:50] * np.float32(30.0)])
    totals = forest.path_lengths(queries, np.zeros((0, 0), dtype=bool))
    expected = np.array([2.0 ** (-(float(t) / forest.denominator)) for t in totals])
    far = np.full(n_features, 1e6)
    scores, _ = score_route(queries, far, np.ones(n_features), forest, cols, 0.6, RULES_THRESHOLD)
    np.testing.assert_array_equal(scores, expected)


def test_the_kernel_refuses_arrays_it_cannot_walk_and_names_them() -> None:
    rows = np.ones((4, 2), dtype=np.float32)
    cols = np.arange(2, dtype=np.intp)
    ones = np.ones(2)
    with pytest.raises(TypeError, match=r"^x: expected 2-d 'f'"):
        score_route(rows.astype(np.float64), ones, ones, None, cols, 0.6, RULES_THRESHOLD)
    with pytest.raises(TypeError, match=r"^x: a C-contiguous array"):
        score_route(np.ones((4, 4), dtype=np.float32)[:, ::2], ones, ones, None, cols, 0.6, 0.5)
    with pytest.raises(ValueError, match="reference and scale"):
        score_route(rows, np.ones(3), ones, None, cols, 0.6, RULES_THRESHOLD)


@pytest.mark.parametrize("n", [300, 1000, 3000])
def test_the_kernels_out_of_bag_pass_is_the_numpy_walk(n: int) -> None:
    """A fit scores its training rows with the trees that did not sample them, in the
    kernel: the same totals as the NumPy walk over those trees, scaled to all trees."""
    rng = np.random.default_rng(n)
    rows = np.log1p(rng.lognormal([4.6, 6.0], 0.3, size=(n, 2))).astype(np.float32)
    forest, model = fit_forest(rows, 100, 256, seed=5, one_sided=(0,))
    in_bag = np.zeros((forest.n_trees, n), dtype=np.bool_)
    in_bag[np.arange(forest.n_trees)[:, None], in_bag_rows(model)] = True
    v = np.maximum(rows, forest.floor)
    used = (~in_bag).sum(axis=0)
    expected = numpy_walk(forest, v, in_bag) * forest.n_trees / np.maximum(used, 1)
    everywhere = used == 0
    expected[everywhere] = numpy_walk(forest, v[everywhere])
    np.testing.assert_array_equal(forest.path_lengths(rows, in_bag), expected)
    assert everywhere.any() == (n <= 256)
