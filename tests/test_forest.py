"""The compiled forest scores exactly as scikit-learn's IsolationForest."""

from __future__ import annotations

import numpy as np
import pytest

from sentinel_stream.forest import CompiledForest, fit_forest


@pytest.mark.parametrize(
    ("n", "features", "max_samples"),
    [(1000, 3, 256), (1000, 2, 256), (60, 3, 256), (5, 2, 256), (2000, 5, 512), (300, 1, 64)],
)
def test_scores_equal_sklearn(n: int, features: int, max_samples: int) -> None:
    rng = np.random.default_rng(n + features)
    x = rng.lognormal(size=(n, features))
    forest, model = fit_forest(x, 50, max_samples, seed=3)
    queries = np.vstack([x, rng.lognormal(size=(500, features)) * 5, -x[:10]])
    ours = forest.score(queries)
    theirs = -model.score_samples(queries)
    np.testing.assert_array_equal(ours, theirs)


def test_ties_on_thresholds_decide_like_sklearn() -> None:
    # Integer-valued data puts many query values exactly on or next to split points.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(400, 2)).astype(np.float64)
    forest, model = fit_forest(x, 100, 256, seed=5)
    grid = np.array([[a, b] for a in np.linspace(-1, 6, 57) for b in np.linspace(-1, 6, 57)])
    np.testing.assert_array_equal(forest.score(grid), -model.score_samples(grid))


def test_rejects_wrong_width() -> None:
    forest, _ = fit_forest(np.ones((20, 3)), 5, 16, seed=0)
    with pytest.raises(ValueError, match="expected shape"):
        forest.score(np.ones((2, 2)))


def test_compiled_forest_is_compact() -> None:
    forest, _ = fit_forest(np.random.default_rng(0).normal(size=(1000, 2)), 100, 256, seed=0)
    assert isinstance(forest, CompiledForest)
    assert forest.n_trees == 100
    assert forest.nbytes < 200_000
