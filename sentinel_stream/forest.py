"""IsolationForest models in a form that scores fast, one event or thousands.

scikit-learn's ``IsolationForest.score_samples`` costs about 5 ms per call whatever the
number of rows (joblib dispatch over 100 trees), so a service that scores as events
arrive, a few per route per poll, cannot call it. We fit with scikit-learn and score
with :class:`CompiledForest`: the fitted trees laid out as complete binary trees of the
forest's depth limit, walked by a small compiled kernel (numba) with no branches on
tree shape. ``tests/test_forest.py`` proves the scores equal sklearn's bit for bit.

Layout, per tree, for depth ``D`` (sklearn's ``ceil(log2(max_samples))``):

- ``feature[t, i]`` and ``threshold[t, i]`` for the ``2**D - 1`` internal slots, in
  heap order (children of ``i`` at ``2i+1``, ``2i+2``). A slot under a real leaf gets
  threshold ``+inf`` so that the walk passes through it to the leaf's bottom slots.
- ``leaf_code[t, j]`` for the ``2**D`` bottom slots: an index into one shared table of
  path lengths, ``depth + c(n) - 1`` exactly as sklearn computes it, so a tree costs
  about 1.8 KB, not 4 KB.

Thresholds are stored as float32 rounded down. sklearn compares float32 inputs with
float64 thresholds; for a float32 ``x``, ``x <= t`` holds exactly when ``x <= rd32(t)``,
so the float32 comparison decides every split the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit
from sklearn.ensemble import IsolationForest

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_N_MAX = 4096
"""The largest ``max_samples`` supported; a leaf holds at most this many rows."""
_DEPTH_MAX = 12


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


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _path_lengths(
    x: F32,
    feature: npt.NDArray[np.int8],
    threshold: F32,
    leaf_code: npt.NDArray[np.uint16],
    table: F64,
    depth: int,
    out: F64,
) -> None:  # pragma: no cover - compiled
    n_internal = (1 << depth) - 1
    n_trees = feature.shape[0]
    for i in range(x.shape[0]):
        total = 0.0
        for t in range(n_trees):
            node = 0
            for _ in range(depth):
                if x[i, feature[t, node]] > threshold[t, node]:
                    node = 2 * node + 2
                else:
                    node = 2 * node + 1
            total += table[leaf_code[t, node - n_internal]]
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
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        total = self.feature.nbytes + self.threshold.nbytes + self.leaf_code.nbytes
        object.__setattr__(self, "nbytes", int(total))

    def __repr__(self) -> str:
        return f"CompiledForest(trees={self.n_trees}, depth={self.depth}, bytes={self.nbytes})"

    @property
    def n_trees(self) -> int:
        return int(self.feature.shape[0])

    def score(self, x: npt.ArrayLike) -> F64:
        """Anomaly scores in (0, 1], higher = more anomalous: sklearn's ``-score_samples``."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        if x32.ndim != 2 or x32.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n, {self.n_features}), got {x32.shape}")
        depths = np.zeros(x32.shape[0])
        _path_lengths(
            x32, self.feature, self.threshold, self.leaf_code, PATH_TABLE, self.depth, depths
        )
        if self.denominator == 0:
            return np.ones_like(depths)
        scores: F64 = 2 ** (-np.divide(depths, self.denominator))
        return scores

    @classmethod
    def from_sklearn(cls, model: IsolationForest) -> CompiledForest:
        """Lay a fitted sklearn forest out for the kernel."""
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
        leaf_code = np.zeros((n_trees, 1 << depth), dtype=np.uint16)
        width = _N_MAX + 1
        for t, est in enumerate(model.estimators_):
            tree = est.tree_
            left, right = tree.children_left, tree.children_right
            feats, thrs, nsamples = tree.feature, tree.threshold, tree.n_node_samples
            # Walk the real tree, mapping each node to its heap slot.
            stack: list[tuple[int, int, int]] = [(0, 0, 1)]  # (node, slot, sklearn depth)
            while stack:
                node, slot, d = stack.pop()
                if left[node] == -1:  # a leaf: fill its bottom slots
                    code = d * width + int(nsamples[node])
                    level = d - 1
                    span = 1 << (depth - level)
                    first = (slot - ((1 << level) - 1)) * span
                    leaf_code[t, first : first + span] = code
                    continue
                feature[t, slot] = feats[node]
                threshold[t, slot] = _round_down_f32(float(thrs[node]))
                stack.append((int(left[node]), 2 * slot + 1, d + 1))
                stack.append((int(right[node]), 2 * slot + 2, d + 1))
        denominator = n_trees * average_path_length(max_samples)
        return cls(feature, threshold, leaf_code, depth, float(denominator), n_features)


def _round_down_f32(value: float) -> np.float32:
    """The largest float32 not above ``value``."""
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def fit_forest(
    x: npt.ArrayLike, n_estimators: int, max_samples: int, seed: int | None
) -> tuple[CompiledForest, IsolationForest]:
    """Fit sklearn's IsolationForest on ``x`` and compile it."""
    data = np.asarray(x, dtype=np.float32)
    model = IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(max_samples, len(data)),
        contamination="auto",
        random_state=seed,
        n_jobs=1,
    )
    model.fit(data)
    return CompiledForest.from_sklearn(model), model


def warm_up_kernel() -> None:
    """Compile (or load from cache) the scoring kernels before the first event needs them."""
    from sentinel_stream.kernels import score_route

    x: Any = np.zeros((4, 1), dtype=np.float32)
    forest, _ = fit_forest(np.arange(8, dtype=np.float32).reshape(-1, 1), 2, 4, 0)
    forest.score(x)
    ones = np.ones(1)
    cols = np.zeros(1, dtype=np.intp)
    for model in (forest, None):
        score_route(x, ones, ones, model, cols, 0.7, 0.5)
