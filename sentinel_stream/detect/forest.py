"""IsolationForest models in a form that scores fast and holds only what it needs.

scikit-learn's ``IsolationForest.score_samples`` pays a fixed cost per call whatever the
number of rows (a joblib dispatch over every tree, milliseconds: see the benchmark
report), so a service that scores as events arrive, a few per route per poll, cannot
call it. We fit with scikit-learn (:mod:`.fit`) and score with :class:`CompiledForest`:
the fitted trees' real nodes in a few flat arrays, walked by a compiled kernel
(:mod:`.kernels`, C) on the hot path and by the NumPy walk here when a fit scores
its own training rows. ``tests/unit/test_forest.py`` proves the scores equal sklearn's
bit for bit inside the training ranges, and what the module says beyond them.

This module needs NumPy only: a refit worker, which lays out and scores what it fits,
does not load the service, and the main process, which scores, never loads
scikit-learn.

**Layout.** Only split nodes are stored, every tree's in pre-order, trees end to end:

- ``nodes[k] = (feature, left, right)`` (int16): the split's feature and its children.
  A child that splits is its index among its tree's split nodes (never 0: that is the
  root); a leaf is ``-n``, minus the number of training rows it holds (at least 1). A
  leaf's path length, ``depth + c(n) - 1`` exactly as sklearn computes it, is read from
  one shared table by its depth (known from the walk) and ``n``;
- ``split[k] = (threshold, low, high)`` (float32): the split's threshold, and the range
  it was drawn from (below);
- ``tree_start[t]``: where tree ``t``'s split nodes begin; ``root[t]``: 0, or ``-n`` for
  a tree whose root is a leaf (every row it was fit on was the same).

An isolation tree of 256 rows has about a quarter as many split nodes as the complete
binary tree of its depth limit, which the previous layout stored in full: the bytes per
model, before and after, are in the benchmark report (``bench/forest_layout.py``). The
int16 children bound a tree's rows by 4096 (``max_samples``).

Thresholds are stored as float32 rounded down. sklearn compares float32 inputs with
float64 thresholds; for a float32 ``x``, ``x <= t`` holds exactly when ``x <= rd32(t)``,
so the float32 comparison decides every split the same way.

**Beyond the training range.** An isolation tree draws each split uniformly between the
smallest and largest value its node's samples hold. A point far outside that range is
never separated by the split: it follows the most extreme training points down the
tree and scores like them, so a request 50 times slower than usual scores no higher than
the slowest normal one (the forest "saturates"). With ``low``/``high`` (each split's
range, kept when the forest is compiled with its training rows) the walk asks, at
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
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from sentinel_stream.detect import _kernel

if TYPE_CHECKING:  # the fit side imports scikit-learn; scoring never does
    from sklearn.ensemble import IsolationForest

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I16 = npt.NDArray[np.int16]

N_MAX = 4096
"""The largest ``max_samples`` supported; a leaf holds at most this many rows."""
_DEPTH_MAX = 12
PATH_WIDTH = N_MAX + 1
"""Row length of :data:`PATH_TABLE`: a leaf at depth ``d`` holding ``n`` rows reads
``PATH_TABLE[d * PATH_WIDTH + n]``."""
THRESHOLD, LOW, HIGH = range(3)
"""Columns of :attr:`CompiledForest.split`."""
FEATURE, LEFT, RIGHT = range(3)
"""Columns of :attr:`CompiledForest.nodes`."""
_NO_TREES = np.zeros((0, 0), dtype=np.bool_)
"""``in_bag`` for :meth:`CompiledForest.path_lengths` meaning: every tree scores every row."""


def average_path_length(n: int) -> float:
    """c(n): the mean path length of an unsuccessful BST search among n points (sklearn's)."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + np.euler_gamma) - 2.0 * (n - 1.0) / n


def _path_table() -> F64:
    """table[d * PATH_WIDTH + n] = d + c(n) - 1, with d the sklearn node depth (root = 1)."""
    c = np.array([average_path_length(n) for n in range(PATH_WIDTH)])
    table = np.empty((_DEPTH_MAX + 2) * PATH_WIDTH)
    for d in range(_DEPTH_MAX + 2):
        # Same operation order as sklearn: (depth + c) - 1.0, in float64.
        table[d * PATH_WIDTH : (d + 1) * PATH_WIDTH] = (float(d) + c) - 1.0
    return table


PATH_TABLE: F64 = _path_table()


@dataclass(frozen=True, slots=True, repr=False)
class CompiledForest:
    """A fitted isolation forest, ready to score; immutable so it can be swapped whole.

    Plain arrays and scalars only: a snapshot writes it field by field.
    """

    nodes: I16
    """(split nodes, 3): feature, left child, right child (see the module doc)."""
    split: F32
    """(split nodes, 3): threshold, low, high. ``low``/``high``: the smallest and largest
    value of the split's feature among the node's training rows (``-inf``/``inf`` where
    not known: the split then scores as sklearn's)."""
    root: I16
    tree_start: npt.NDArray[np.int32]
    depth: int
    """The deepest split node's depth (root 0): a walk ends within ``depth + 1`` steps."""
    denominator: float
    n_features: int
    floor: F32
    """Per feature, the value below which it counts as typical (``-inf``: two-sided)."""
    floor_path: float = math.nan
    """The total path length of the row at every floor (typical in every feature): a row
    at or below every floor scores this at once, without a walk. ``nan`` with a
    two-sided feature (no row is at its floor, ``-inf``)."""
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        arrays = (self.nodes, self.split, self.root, self.tree_start, self.floor)
        object.__setattr__(self, "nbytes", int(sum(a.nbytes for a in arrays)))

    def __repr__(self) -> str:
        return f"CompiledForest(trees={self.n_trees}, splits={self.n_splits}, bytes={self.nbytes})"

    @property
    def n_trees(self) -> int:
        return int(self.root.shape[0])

    @property
    def n_splits(self) -> int:
        return int(self.nodes.shape[0])

    def score(self, x: npt.ArrayLike) -> F64:
        """Anomaly scores in (0, 1], higher = more anomalous: sklearn's ``-score_samples``
        (beyond the training ranges, higher: see the module doc)."""
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        if x32.ndim != 2 or x32.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n, {self.n_features}), got {x32.shape}")
        return self.scores_of(self.path_lengths(x32, _NO_TREES))

    def path_lengths(self, x32: F32, in_bag: npt.NDArray[np.bool_]) -> F64:
        """Each row's total path length over all trees; with ``in_bag`` (trees, rows),
        over the trees that did not sample the row, scaled to all trees (all of them if
        every tree sampled it). Summed tree by tree in order, by the kernel
        (``_kernel.c``): the walk of :meth:`tree_path_lengths`, bit for bit."""
        v = np.ascontiguousarray(np.maximum(x32, self.floor), dtype=np.float32)
        n_rows, n_trees = len(v), self.n_trees
        total = np.empty(n_rows)
        bag = np.ascontiguousarray(in_bag, dtype=np.bool_)
        _kernel.path_lengths(
            v, self.nodes, self.split, self.root, self.tree_start, PATH_TABLE, bag, total
        )
        if in_bag.shape[1] == 0:
            return total
        used = n_trees - in_bag.sum(axis=0)
        scaled: F64 = total * n_trees / np.maximum(used, 1)
        everywhere = used == 0
        if everywhere.any():
            scaled[everywhere] = self.path_lengths(x32[everywhere], _NO_TREES)
        return scaled

    def tree_path_lengths(self, v: F32, pairs: npt.NDArray[np.bool_] | None = None) -> F64:
        """The expected path length of each row (features already raised to their
        floors) in each tree: (trees, rows), or, with ``pairs`` (trees, rows), the
        selected pairs in that order. The readable walk, in NumPy, that the kernel's
        must equal (``tests/unit/test_kernels.py``): one level of every (tree, row) pair
        at a time; a pair that reached its leaf waits at a node of its own
        (one past the end) until every pair has."""
        n_rows, n_trees = len(v), self.n_trees
        trees = np.repeat(np.arange(n_trees, dtype=np.int32), n_rows)
        rows = np.tile(np.arange(n_rows, dtype=np.int32), n_trees)
        if pairs is not None:
            chosen = pairs.reshape(-1)
            trees, rows = trees[chosen], rows[chosen]
        n_features = v.shape[1]
        end = self.n_splits  # the waiting node: never beyond its range, its own child
        feature = np.append(self.nodes[:, FEATURE].astype(np.int32), 0)
        links = np.append(self.nodes[:, LEFT:].astype(np.int32).reshape(-1), [0, 0])
        threshold = np.append(self.split[:, THRESHOLD], np.float32(np.inf))
        lows = np.append(self.split[:, LOW], np.float32(-np.inf))
        highs = np.append(self.split[:, HIGH], np.float32(np.inf))
        values = np.ascontiguousarray(v).reshape(-1)
        at = rows * n_features
        out = np.empty(len(trees))
        root = self.root[trees].astype(np.intp)
        leaf_root = root < 0
        out[leaf_root] = PATH_TABLE[PATH_WIDTH - root[leaf_root]]
        base = np.where(leaf_root, end, self.tree_start[trees]).astype(np.int32)
        node = base.copy()
        path = np.zeros(len(trees))
        alive = np.ones(len(trees))
        walking = len(trees) - int(leaf_root.sum())
        level = 0
        while walking:
            x = values[at + feature[node]]
            right = x > threshold[node]
            beyond = np.flatnonzero((x > highs[node]) | (x < lows[node]))
            if len(beyond):
                b = node[beyond]
                xb = x[beyond].astype(np.float64)
                lo, hi = lows[b].astype(np.float64), highs[b].astype(np.float64)
                q = np.where(right[beyond], (xb - hi) / (xb - lo), (lo - xb) / (hi - xb))
                path[beyond] += alive[beyond] * q * (level + 1)
                alive[beyond] *= 1.0 - q
            child = links[2 * node + right]
            level += 1
            done = np.flatnonzero(child < 0)
            if len(done):
                leaf = PATH_TABLE[(level + 1) * PATH_WIDTH - child[done]]
                out[done] = path[done] + alive[done] * leaf
                base[done], child[done] = end, 0
                walking -= len(done)
            node = base + child
        return out if pairs is not None else out.reshape(n_trees, n_rows)

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

        With ``x`` (the rows the model was fit on) and ``samples`` (the rows each tree
        was fit on, :func:`.fit.in_bag_rows`), each split keeps the range it was drawn
        from, and points beyond it score higher than sklearn scores them; without, the
        scores are sklearn's everywhere.
        """
        n_features = int(model.n_features_in_)
        max_samples = int(model._max_samples)
        if max_samples > N_MAX:
            raise ValueError(f"max_samples {max_samples} > {N_MAX} is not supported")
        if getattr(model, "_max_features", n_features) != n_features:
            raise ValueError("feature subsampling (max_features < 1.0) is not supported")
        trees = [est.tree_ for est in model.estimators_]
        forest = _lay_out(
            [t.node_count for t in trees],
            np.concatenate([t.children_left for t in trees]),
            np.concatenate([t.children_right for t in trees]),
            np.concatenate([t.feature for t in trees]),
            _round_down_f32(np.concatenate([t.threshold for t in trees])),
            np.concatenate([t.n_node_samples for t in trees]),
            denominator=len(trees) * average_path_length(max_samples),
            n_features=n_features,
            floor=floor,
        )
        if x is not None:
            if samples is None:
                raise ValueError("split ranges need the rows each tree was fit on")
            forest.fill_ranges(np.asarray(x, dtype=np.float32), samples)
        return forest.with_floor_path()

    def check(self) -> None:
        """Raise ValueError unless the arrays are a forest the kernel can walk safely
        (it does not check bounds): what a restored snapshot must pass."""
        n, trees = self.n_splits, self.n_trees
        shapes = (
            (self.nodes, np.int16, (n, 3)),
            (self.split, np.float32, (n, 3)),
            (self.root, np.int16, (trees,)),
            (self.tree_start, np.int32, (trees + 1,)),
            (self.floor, np.float32, (self.n_features,)),
        )
        for array, dtype, shape in shapes:
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
                raise ValueError("forest arrays of the wrong type or shape")
        starts = self.tree_start.astype(np.intp)
        sizes = np.diff(starts)
        if starts[0] != 0 or starts[-1] != n or (sizes < 0).any():
            raise ValueError("forest trees do not tile its nodes")
        if ((self.root == 0) != (sizes > 0)).any() or (self.root < -N_MAX).any():
            raise ValueError("forest roots do not match its trees")
        if n == 0:
            return
        if not (
            self.nodes[:, FEATURE].min() >= 0 and self.nodes[:, FEATURE].max() < self.n_features
        ):
            raise ValueError("forest splits name features it does not have")
        local = np.arange(n) - np.repeat(starts[:-1], sizes)
        size = np.repeat(sizes, sizes)
        links = self.nodes[:, LEFT:].astype(np.intp)
        inner = links > 0
        # A split child comes after its parent (pre-order), so every walk ends.
        if ((links == 0) | (links < -N_MAX)).any() or (
            inner & ((links <= local[:, None]) | (links >= size[:, None]))
        ).any():
            raise ValueError("forest children point outside their tree")
        if _depth(self.nodes, self.root, self.tree_start) >= _DEPTH_MAX:
            raise ValueError("forest trees deeper than any fit makes")

    def with_floor_path(self) -> CompiledForest:
        """This forest with :attr:`floor_path` set (once its ranges are final)."""
        if not np.isfinite(self.floor).all():
            return self
        path = float(self.path_lengths(self.floor.reshape(1, -1), _NO_TREES)[0])
        return replace(self, floor_path=path)

    def fill_ranges(self, data: F32, samples: npt.NDArray[np.intp]) -> None:
        """Walk each tree's training rows (``samples``: trees x rows, indices into
        ``data``) down it, setting every split's (low, high) to the smallest and largest
        value of its feature that reach it: the range sklearn drew the split from. Done
        once, before the forest is used (it is shared only afterwards)."""
        split, nodes = self.split, self.nodes
        split[:, LOW], split[:, HIGH] = np.inf, -np.inf
        n_trees, per_tree = samples.shape
        trees = np.repeat(np.arange(n_trees), per_tree)
        rows = samples.reshape(-1).astype(np.intp)
        keep = self.root[trees] == 0
        trees, rows = trees[keep], rows[keep]
        base = self.tree_start[trees].astype(np.intp)
        node = base.copy()
        low, high = split[:, LOW], split[:, HIGH]  # views: the updates land in split
        while len(node):
            value = data[rows, nodes[node, FEATURE]]
            np.minimum.at(low, node, value)
            np.maximum.at(high, node, value)
            right = value > split[node, THRESHOLD]
            child = nodes[node, LEFT + right.view(np.int8)].astype(np.intp)
            going = child > 0
            rows, base = rows[going], base[going]
            node = base + child[going]


def _round_down_f32(values: F64) -> F32:
    """Each value as the largest float32 not above it."""
    f = values.astype(np.float32)
    above = f.astype(np.float64) > values
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


def _lay_out(
    node_counts: list[int],
    left: npt.NDArray[Any],
    right: npt.NDArray[Any],
    feature: npt.NDArray[Any],
    threshold: F32,
    n_node_samples: npt.NDArray[Any],
    denominator: float,
    n_features: int,
    floor: npt.ArrayLike | None,
) -> CompiledForest:
    """The compact layout of trees given as sklearn's node arrays, end to end.

    sklearn numbers each tree's nodes in pre-order (a child after its parent), so a
    split node's index among its tree's split nodes keeps that order: the root is 0
    and every split child has a larger index than its parent.
    """
    n_trees = len(node_counts)
    starts = np.zeros(n_trees + 1, dtype=np.intp)
    np.cumsum(node_counts, out=starts[1:])
    is_split = left != -1
    tree_of = np.repeat(np.arange(n_trees), node_counts)
    rank = np.cumsum(is_split) - 1  # each split node's index among all split nodes
    tree_start = np.zeros(n_trees + 1, dtype=np.int32)
    np.cumsum(np.add.reduceat(is_split, starts[:-1]), out=tree_start[1:])
    splits = np.flatnonzero(is_split)
    owner = tree_of[splits]

    def pointer(child: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
        node = starts[owner] + child
        out: npt.NDArray[np.intp] = np.where(
            is_split[node], rank[node] - tree_start[owner], -n_node_samples[node]
        )
        return out

    nodes = np.stack(
        [feature[splits], pointer(left[splits]), pointer(right[splits])], axis=1
    ).astype(np.int16)
    split = np.empty((len(splits), 3), dtype=np.float32)
    split[:, THRESHOLD] = threshold[splits]
    split[:, LOW], split[:, HIGH] = -np.inf, np.inf
    first = starts[:-1]
    root = np.where(is_split[first], 0, -n_node_samples[first]).astype(np.int16)
    floors = np.full(n_features, -np.inf, dtype=np.float32)
    if floor is not None:
        floors[:] = np.asarray(floor, dtype=np.float32)
    return CompiledForest(
        nodes=nodes,
        split=split,
        root=root,
        tree_start=tree_start,
        depth=_depth(nodes, root, tree_start),
        denominator=float(denominator),
        n_features=n_features,
        floor=floors,
    )


def _depth(nodes: I16, root: I16, tree_start: npt.NDArray[np.int32]) -> int:
    """The deepest split node's depth (root 0), by levels over every tree at once."""
    node = tree_start[:-1][root == 0].astype(np.intp)
    base = node.copy()
    depth = -1
    while len(node):
        depth += 1
        child = nodes[node, LEFT:].astype(np.intp)  # (nodes, 2)
        base = np.repeat(base, 2)
        child = child.reshape(-1)
        going = child > 0
        base = base[going]
        node = base + child[going]
    return max(depth, 0)


def from_complete_layout(
    feature: npt.NDArray[np.int8],
    threshold: F32,
    leaf_code: npt.NDArray[np.uint16],
    low: F32,
    high: F32,
    depth: int,
    denominator: float,
    n_features: int,
    floor: F32,
) -> CompiledForest:
    """The compact forest of one laid out in the previous, complete layout (a snapshot
    of version 1): per tree, ``2**depth - 1`` split slots in heap order, a slot under a
    leaf passed through with threshold ``+inf``, and ``2**depth`` leaf codes
    ``d * PATH_WIDTH + n``. The scores are the same (``tests/unit/test_snapshot.py``)."""
    n_trees, n_slots = threshold.shape
    if n_slots != (1 << depth) - 1 or leaf_code.shape != (n_trees, 1 << depth):
        raise ValueError("not a complete layout")
    counts: list[int] = []
    lefts: list[int] = []
    rights: list[int] = []
    feats: list[int] = []
    thrs: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    samples: list[int] = []
    for t in range(n_trees):
        # Pre-order over the heap, numbering nodes as sklearn would (a child after its
        # parent, left subtree first); leaves become nodes with no children.
        order: list[int] = []
        kids: dict[int, tuple[int, int]] = {}
        stack = [(0, 0)]
        while stack:
            slot, level = stack.pop()
            order.append(slot)
            if level < depth and np.isfinite(threshold[t, slot]):
                kids[slot] = (2 * slot + 1, 2 * slot + 2)
                stack.append((2 * slot + 2, level + 1))
                stack.append((2 * slot + 1, level + 1))
        index = {slot: i for i, slot in enumerate(order)}
        for slot in order:
            if slot in kids:
                a, b = kids[slot]
                lefts.append(index[a])
                rights.append(index[b])
                feats.append(int(feature[t, slot]))
                thrs.append(float(threshold[t, slot]))
                lows.append(float(low[t, slot]))
                highs.append(float(high[t, slot]))
                samples.append(0)
            else:
                below = slot
                while below < n_slots:
                    below = 2 * below + 1
                code = int(leaf_code[t, below - n_slots])
                lefts.append(-1)
                rights.append(-1)
                feats.append(-2)
                thrs.append(-2.0)
                lows.append(0.0)
                highs.append(0.0)
                samples.append(code % PATH_WIDTH)
        counts.append(len(order))
    forest = _lay_out(
        counts,
        np.array(lefts),
        np.array(rights),
        np.array(feats),
        np.array(thrs, dtype=np.float32),
        np.array(samples),
        denominator=denominator,
        n_features=n_features,
        floor=floor,
    )
    is_split = np.array(lefts) != -1
    forest.split[:, LOW] = np.array(lows, dtype=np.float32)[is_split]
    forest.split[:, HIGH] = np.array(highs, dtype=np.float32)[is_split]
    return forest.with_floor_path()
