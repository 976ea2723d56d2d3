"""The compiled forest scores exactly as scikit-learn's IsolationForest, and beyond the
training range as an independent walk of sklearn's own trees says it should."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.ensemble import IsolationForest, _bagging, _iforest

from sentinel_stream.detect.fit import (
    SKLEARN_AVERAGE_PATH_LENGTH,
    SKLEARN_BAGGING_INDICES,
    average_path_lengths,
    bagging_indices,
    fit_forest,
    fit_scored,
    in_bag_rows,
    out_of_bag_scores,
)
from sentinel_stream.detect.forest import CompiledForest, average_path_length


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


def reference_path_lengths(
    model: IsolationForest, x: np.ndarray, queries: np.ndarray, floor: np.ndarray
) -> np.ndarray:
    """(queries, trees): the range-aware expected path lengths, walked on sklearn's own
    tree objects in plain Python: each node's range is recomputed from the rows sklearn
    sampled for the tree."""
    x32 = x.astype(np.float32)
    q32 = np.maximum(queries.astype(np.float32), floor.astype(np.float32))
    out = np.zeros((len(queries), len(model.estimators_)))
    for t, (est, rows) in enumerate(zip(model.estimators_, model.estimators_samples_, strict=True)):
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
            out[i, t] = path + alive * leaf
    return out


def reference_scores(
    model: IsolationForest, x: np.ndarray, queries: np.ndarray, floor: np.ndarray
) -> np.ndarray:
    """The range-aware score from :func:`reference_path_lengths`."""
    total = reference_path_lengths(model, x, queries, floor).sum(axis=1)
    denominator = len(model.estimators_) * average_path_length(model._max_samples)
    return 2 ** (-total / denominator)  # type: ignore[no-any-return]


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
    # By hand, on sklearn's own trees: the mean path over the trees whose sample lacks
    # the row.
    lengths = reference_path_lengths(model, x, x[:3], forest.floor)
    for i in range(3):
        out_of_bag = [t for t in range(forest.n_trees) if i not in samples[t]]
        assert out_of_bag
        expected = 2 ** (-lengths[i, out_of_bag].mean() / average_path_length(64))
        assert oob[i] == pytest.approx(expected, rel=1e-12)


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


def queries_around(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training rows, rows inside and far beyond every range, and rows below it."""
    head = x[:200]
    return np.vstack(
        [
            head,
            head * rng.uniform(0.01, 50, size=head.shape),
            head + rng.normal(0, 100, size=head.shape),
            -np.abs(head[:20]) * 1e3,
        ]
    )


@pytest.mark.parametrize(
    ("n", "features", "max_samples", "ranges", "one_sided"),
    [
        (1000, 2, 256, True, (0, 1)),
        (1000, 3, 256, True, ()),
        (1000, 2, 256, False, ()),
        (300, 1, 64, True, (0,)),
        (60, 2, 256, True, (1,)),
        (5000, 2, 2048, True, (0,)),
    ],
)
def test_the_compact_layout_scores_exactly_as_the_complete_layout(
    n: int, features: int, max_samples: int, ranges: bool, one_sided: tuple[int, ...]
) -> None:
    from tests.support.complete_forest import CompleteForest

    rng = np.random.default_rng(n * features)
    x = rng.lognormal(size=(n, features))
    forest, model = fit_forest(x, 60, max_samples, seed=4, one_sided=one_sided)
    if not ranges:
        forest = CompiledForest.from_sklearn(model, floor=forest.floor)
    complete = CompleteForest.from_sklearn(model, x if ranges else None, forest.floor)
    queries = queries_around(x, rng)
    np.testing.assert_array_equal(forest.score(queries), complete.score(queries))


def test_trees_whose_root_is_a_leaf_score_as_sklearn() -> None:
    x = np.vstack([np.ones((40, 2)), [[2.0, 3.0]]])  # most trees sample only the ones
    forest, model = fit_forest(x, 50, 16, seed=0)
    assert (forest.root < 0).any() and (forest.root == 0).any()
    queries = np.array([[1.0, 1.0], [2.0, 3.0], [0.5, 7.0]])
    np.testing.assert_array_equal(
        CompiledForest.from_sklearn(model).score(queries), -model.score_samples(queries)
    )
    from tests.support.complete_forest import CompleteForest

    complete = CompleteForest.from_sklearn(model, x, forest.floor)
    np.testing.assert_array_equal(forest.score(queries), complete.score(queries))


def test_the_compact_layout_holds_a_fraction_of_the_complete_one() -> None:
    from tests.support.complete_forest import CompleteForest

    x = np.random.default_rng(0).lognormal(size=(1000, 2))
    forest, model = fit_forest(x, 100, 256, seed=0)
    complete = CompleteForest.from_sklearn(model, x, forest.floor)
    nodes = sum(int((est.tree_.children_left != -1).sum()) for est in model.estimators_)
    assert forest.n_splits == nodes  # one entry per split node, nothing else
    assert forest.nbytes < complete.nbytes / 3


def test_a_forest_in_the_complete_layout_converts_to_the_same_scores() -> None:
    from sentinel_stream.detect.forest import from_complete_layout
    from tests.support.complete_forest import CompleteForest

    rng = np.random.default_rng(8)
    x = rng.lognormal(size=(800, 2))
    forest, model = fit_forest(x, 40, 256, seed=2, one_sided=(0,))
    for ranges in (x, None):
        complete = CompleteForest.from_sklearn(model, ranges, forest.floor)
        converted = from_complete_layout(**complete.parts())
        queries = queries_around(x, rng)
        np.testing.assert_array_equal(converted.score(queries), complete.score(queries))
        if ranges is not None:
            for name in ("nodes", "split", "root", "tree_start"):
                np.testing.assert_array_equal(getattr(converted, name), getattr(forest, name))


def test_out_of_bag_path_lengths_are_the_complete_layouts() -> None:
    from tests.support.complete_forest import CompleteForest

    x = np.random.default_rng(9).lognormal(size=(1500, 2))
    forest, model, _ = fit_scored(x, 50, 256, seed=5, one_sided=(1,))
    samples = in_bag_rows(model)
    in_bag = np.zeros((forest.n_trees, len(x)), dtype=np.bool_)
    in_bag[np.arange(forest.n_trees)[:, None], samples] = True
    x32 = x.astype(np.float32)
    complete = CompleteForest.from_sklearn(model, x, forest.floor)
    np.testing.assert_array_equal(
        forest.path_lengths(x32, in_bag), complete.path_lengths(x32, in_bag)
    )


def test_the_fits_average_path_lengths_are_sklearns() -> None:
    rng = np.random.default_rng(5)
    counts: list[npt.ArrayLike] = [
        np.array([0, 1, 2, 3, 4, 255, 256, 1000]),
        rng.integers(0, 300, size=500),
        rng.integers(0, 3, size=(4, 7)),  # any shape comes back in its shape
        [5],
    ]
    for c in counts:
        ours = average_path_lengths(c)
        theirs = SKLEARN_AVERAGE_PATH_LENGTH(c)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("max_samples", [64, 256, 1000])
def test_the_fits_bagging_draws_are_sklearns(max_samples: int) -> None:
    for seed in (0, 1, 12345, np.int64(2**31 - 2)):
        args = (False, False, 3, 1000, 3, max_samples, None)
        ours = bagging_indices(seed, *args)
        theirs = SKLEARN_BAGGING_INDICES(seed, *args)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_sklearn_is_itself_again_after_a_fit() -> None:
    """The replacements hold for the span of a fit only, even one that fails."""
    x = np.random.default_rng(3).normal(size=(300, 2))
    fit_forest(x, 10, 64, seed=1)
    with pytest.raises(ValueError, match="n_estimators"):
        fit_forest(x, 0, 64, seed=1)  # sklearn refuses it inside fit
    assert _iforest._average_path_length is SKLEARN_AVERAGE_PATH_LENGTH
    assert _bagging._generate_bagging_indices is SKLEARN_BAGGING_INDICES
