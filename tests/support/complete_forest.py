"""The previous compiled-forest layout, kept as a reference for tests and benchmarks.

Until snapshot version 2, each tree was laid out as a complete binary tree of the
forest's depth limit (``2**D - 1`` split slots, ``2**D`` leaf codes, slots under a real
leaf passed through with threshold ``+inf``) and walked with no branch on the tree's
shape. The compact layout (:mod:`sentinel_stream.detect.forest`) stores only the real
nodes; the tests prove it scores exactly as this one did, and ``bench/forest_layout.py``
times the two in the same run. The arrays here are also what a version-1 snapshot
holds (``tests/unit/test_snapshot.py`` reads one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from sentinel_stream.detect.fit import in_bag_rows
from sentinel_stream.detect.forest import PATH_TABLE, PATH_WIDTH, average_path_length

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_ALL_TREES = np.zeros((0, 0), dtype=np.bool_)


@dataclass(frozen=True)
class CompleteForest:
    """The arrays of the complete layout, as a version-1 snapshot names them."""

    feature: npt.NDArray[np.int8]
    threshold: F32
    leaf_code: npt.NDArray[np.uint16]
    depth: int
    denominator: float
    n_features: int
    low: F32
    high: F32
    floor: F32

    @property
    def nbytes(self) -> int:
        arrays = (self.feature, self.threshold, self.leaf_code, self.low, self.high, self.floor)
        return int(sum(a.nbytes for a in arrays))

    def parts(self) -> dict[str, Any]:
        """The fields by name (what ``snapshot.py`` wrote under ``forest.<name>``)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_sklearn(
        cls,
        model: Any,
        x: npt.ArrayLike | None = None,
        floor: npt.ArrayLike | None = None,
    ) -> CompleteForest:
        n_features = int(model.n_features_in_)
        max_samples = int(model._max_samples)
        depth = max(int(np.ceil(np.log2(max(max_samples, 2)))), 1)
        n_internal = (1 << depth) - 1
        n_trees = len(model.estimators_)
        feature = np.zeros((n_trees, n_internal), dtype=np.int8)
        threshold = np.full((n_trees, n_internal), np.inf, dtype=np.float32)
        low = np.full((n_trees, n_internal), -np.inf, dtype=np.float32)
        high = np.full((n_trees, n_internal), np.inf, dtype=np.float32)
        leaf_code = np.zeros((n_trees, 1 << depth), dtype=np.uint16)
        trees = [est.tree_ for est in model.estimators_]
        offsets = np.zeros(n_trees + 1, dtype=np.intp)
        np.cumsum([t.node_count for t in trees], out=offsets[1:])
        _lay_out(
            offsets,
            np.concatenate([t.children_left for t in trees]).astype(np.intp),
            np.concatenate([t.children_right for t in trees]).astype(np.intp),
            np.concatenate([t.feature for t in trees]).astype(np.int8),
            _round_down_f32(np.concatenate([t.threshold for t in trees])),
            np.concatenate([t.n_node_samples for t in trees]).astype(np.intp),
            depth,
            PATH_WIDTH,
            feature,
            threshold,
            leaf_code,
        )
        if x is not None:
            data = np.asarray(x, dtype=np.float32)
            is_split = np.isfinite(threshold)
            low[is_split], high[is_split] = np.inf, -np.inf
            _fill_ranges(data, in_bag_rows(model), is_split, feature, threshold, low, high, depth)
        floors = np.full(n_features, -np.inf, dtype=np.float32)
        if floor is not None:
            floors[:] = np.asarray(floor, dtype=np.float32)
        denominator = n_trees * average_path_length(max_samples)
        return cls(
            feature, threshold, leaf_code, depth, float(denominator), n_features, low, high, floors
        )

    def score(self, x: npt.ArrayLike) -> F64:
        return self.scores_of(self.path_lengths(x, _ALL_TREES))

    def scores_of(self, path_lengths: F64) -> F64:
        scores: F64 = 2 ** (-np.divide(path_lengths, self.denominator))
        return scores

    def path_lengths(self, x: npt.ArrayLike, in_bag: npt.NDArray[np.bool_]) -> F64:
        """As the previous ``CompiledForest.path_lengths`` (``in_bag``: out of bag)."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(len(x32))
        _path_lengths(
            x32, in_bag, self.floor, self.feature, self.threshold, self.low, self.high,
            self.leaf_code, PATH_TABLE, self.depth, out,
        )  # fmt: skip
        return out

    def score_route(
        self,
        rows: F32,
        reference: F64,
        scale: F64,
        cols: npt.NDArray[np.intp],
        model_threshold: float,
        rules_threshold: float,
        sum_excess: bool,
    ) -> tuple[F64, F64]:
        """The previous ``kernels.score_route`` with this forest (for the benchmark)."""
        n = rows.shape[0]
        scores = np.empty(n)
        deviations = np.empty((n, rows.shape[1]))
        _score_route(
            rows, reference, scale, cols, self.floor, self.feature, self.threshold, self.low,
            self.high, self.leaf_code, PATH_TABLE, self.depth, self.denominator,
            model_threshold, rules_threshold, sum_excess, scores, deviations,
        )  # fmt: skip
        return scores, deviations


def _round_down_f32(values: F64) -> F32:
    f = values.astype(np.float32)
    above = f.astype(np.float64) > values
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


@njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator,unused-ignore]
def _tree_path_length(
    v: Any,
    t: int,
    feature: Any,
    threshold: Any,
    low: Any,
    high: Any,
    leaf_code: Any,
    table: Any,
    depth: int,
) -> float:  # pragma: no cover - compiled
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


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _path_lengths(
    x: Any,
    in_bag: Any,
    floor: Any,
    feature: Any,
    threshold: Any,
    low: Any,
    high: Any,
    leaf_code: Any,
    table: Any,
    depth: int,
    out: Any,
) -> None:  # pragma: no cover - compiled
    n_trees = feature.shape[0]
    out_of_bag_only = in_bag.shape[1] > 0
    v = np.empty(x.shape[1], dtype=np.float32)
    for i in range(x.shape[0]):
        for f in range(x.shape[1]):
            v[f] = max(x[i, f], floor[f])
        oob = 0.0
        used = 0
        if out_of_bag_only:
            for t in range(n_trees):
                if not in_bag[t, i]:
                    oob += _tree_path_length(
                        v, t, feature, threshold, low, high, leaf_code, table, depth
                    )
                    used += 1
        if used > 0:
            out[i] = oob * n_trees / used
            continue
        total = 0.0
        for t in range(n_trees):
            total += _tree_path_length(v, t, feature, threshold, low, high, leaf_code, table, depth)
        out[i] = total


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _score_route(
    x: Any,
    reference: Any,
    scale: Any,
    cols: Any,
    floor: Any,
    feature: Any,
    threshold: Any,
    low: Any,
    high: Any,
    leaf_code: Any,
    table: Any,
    depth: int,
    denominator: float,
    model_threshold: float,
    rules_threshold: float,
    sum_excess: bool,
    scores: Any,
    deviations: Any,
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
        for f in range(v.shape[0]):
            v[f] = max(x[i, cols[f]], floor[f])
        total = 0.0
        for t in range(n_trees):
            total += _tree_path_length(v, t, feature, threshold, low, high, leaf_code, table, depth)
        forest = 1.0 if denominator == 0 else 2.0 ** (-(total / denominator))
        if rule < rules_threshold:
            mapped = rule * (model_threshold / rules_threshold)
        else:
            mapped = model_threshold + (rule - rules_threshold) * (
                (1.0 - model_threshold) / (1.0 - rules_threshold)
            )
        scores[i] = max(forest, mapped)


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _fill_ranges(
    data: Any,
    samples: Any,
    is_split: Any,
    feature: Any,
    threshold: Any,
    low: Any,
    high: Any,
    depth: int,
) -> None:  # pragma: no cover - compiled
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
                node = 2 * node + 2 if v > threshold[t, node] else 2 * node + 1


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _lay_out(
    offsets: Any,
    left: Any,
    right: Any,
    feats: Any,
    thrs: Any,
    nsamples: Any,
    depth: int,
    width: int,
    feature: Any,
    threshold: Any,
    leaf_code: Any,
) -> None:  # pragma: no cover - compiled
    stack = np.empty((2 * depth + 2, 3), dtype=np.intp)
    for t in range(offsets.shape[0] - 1):
        base = offsets[t]
        stack[0, 0], stack[0, 1], stack[0, 2] = 0, 0, 1
        top = 1
        while top > 0:
            top -= 1
            node, slot, d = stack[top, 0], stack[top, 1], stack[top, 2]
            if left[base + node] == -1:
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
