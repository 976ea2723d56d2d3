"""Fitting: scikit-learn's IsolationForest, compiled for scoring.

The only module of the detector that imports scikit-learn (about 120 MiB of a process's
memory): the refit workers import it, the process that scores does not, unless it fits
inline (``SENTINEL_REFIT_WORKERS=0``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest, _bagging, _iforest
from sklearn.tree import ExtraTreeRegressor

from sentinel_stream.detect.forest import CompiledForest

F64 = npt.NDArray[np.float64]

_RESEEDED = threading.local()


def _reseeded(seed: int | np.integer) -> np.random.RandomState:
    """A generator in the state ``np.random.RandomState(seed)`` starts in, without
    making one.

    sklearn makes a ``RandomState`` from an int seed three times per tree, and making
    one costs more than the tree's seeding needs: it first seeds itself from the
    operating system's entropy, then throws that away for the seed (about a fifth of
    ``evaluate``'s time on KDD99 went there). ``RandomState.seed`` puts an existing one
    in the same state (the same legacy seeding, the Gaussian cache cleared). One per
    thread: a fit uses it for one draw at a time (``tests/unit/test_forest.py`` holds
    the trees equal to a plain IsolationForest's)."""
    rng: np.random.RandomState | None = getattr(_RESEEDED, "rng", None)
    if rng is None:
        rng = _RESEEDED.rng = np.random.RandomState(0)
    rng.seed(seed)
    return rng


SKLEARN_AVERAGE_PATH_LENGTH = _iforest._average_path_length
SKLEARN_BAGGING_INDICES = _bagging._generate_bagging_indices
"""scikit-learn's own, kept for the tests that hold the replacements equal to them."""


def average_path_lengths(n_samples_leaf: npt.ArrayLike) -> F64:
    """sklearn's ``_average_path_length``, the same arithmetic in the same order, without
    its ``check_array``: IsolationForest.fit calls it once per tree on the tree's node
    counts (an int array), and the check, with its dataframe probes, cost more than the
    arithmetic: about a quarter of a refit worker's time."""
    counts = np.asarray(n_samples_leaf)
    shape = counts.shape
    counts = counts.reshape((1, -1))
    out = np.zeros(counts.shape)
    mask_1 = counts <= 1
    mask_2 = counts == 2
    not_mask = ~np.logical_or(mask_1, mask_2)
    out[mask_1] = 0.0
    out[mask_2] = 1.0
    out[not_mask] = (
        2.0 * (np.log(counts[not_mask] - 1.0) + np.euler_gamma)
        - 2.0 * (counts[not_mask] - 1.0) / counts[not_mask]
    )
    result: F64 = out.reshape(shape)
    return result


def bagging_indices(random_state: Any, *args: Any, **kwargs: Any) -> Any:
    """sklearn's ``_generate_bagging_indices`` drawing from :func:`_reseeded` instead of
    a ``RandomState`` made from the tree's int seed (the same state, the same draws):
    making one was about a fifth of a refit worker's time."""
    if isinstance(random_state, int | np.integer):
        random_state = _reseeded(random_state)
    return SKLEARN_BAGGING_INDICES(random_state, *args, **kwargs)


_FAST_PATHS = threading.Lock()


@contextlib.contextmanager
def _fast_paths() -> Iterator[None]:
    """sklearn's two per-tree helpers above replaced for the span of one fit (a lock
    keeps two threads' fits from interleaving the swap); ``tests/unit/test_forest.py``
    holds each equal to sklearn's and the trees equal to a plain IsolationForest's."""
    with _FAST_PATHS:
        _iforest._average_path_length = average_path_lengths
        _bagging._generate_bagging_indices = bagging_indices
        try:
            yield
        finally:
            _iforest._average_path_length = SKLEARN_AVERAGE_PATH_LENGTH
            _bagging._generate_bagging_indices = SKLEARN_BAGGING_INDICES


class _RecordingTree(ExtraTreeRegressor):  # type: ignore[misc]
    """scikit-learn's isolation tree, unchanged, that also keeps the rows it was fit on.

    IsolationForest hands each tree its sample as weights over every row (0 for rows not
    drawn). sklearn's own ``estimators_samples_`` draws the samples again from the
    seeds, a random generator per tree, about a tenth of a fit's time; the weights the
    tree was given say the same for free (``tests/unit/test_forest.py`` proves the two
    equal).

    The tree is grown on the drawn rows alone, without the weights: sklearn's tree
    builder drops the rows of weight 0 and keeps the others in index order, so the rows
    taken in that order build the same tree, while checking a weight vector as long as
    the window (``_check_sample_weight``, with its dataframe probes) was about a sixth of
    a refit worker's time (``tests/unit/test_forest.py`` holds the trees equal).
    """

    random_state: int | np.integer | np.random.RandomState | None

    def fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        sample_weight: npt.ArrayLike | None = None,
        check_input: bool = True,
    ) -> _RecordingTree:
        self.sample_rows_ = None if sample_weight is None else np.flatnonzero(sample_weight)
        rows = self.sample_rows_
        if rows is not None and not check_input and np.max(np.asarray(sample_weight)) == 1:
            # Each drawn row once (IsolationForest draws without replacement).
            X, y, sample_weight = np.asarray(X)[rows], np.asarray(y)[rows], None
        seed = self.random_state
        if isinstance(seed, int | np.integer):  # as sklearn's check_random_state would
            self.random_state = _reseeded(seed)
        try:
            super().fit(X, y, sample_weight=sample_weight, check_input=check_input)
        finally:
            self.random_state = seed
        return self


_SEED_MAX = np.iinfo(np.int32).max


class _IsolationForest(IsolationForest):  # type: ignore[misc]
    """sklearn's IsolationForest with :class:`_RecordingTree` trees (same trees, same
    scores), each made without sklearn's generic machinery.

    For every tree, sklearn's ``_make_estimator`` clones a template, sets its parameters,
    then reads every parameter's name from the constructor's signature to find the ones
    called ``random_state`` and draw each a seed: about a fifth of a fit's time for
    one seed. Here the tree's parameters are read once per fit, and its one seed is drawn
    as sklearn draws it (``RandomState(seed).randint(int32 max)``):
    ``tests/unit/test_forest.py`` holds the scores equal to a plain IsolationForest's.
    """

    _tree_params: dict[str, object] | None = None

    def _get_estimator(self) -> ExtraTreeRegressor:
        return _RecordingTree(**super()._get_estimator().get_params())

    def _make_estimator(
        self, append: bool = True, random_state: int | np.random.RandomState | None = None
    ) -> _RecordingTree:
        if self._tree_params is None:
            template = self.estimator_.get_params()
            template.update({p: getattr(self, p) for p in self.estimator_params})
            self._tree_params = template
        tree = _RecordingTree(**self._tree_params)
        if random_state is not None:
            rng = (
                random_state
                if isinstance(random_state, np.random.RandomState)
                else _reseeded(random_state)
            )
            tree.random_state = int(rng.randint(_SEED_MAX))
        if append:
            self.estimators_.append(tree)
        return tree


def in_bag_rows(model: IsolationForest) -> npt.NDArray[np.intp]:
    """(trees, max_samples): the rows each tree was fit on."""
    rows = [getattr(est, "sample_rows_", None) for est in model.estimators_]
    if all(r is not None and len(r) == model._max_samples for r in rows):
        return np.stack(rows).astype(np.intp, copy=False)  # type: ignore[arg-type]
    return np.asarray(model.estimators_samples_, dtype=np.intp)


def out_of_bag_scores(
    forest: CompiledForest, x: npt.ArrayLike, samples: npt.NDArray[np.intp]
) -> F64:
    """Each training row's score from the trees that did not sample it.

    A tree scores its own sample lower than it will score new rows from the same
    distribution (a sampled row sets the ranges it is measured against), so a threshold
    taken from in-bag scores flags too much new normal traffic. Out of bag, a training
    row is as new to the trees as tomorrow's rows are. A row every tree sampled (a fit
    on no more rows than ``max_samples``) keeps its in-bag score.
    """
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    in_bag = np.zeros((forest.n_trees, len(x32)), dtype=np.bool_)
    in_bag[np.arange(forest.n_trees)[:, None], samples] = True
    return forest.scores_of(forest.path_lengths(x32, in_bag))


def fit_forest(
    x: npt.ArrayLike,
    n_estimators: int,
    max_samples: int,
    seed: int | None,
    one_sided: Sequence[int] = (),
) -> tuple[CompiledForest, IsolationForest]:
    """Fit sklearn's IsolationForest on ``x`` and compile it, range-aware; features in
    ``one_sided`` count as typical below their median over ``x``."""
    forest, model, _ = fit_scored(x, n_estimators, max_samples, seed, one_sided, oob=False)
    return forest, model


def fit_scored(
    x: npt.ArrayLike,
    n_estimators: int,
    max_samples: int,
    seed: int | None,
    one_sided: Sequence[int] = (),
    oob: bool = True,
) -> tuple[CompiledForest, IsolationForest, F64 | None]:
    """:func:`fit_forest`, and the training rows' out-of-bag scores (with ``oob``)."""
    data = np.asarray(x, dtype=np.float32)
    model = _IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(max_samples, len(data)),
        contamination="auto",
        random_state=seed,
        n_jobs=1,
    )
    with _fast_paths():
        model.fit(data)
    floor = np.full(data.shape[1], -np.inf, dtype=np.float32)
    for f in one_sided:
        floor[f] = np.median(data[:, f])
    samples = in_bag_rows(model)
    forest = CompiledForest.from_sklearn(model, data, floor, samples)
    return forest, model, out_of_bag_scores(forest, data, samples) if oob else None
