"""The compiled forest scores exactly as scikit-learn's IsolationForest, and beyond the
training range as an independent walk of sklearn's own trees says it should."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from sentinel_stream.detect.forest import (
    CompiledForest,
    average_path_length,
    fit_forest,
    fit_scored,
    in_bag_rows,
    out_of_bag_scores,
)


def sklearn_only(model: IsolationForest) -> CompiledForest:
    """The model compiled without its training rows: no split ranges, sklearn's scores."""
    return CompiledForest.from_sklearn(model)


@pytest.mark.parametrize(
    ("n", "features", "max_samples"),
    [(1000, 3, 256), (1000, 2, 256), (60, 3, 256), (5, 2, 256), (2000, 5, 512), (300, 1, 64)],
)
def test_scores_equal_sklearn(n: int, features: int, max_samples: int) -> None:
    rng = np.random.default_rng(n + features)
    x = rng.lognormal(size=(n, features))
    _, model = fit_forest(x, 50, max_samples, seed=3)
    queries = np.vstack([x, rng.lognormal(size=(500, features)) * 5, -x[:10]])
    ours = sklearn_only(model).score(queries)
    theirs = -model.score_samples(queries)
    np.testing.assert_array_equal(ours, theirs)


def test_ties_on_thresholds_decide_like_sklearn() -> None:
    # Integer-valued data puts many query values exactly on or next to split points.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(400, 2)).astype(np.float64)
    _, model = fit_forest(x, 100, 256, seed=5)
    grid = np.array([[a, b] for a in np.linspace(-1, 6, 57) for b in np.linspace(-1, 6, 57)])
    np.testing.assert_array_equal(sklearn_only(model).score(grid), -model.score_samples(grid))


def reference_scores(
    model: IsolationForest, x: np.ndarray, queries: np.ndarray, floor: np.ndarray
) -> np.ndarray:
    """The range-aware score, walked on sklearn's own tree objects in plain Python: each
    node's range is recomputed from the rows sklearn sampled for the tree."""
    x32 = x.astype(np.float32)
    q32 = np.maximum(queries.astype(np.float32), floor.astype(np.float32))
    out = np.zeros(len(queries))
    for est, rows in zip(model.estimators_, model.estimators_samples_, strict=True):
        tree = est.tree_
        sample = x32[rows]
        for i, point in enumerate(q32):
            node, depth, alive, path = 0, 0, 1.0, 0.0
            members = np.arange(len(sample))
            while tree.children_left[node] != -1:
                f = tree.feature[node]
                values = sample[members, f].astype(np.float64)
                lo, hi, v = values.min(), values.max(), float(point[f])
                q = (v - hi) / (v - lo) if v > hi else (lo - v) / (hi - v) if v < lo else 0.0
                path += alive * q * (depth + 1)
                alive *= 1.0 - q
                go_left = sample[members, f] <= tree.threshold[node]
                if point[f] <= tree.threshold[node]:
                    node, members = tree.children_left[node], members[go_left]
                else:
                    node, members = tree.children_right[node], members[~go_left]
                depth += 1
            leaf = depth + average_path_length(int(tree.n_node_samples[node]))
            out[i] += path + alive * leaf
    denominator = len(model.estimators_) * average_path_length(model._max_samples)
    return 2 ** (-out / denominator)


@pytest.mark.parametrize("one_sided", [(), (0,)])
def test_range_aware_scores_equal_a_plain_walk_of_sklearn_trees(one_sided: tuple[int, ...]) -> None:
    rng = np.random.default_rng(4)
    x = rng.lognormal(size=(700, 2))
    forest, model = fit_forest(x, 20, 128, seed=9, one_sided=one_sided)
    queries = np.vstack([x[:50], x[:50] * rng.uniform(0.1, 30, size=(50, 2)), [[1e3, 1.0]]])
    expected = reference_scores(model, x, queries, forest.floor)
    np.testing.assert_allclose(forest.score(queries), expected, rtol=1e-12, atol=0)


def test_beyond_the_range_scores_grow_with_distance() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 2))
    forest, model = fit_forest(x, 100, 256, seed=0)
    far = np.array([[x[:, 0].max() + d, 0.0] for d in (0.5, 2, 8, 32)])
    ours = forest.score(far)
    theirs = -model.score_samples(far)
    assert np.all(np.diff(ours) > 0), ours  # sklearn's saturate:
    assert np.ptp(theirs) < 0.02, theirs
    assert np.all(ours >= theirs)
    assert forest.score(x[:200]).mean() < ours.min()


def test_one_sided_features_count_as_typical_below_the_median() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 2))
    forest, _ = fit_forest(x, 100, 256, seed=0, one_sided=(0,))
    median = np.median(x[:, 0])
    assert forest.floor[0] == np.float32(median)
    low = forest.score(np.array([[-50.0, 0.0]]))
    typical = forest.score(np.array([[median, 0.0]]))
    high = forest.score(np.array([[50.0, 0.0]]))
    np.testing.assert_array_equal(low, typical)
    assert high[0] > typical[0] + 0.2
    # The other feature stays two-sided.
    assert forest.score(np.array([[median, -50.0]]))[0] > typical[0] + 0.2


def test_out_of_bag_scores_use_only_the_trees_that_did_not_sample_the_row() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 2))
    forest, model, oob = fit_scored(x, 30, 64, seed=1)
    assert oob is not None
    samples = in_bag_rows(model)
    np.testing.assert_array_equal(out_of_bag_scores(forest, x, samples), oob)
    # Row 0, by hand: the mean path over the trees whose sample lacks it.
    lengths = []
    for t in range(forest.n_trees):
        if 0 not in samples[t]:
            one = CompiledForest(
                forest.feature[t : t + 1],
                forest.threshold[t : t + 1],
                forest.leaf_code[t : t + 1],
                forest.depth,
                average_path_length(64),
                2,
                forest.low[t : t + 1],
                forest.high[t : t + 1],
                forest.floor,
            )
            lengths.append(-np.log2(one.score(x[:1])[0]) * average_path_length(64))
    expected = 2 ** (-np.mean(lengths) / average_path_length(64))
    assert oob[0] == pytest.approx(expected, rel=1e-12)


def test_rejects_wrong_width() -> None:
    forest, _ = fit_forest(np.ones((20, 3)), 5, 16, seed=0)
    with pytest.raises(ValueError, match="expected shape"):
        forest.score(np.ones((2, 2)))


def test_compiled_forest_is_compact() -> None:
    forest, model = fit_forest(np.random.default_rng(0).normal(size=(1000, 2)), 100, 256, seed=0)
    assert isinstance(forest, CompiledForest)
    assert forest.n_trees == 100
    import pickle

    assert forest.nbytes < len(pickle.dumps(model)) / 3


@pytest.mark.parametrize(("n", "max_samples"), [(1000, 256), (100, 256), (3000, 64)])
def test_recorded_samples_are_sklearns(n: int, max_samples: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, 3))
    _, model = fit_forest(x, 30, max_samples, seed=7)
    ours = in_bag_rows(model)
    theirs = model.estimators_samples_
    assert ours.shape == (30, min(n, max_samples))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.sort(a), np.sort(b))
    plain = IsolationForest(n_estimators=30, max_samples=min(n, max_samples), random_state=7)
    np.testing.assert_array_equal(model.score_samples(x), plain.fit(x).score_samples(x))
