"""IsolationForest models in a form that scores fast, one event or thousands.

scikit-learn's ``IsolationForest.score_samples`` pays a fixed cost per call whatever the
number of rows (a joblib dispatch over every tree, milliseconds: see the benchmark
report), so a service that scores as events arrive, a few per route per poll, cannot
call it. We fit with scikit-learn and score
with :class:`CompiledForest`: the fitted trees laid out as complete binary trees of the
forest's depth limit, walked by a small compiled kernel (numba) with no branches on
tree shape. ``tests/unit/test_forest.py`` proves the scores equal sklearn's bit for bit inside
the training ranges, and what the module says beyond them.

Layout, per tree, for depth ``D`` (sklearn's ``ceil(log2(max_samples))``):

- ``feature[t, i]`` and ``threshold[t, i]`` for the ``2**D - 1`` internal slots, in
  heap order (children of ``i`` at ``2i+1``, ``2i+2``). A slot under a real leaf gets
  threshold ``+inf`` so that the walk passes through it to the leaf's bottom slots.
- ``leaf_code[t, j]`` for the ``2**D`` bottom slots: an index into one shared table of
  path lengths, ``depth + c(n) - 1`` exactly as sklearn computes it (2 bytes a leaf,
  not 8).
- ``low[t, i]`` and ``high[t, i]``: the range each split was drawn from (below). A
  model's size, against sklearn's pickled one, is in the benchmark report.

Thresholds are stored as float32 rounded down. sklearn compares float32 inputs with
float64 thresholds; for a float32 ``x``, ``x <= t`` holds exactly when ``x <= rd32(t)``,
so the float32 comparison decides every split the same way.

**Beyond the training range.** An isolation tree draws each split uniformly between the
smallest and largest value its node's samples hold. A point far outside that range is
never separated by the split: it follows the most extreme training points down the
tree and scores like them, so a request 50 times slower than usual scores no higher than
the slowest normal one (the forest "saturates"). With ``low``/``high`` (each split's
range, kept when the forest is compiled with its training rows) the kernel asks, at
every split, what the split would have done had it been drawn over the range with the
point in it: the point would have been cut off alone with probability
``gap / (gap + range)``, ending its path there. The path length is the expectation of
that walk, so it shrinks, and the score grows, with the distance beyond the range.
Inside every range the probability is 0 and the score is sklearn's, bit for bit.

**One-sided features.** ``floor`` (per feature, ``-inf`` for none) is the value below
which a feature counts as typical: for request telemetry, a request faster or smaller
than its route's median is not anomalous for being so, whatever the forest would say
about how rare it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from numba import njit
from sklearn.ensemble import IsolationForest
from sklearn.tree import ExtraTreeRegressor

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_N_MAX = 4096
"""The largest ``max_samples`` supported; a leaf holds at most this many rows."""
_DEPTH_MAX = 12
_ALL_TREES = np.zeros((0, 0), dtype=np.bool_)
"""``in_bag`` for :func:`_path_lengths` meaning: every tree scores every row."""


def average_path_length(n: int) -> float:
    """c(n): the mean path length of an unsuccessful BST search among n points (sklearn's)."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + np.euler_gamma) - 2.0 * (n - 1.0) / n


def _path_table() -> F64:
    """table[d * (N+1) + n] = d + c(n) - 1, with d the sklearn node depth (root = 1)."""
    width = _N_MAX + 1
    c = np.array([average_path_length(n) for n in range(width)])
    table = np.empty((_DEPTH_MAX + 2) * width)
    for d in range(_DEPTH_MAX + 2):
        # Same operation order as sklearn: (depth + c) - 1.0, in float64.
        table[d * width : (d + 1) * width] = (float(d) + c) - 1.0
    return table


PATH_TABLE: F64 = _path_table()


@njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator,unused-ignore]
def tree_path_length(
    v: F32,
    t: int,
    feature: npt.NDArray[np.int8],
    threshold: F32,
    low: F32,
    high: F32,
    leaf_code: npt.NDArray[np.uint16],
    table: F64,
    depth: int,
) -> float:  # pragma: no cover - compiled
    """The expected path length in tree ``t`` of a row whose model features, already
    raised to their floors, are ``v`` (see the module doc)."""
    node = 0
    path = 0.0
    alive = 1.0
    for level in range(depth):
        x = v[feature[t, node]]
        if x > threshold[t, node]:
            hi = np.float64(high[t, node])
            if x > hi:
                q = (x - hi) / (x - np.float64(low[t, node]))
                path += alive * q * (level + 1)
                alive *= 1.0 - q
            node = 2 * node + 2
        else:
            lo = np.float64(low[t, node])
            if x < lo:
                q = (lo - x) / (np.float64(high[t, node]) - x)
                path += alive * q * (level + 1)
                alive *= 1.0 - q
            node = 2 * node + 1
    n_internal = (1 << depth) - 1
    leaf: float = table[leaf_code[t, node - n_internal]]
    return path + alive * leaf


@njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator,unused-ignore]
def model_row(
    x: F32, i: int, cols: npt.NDArray[np.intp], floor: F32, out: F32
) -> None:  # pragma: no cover - compiled
    """Row ``i``'s model features, each raised to its floor, into ``out``."""
    for f in range(out.shape[0]):
        out[f] = max(x[i, cols[f]], floor[f])


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _path_lengths(
    x: F32,
    in_bag: npt.NDArray[np.bool_],
    floor: F32,
    feature: npt.NDArray[np.int8],
    threshold: F32,
    low: F32,
    high: F32,
    leaf_code: npt.NDArray[np.uint16],
    table: F64,
    depth: int,
    out: F64,
) -> None:  # pragma: no cover - compiled
    """Total path length of each row over all trees; with ``in_bag`` (trees, rows), over
    the trees that did not sample the row, scaled to all trees (all of them if every
    tree sampled it)."""
    cols = np.arange(x.shape[1])
    n_trees = feature.shape[0]
    out_of_bag_only = in_bag.shape[1] > 0
    v = np.empty(x.shape[1], dtype=np.float32)
    for i in range(x.shape[0]):
        model_row(x, i, cols, floor, v)
        oob = 0.0
        used = 0
        if out_of_bag_only:  # the trees that sampled the row are not walked at all
            for t in range(n_trees):
                if not in_bag[t, i]:
                    oob += tree_path_length(
                        v, t, feature, threshold, low, high, leaf_code, table, depth
                    )
                    used += 1
        if used > 0:
            out[i] = oob * n_trees / used
            continue
        total = 0.0
        for t in range(n_trees):
            total += tree_path_length(v, t, feature, threshold, low, high, leaf_code, table, depth)
        out[i] = total


@dataclass(frozen=True, slots=True, repr=False)
class CompiledForest:
    """A fitted isolation forest, ready to score; immutable so it can be swapped whole."""

    feature: npt.NDArray[np.int8]
    threshold: F32
    leaf_code: npt.NDArray[np.uint16]
    depth: int
    denominator: float
    n_features: int
    low: F32
    """Per split, the smallest value of its feature among the node's training samples
    (``-inf`` where not known: the split then scores as sklearn's)."""
    high: F32
    floor: F32
    """Per feature, the value below which it counts as typical (``-inf``: two-sided)."""
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        arrays = (self.feature, self.threshold, self.leaf_code, self.low, self.high, self.floor)
        object.__setattr__(self, "nbytes", int(sum(a.nbytes for a in arrays)))

    def __repr__(self) -> str:
        return f"CompiledForest(trees={self.n_trees}, depth={self.depth}, bytes={self.nbytes})"

    @property
    def n_trees(self) -> int:
        return int(self.feature.shape[0])

    def score(self, x: npt.ArrayLike) -> F64:
        """Anomaly scores in (0, 1], higher = more anomalous: sklearn's ``-score_samples``
        (beyond the training ranges, higher: see the module doc)."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        if x32.ndim != 2 or x32.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n, {self.n_features}), got {x32.shape}")
        return self.scores_of(self.path_lengths(x32, _ALL_TREES))

    def path_lengths(self, x32: F32, in_bag: npt.NDArray[np.bool_]) -> F64:
        """Each row's total path length (see :func:`_path_lengths` for ``in_bag``)."""
        out = np.zeros(x32.shape[0])
        _path_lengths(
            x32,
            in_bag,
            self.floor,
            self.feature,
            self.threshold,
            self.low,
            self.high,
            self.leaf_code,
            PATH_TABLE,
            self.depth,
            out,
        )
        return out

    def scores_of(self, path_lengths: F64) -> F64:
        """Total path lengths over the trees into scores: ``2 ** (-mean / c(n))``."""
        if self.denominator == 0:
            return np.ones_like(path_lengths)
        scores: F64 = 2 ** (-np.divide(path_lengths, self.denominator))
        return scores

    @classmethod
    def from_sklearn(
        cls,
        model: IsolationForest,
        x: npt.ArrayLike | None = None,
        floor: npt.ArrayLike | None = None,
        samples: npt.NDArray[np.intp] | None = None,
    ) -> CompiledForest:
        """Lay a fitted sklearn forest out for the kernel.

        With ``x`` (the rows the model was fit on), each split keeps the range it was
        drawn from, and points beyond it score higher than sklearn scores them; without,
        the scores are sklearn's everywhere. ``samples`` is the model's
        ``estimators_samples_`` if the caller has it (sklearn rebuilds it per access).
        """
        n_features = int(model.n_features_in_)
        max_samples = int(model._max_samples)
        if max_samples > _N_MAX:
            raise ValueError(f"max_samples {max_samples} > {_N_MAX} is not supported")
        if getattr(model, "_max_features", n_features) != n_features:
            raise ValueError("feature subsampling (max_features < 1.0) is not supported")
        depth = max(int(np.ceil(np.log2(max(max_samples, 2)))), 1)
        n_internal = (1 << depth) - 1
        n_trees = len(model.estimators_)
        feature = np.zeros((n_trees, n_internal), dtype=np.int8)
        threshold = np.full((n_trees, n_internal), np.inf, dtype=np.float32)
        low = np.full((n_trees, n_internal), -np.inf, dtype=np.float32)
        high = np.full((n_trees, n_internal), np.inf, dtype=np.float32)
        leaf_code = np.zeros((n_trees, 1 << depth), dtype=np.uint16)
        data = None if x is None else np.asarray(x, dtype=np.float32)
        trees = [est.tree_ for est in model.estimators_]
        sizes = np.array([t.node_count for t in trees], dtype=np.intp)
        offsets = np.zeros(n_trees + 1, dtype=np.intp)
        np.cumsum(sizes, out=offsets[1:])
        # Every tree's node arrays end to end, laid out by one compiled walk.
        _lay_out(
            offsets,
            np.concatenate([t.children_left for t in trees]).astype(np.intp),
            np.concatenate([t.children_right for t in trees]).astype(np.intp),
            np.concatenate([t.feature for t in trees]).astype(np.int8),
            _round_down_f32(np.concatenate([t.threshold for t in trees])),
            np.concatenate([t.n_node_samples for t in trees]).astype(np.intp),
            depth,
            _N_MAX + 1,
            feature,
            threshold,
            leaf_code,
        )
        if data is not None:
            is_split = np.isfinite(threshold)
            low[is_split], high[is_split] = np.inf, -np.inf
            if samples is None:
                samples = in_bag_rows(model)
            _fill_ranges(data, samples, is_split, feature, threshold, low, high, depth)
        denominator = n_trees * average_path_length(max_samples)
        floors = np.full(n_features, -np.inf, dtype=np.float32)
        if floor is not None:
            floors[:] = np.asarray(floor, dtype=np.float32)
        return cls(
            feature, threshold, leaf_code, depth, float(denominator), n_features, low, high, floors
        )


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _fill_ranges(
    data: F32,
    samples: npt.NDArray[np.intp],
    is_split: npt.NDArray[np.bool_],
    feature: npt.NDArray[np.int8],
    threshold: F32,
    low: F32,
    high: F32,
    depth: int,
) -> None:  # pragma: no cover - compiled
    """Walk each tree's training sample down it, widening every split's (low, high) to
    the values of its feature that reach it: the range sklearn drew the split from."""
    for t in range(samples.shape[0]):
        for k in range(samples.shape[1]):
            r = samples[t, k]
            node = 0
            for _ in range(depth):
                if not is_split[t, node]:
                    break
                v = data[r, feature[t, node]]
                low[t, node] = min(low[t, node], v)
                high[t, node] = max(high[t, node], v)
                if v > threshold[t, node]:
                    node = 2 * node + 2
                else:
                    node = 2 * node + 1


class _RecordingTree(ExtraTreeRegressor):  # type: ignore[misc]
    """scikit-learn's isolation tree, unchanged, that also keeps the rows it was fit on.

    IsolationForest hands each tree its sample as weights over every row (0 for rows not
    drawn). sklearn's own ``estimators_samples_`` draws the samples again from the
    seeds, a random generator per tree, about a tenth of a fit's time; the weights the
    tree was given say the same for free (``tests/unit/test_forest.py`` proves the two
    equal).
    """

    def fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        sample_weight: npt.ArrayLike | None = None,
        check_input: bool = True,
    ) -> _RecordingTree:
        self.sample_rows_ = None if sample_weight is None else np.flatnonzero(sample_weight)
        super().fit(X, y, sample_weight=sample_weight, check_input=check_input)
        return self


class _IsolationForest(IsolationForest):  # type: ignore[misc]
    """sklearn's IsolationForest with :class:`_RecordingTree` trees (same trees, same
    scores)."""

    def _get_estimator(self) -> ExtraTreeRegressor:
        return _RecordingTree(**super()._get_estimator().get_params())


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


def _round_down_f32(values: F64) -> F32:
    """Each value as the largest float32 not above it."""
    f = values.astype(np.float32)
    above = f.astype(np.float64) > values
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _lay_out(
    offsets: npt.NDArray[np.intp],
    left: npt.NDArray[np.intp],
    right: npt.NDArray[np.intp],
    feats: npt.NDArray[np.int8],
    thrs: F32,
    nsamples: npt.NDArray[np.intp],
    depth: int,
    width: int,
    feature: npt.NDArray[np.int8],
    threshold: F32,
    leaf_code: npt.NDArray[np.uint16],
) -> None:  # pragma: no cover - compiled
    """Map each sklearn tree (node arrays concatenated, tree ``t`` at ``offsets[t]``)
    onto its complete binary layout: splits in heap slots, each leaf's path-length code
    in the bottom slots under it."""
    stack = np.empty((2 * depth + 2, 3), dtype=np.intp)  # (node, slot, sklearn depth)
    for t in range(offsets.shape[0] - 1):
        base = offsets[t]
        stack[0, 0], stack[0, 1], stack[0, 2] = 0, 0, 1
        top = 1
        while top > 0:
            top -= 1
            node, slot, d = stack[top, 0], stack[top, 1], stack[top, 2]
            if left[base + node] == -1:  # a leaf: fill its bottom slots
                code = d * width + nsamples[base + node]
                level = d - 1
                span = 1 << (depth - level)
                first = (slot - ((1 << level) - 1)) * span
                for j in range(first, first + span):
                    leaf_code[t, j] = code
                continue
            feature[t, slot] = feats[base + node]
            threshold[t, slot] = thrs[base + node]
            stack[top, 0], stack[top, 1], stack[top, 2] = left[base + node], 2 * slot + 1, d + 1
            stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2] = (
                right[base + node],
                2 * slot + 2,
                d + 1,
            )
            top += 2


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
    model.fit(data)
    floor = np.full(data.shape[1], -np.inf, dtype=np.float32)
    for f in one_sided:
        floor[f] = np.median(data[:, f])
    samples = in_bag_rows(model)
    forest = CompiledForest.from_sklearn(model, data, floor, samples)
    return forest, model, out_of_bag_scores(forest, data, samples) if oob else None
