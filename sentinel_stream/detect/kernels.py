"""One compiled pass that scores a route's batch: rules, forest, and their combination.

Per route and batch, the readable NumPy path (``RuleScorer.score``,
``CompiledForest.score``, :func:`onto_threshold`) makes a dozen small array operations
whose fixed cost dwarfs the work for the few events a route has in one poll or one HTTP
request. This kernel does the same arithmetic in one call, row by row.
``tests/unit/test_kernels.py`` proves it returns what the NumPy path returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from sentinel_stream.detect.forest import PATH_TABLE, PATH_WIDTH, CompiledForest

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I16 = npt.NDArray[np.int16]

_NO_FOREST = CompiledForest(
    nodes=np.zeros((0, 3), dtype=np.int16),
    split=np.zeros((0, 3), dtype=np.float32),
    root=np.zeros(0, dtype=np.int16),
    tree_start=np.zeros(1, dtype=np.int32),
    depth=0,
    denominator=0.0,
    n_features=0,
    floor=np.zeros(0, dtype=np.float32),
)
"""A forest of no trees: the kernel then scores by the rules alone."""


@njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator,unused-ignore]
def _split(
    x: float, k: int, nodes: I16, split: F32, level: int, path: float, alive: float
) -> tuple[int, float, float]:  # pragma: no cover - compiled
    """One split of a walk: the child ``x`` goes to, and the path and survival after
    the chance of being cut off here (see :mod:`.forest`)."""
    right = x > split[k, 0]
    child = nodes[k, 1 + np.intp(right)]
    lo = split[k, 1]
    hi = split[k, 2]
    if x > hi or x < lo:  # beyond the split's range (never, inside it)
        x64 = np.float64(x)
        if right:
            q = (x64 - np.float64(hi)) / (x64 - np.float64(lo))
        else:
            q = (np.float64(lo) - x64) / (np.float64(hi) - x64)
        path += alive * q * (level + 1)
        alive *= 1.0 - q
    return child, path, alive


@njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator,unused-ignore]
def tree_path_length(
    v: F32,
    t: int,
    nodes: I16,
    split: F32,
    root: I16,
    tree_start: npt.NDArray[np.int32],
    table: F64,
) -> float:  # pragma: no cover - compiled
    """The expected path length in tree ``t`` of a row whose model features, already
    raised to their floors, are ``v``: :meth:`CompiledForest.tree_path_lengths`, one
    pair at a time."""
    r = root[t]
    if r < 0:
        at_root: float = table[PATH_WIDTH - r]  # the root is a leaf: depth 1
        return at_root
    base = tree_start[t]
    k = base
    level = 0
    path = 0.0
    alive = 1.0
    while True:
        child, path, alive = _split(v[nodes[k, 0]], k, nodes, split, level, path, alive)
        level += 1
        if child < 0:
            leaf: float = table[(level + 1) * PATH_WIDTH - child]
            return path + alive * leaf
        k = base + child


@njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator,unused-ignore]
def _leaf(path: float, alive: float, level: int, child: int, table: F64) -> float:
    """A walk's path length, its leaf reached at ``level`` (``child``: ``-n``)."""
    leaf: float = table[(level + 1) * PATH_WIDTH - child]
    return path + alive * leaf


@njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator,unused-ignore]
def _path_length_2(
    v: F32, nodes: I16, split: F32, root: I16, tree_start: npt.NDArray[np.int32], table: F64
) -> float:  # pragma: no cover - compiled
    """Total path length over every tree of a row of two model features (latency and
    input size: the service's models). Four trees are walked in lockstep, each a step
    per round until all four reach a leaf: their steps do not wait on each other, so the
    CPU overlaps four chains of dependent loads (a walk is bound by the latency of each
    node's load, not by arithmetic; ``bench/forest_layout.py`` measures the gain). The
    two features are held in registers, not read from memory at every split. A group
    with a tree whose root is a leaf, and the last few trees, go one at a time. The
    same arithmetic as :func:`tree_path_length`, summed in tree order: the totals are
    bit for bit its."""
    n_trees = root.shape[0]
    v0, v1 = v[0], v[1]
    total = 0.0
    t = 0
    while t < n_trees:
        if t + 3 < n_trees and min(root[t], root[t + 1], root[t + 2], root[t + 3]) >= 0:
            b0 = tree_start[t]
            b1 = tree_start[t + 1]
            b2 = tree_start[t + 2]
            b3 = tree_start[t + 3]
            c0 = c1 = c2 = c3 = 0
            p0 = p1 = p2 = p3 = 0.0
            a0 = a1 = a2 = a3 = 1.0
            l0 = l1 = l2 = l3 = 0
            # Written out four times, not as a loop over small arrays: scalars stay in
            # registers, and the four walks' loads are what the CPU overlaps.
            while c0 >= 0 or c1 >= 0 or c2 >= 0 or c3 >= 0:
                if c0 >= 0:
                    k0 = b0 + c0
                    c0, p0, a0 = _split(v1 if nodes[k0, 0] else v0, k0, nodes, split, l0, p0, a0)
                    l0 += 1
                if c1 >= 0:
                    k1 = b1 + c1
                    c1, p1, a1 = _split(v1 if nodes[k1, 0] else v0, k1, nodes, split, l1, p1, a1)
                    l1 += 1
                if c2 >= 0:
                    k2 = b2 + c2
                    c2, p2, a2 = _split(v1 if nodes[k2, 0] else v0, k2, nodes, split, l2, p2, a2)
                    l2 += 1
                if c3 >= 0:
                    k3 = b3 + c3
                    c3, p3, a3 = _split(v1 if nodes[k3, 0] else v0, k3, nodes, split, l3, p3, a3)
                    l3 += 1
            total += _leaf(p0, a0, l0, c0, table)
            total += _leaf(p1, a1, l1, c1, table)
            total += _leaf(p2, a2, l2, c2, table)
            total += _leaf(p3, a3, l3, c3, table)
            t += 4
            continue
        total += tree_path_length(v, t, nodes, split, root, tree_start, table)
        t += 1
    return total


def onto_threshold(scores: F64, source: float, target: float) -> F64:
    """Map scores whose threshold is ``source`` onto a scale whose threshold is ``target``.

    Piecewise linear and monotone, with 0 -> 0, source -> target, 1 -> 1, so that a rule
    score and a model score can be compared as one number against one threshold. (The
    readable reference for what the kernel does per row.)
    """
    low = scores * (target / source)
    high = target + (scores - source) * ((1.0 - target) / (1.0 - source))
    mapped: F64 = np.where(scores < source, low, high)
    return mapped


@njit(cache=True, nogil=True, inline="always")  # type: ignore[untyped-decorator,unused-ignore]
def _forest_score(
    x: F32,
    i: int,
    rule: float,
    cols: npt.NDArray[np.intp],
    floor: F32,
    v: F32,
    nodes: I16,
    split: F32,
    root: I16,
    tree_start: npt.NDArray[np.int32],
    table: F64,
    floor_path: float,
    denominator: float,
    model_threshold: float,
    rules_threshold: float,
) -> float:  # pragma: no cover - compiled
    """Row ``i``'s forest score, or its rule score mapped onto the forest's threshold
    if higher (the rules stay on as a floor under the model)."""
    at_floor = True
    for f in range(v.shape[0]):
        v[f] = max(x[i, cols[f]], floor[f])
        at_floor = at_floor and v[f] == floor[f]
    if at_floor:  # typical in every feature (one-sided): known without a walk
        total = floor_path
    elif v.shape[0] == 2:
        total = _path_length_2(v, nodes, split, root, tree_start, table)
    else:
        total = 0.0
        for t in range(root.shape[0]):
            total += tree_path_length(v, t, nodes, split, root, tree_start, table)
    forest = 1.0 if denominator == 0 else 2.0 ** (-(total / denominator))
    if rule < rules_threshold:
        mapped = rule * (model_threshold / rules_threshold)
    else:
        mapped = model_threshold + (rule - rules_threshold) * (
            (1.0 - model_threshold) / (1.0 - rules_threshold)
        )
    score: float = max(forest, mapped)
    return score


@njit(cache=True, nogil=True)  # type: ignore[untyped-decorator,unused-ignore]
def _score_route(
    x: F32,
    reference: F64,
    scale: F64,
    cols: npt.NDArray[np.intp],
    floor: F32,
    nodes: I16,
    split: F32,
    root: I16,
    tree_start: npt.NDArray[np.int32],
    table: F64,
    floor_path: float,
    denominator: float,
    model_threshold: float,
    rules_threshold: float,
    sum_excess: bool,
    learn_margin: float,
    tail_score: float,
    scores: F64,
    deviations: F64,
    flags: npt.NDArray[np.bool_],
    teach: npt.NDArray[np.bool_],
) -> tuple[int, int, int]:  # pragma: no cover - compiled
    n_trees = root.shape[0]
    v = np.empty(floor.shape[0], dtype=np.float32)
    n_flagged = n_teach = n_tail = 0
    for i in range(x.shape[0]):
        worst = -np.inf
        excess = 0.0
        for f in range(x.shape[1]):
            d = (np.float64(x[i, f]) - reference[f]) / scale[f]
            deviations[i, f] = d
            worst = max(worst, d)
            excess += max(d, 0.0)
        combined = excess if sum_excess else worst
        rule = min(max(combined / 2.0, 0.0), 1.0)
        if n_trees == 0:
            score = rule
        else:
            score = _forest_score(
                x, i, rule, cols, floor, v, nodes, split, root, tree_start, table, floor_path,
                denominator, model_threshold, rules_threshold,
            )  # fmt: skip
        scores[i] = score
        # The verdict, and whether the row may teach: not when the rules alone flag it,
        # nor when it scores learn_margin or more above the threshold.
        flagged = score >= model_threshold
        teaches = score < model_threshold + learn_margin and not (combined >= 2.0 * rules_threshold)
        flags[i] = flagged
        teach[i] = teaches
        n_flagged += flagged
        n_teach += teaches
        n_tail += score >= tail_score
    return n_flagged, n_teach, n_tail


@dataclass(slots=True)
class Judged:
    """A route's batch as the kernel judged it (see :func:`judge_route`)."""

    scores: F64
    deviations: F64
    """Per row and feature, how far above the rules' reference, in the rules' unit."""
    flags: npt.NDArray[np.bool_]
    """``score >= threshold``."""
    teach: npt.NDArray[np.bool_]
    """Rows that may teach: below ``threshold + learn_margin`` and not flagged by the
    rules alone."""
    n_flagged: int
    n_teach: int
    n_tail: int
    """Rows scored at or above ``tail_score``."""


def judge_route(
    rows: F32,
    reference: F64,
    scale: F64,
    forest: CompiledForest | None,
    cols: npt.NDArray[np.intp],
    threshold: float,
    rules_threshold: float,
    sum_excess: bool,
    learn_margin: float,
    tail_score: float,
) -> Judged:
    """Score ``rows`` (:func:`score_route`) and judge them in the same pass: the flags
    at ``threshold`` (the forest's, or ``rules_threshold`` without one), the rows that
    may teach, and the counts the detector keeps, so that a route's batch costs one
    kernel call and no further array operations."""
    n = rows.shape[0]
    scores = np.empty(n)
    deviations = np.empty((n, rows.shape[1]))
    flags = np.empty(n, dtype=np.bool_)
    teach = np.empty(n, dtype=np.bool_)
    f = forest if forest is not None else _NO_FOREST
    n_flagged, n_teach, n_tail = _score_route(
        rows,
        reference,
        scale,
        cols,
        f.floor,
        f.nodes,
        f.split,
        f.root,
        f.tree_start,
        PATH_TABLE,
        f.floor_path,
        f.denominator,
        threshold if forest is not None else rules_threshold,
        rules_threshold,
        sum_excess,
        learn_margin,
        tail_score,
        scores,
        deviations,
        flags,
        teach,
    )
    return Judged(scores, deviations, flags, teach, n_flagged, n_teach, n_tail)


def score_route(
    rows: F32,
    reference: F64,
    scale: F64,
    forest: CompiledForest | None,
    cols: npt.NDArray[np.intp],
    model_threshold: float,
    rules_threshold: float,
    sum_excess: bool = False,
) -> tuple[F64, F64]:
    """(scores, rule deviations) of ``rows``: the rules alone without a forest, else
    ``max(forest score, rule score mapped onto the forest's threshold)``. ``reference``
    and ``scale`` are the route's rule reference and unit of deviation per feature."""
    j = judge_route(
        rows, reference, scale, forest, cols, model_threshold, rules_threshold, sum_excess,
        0.0, np.inf,
    )  # fmt: skip
    return j.scores, j.deviations


def _tiny_forest() -> CompiledForest:
    """One tree, one split: enough to compile the kernels (no fit, no scikit-learn)."""
    return CompiledForest(
        nodes=np.array([[0, -1, -1]], dtype=np.int16),
        split=np.array([[0.5, 0.0, 1.0]], dtype=np.float32),
        root=np.zeros(1, dtype=np.int16),
        tree_start=np.array([0, 1], dtype=np.int32),
        depth=0,
        denominator=1.0,
        n_features=1,
        floor=np.zeros(1, dtype=np.float32),
    )


def warm_up_kernel() -> None:
    """Compile (or load from numba's cache) the scoring kernels before the first event
    needs them, so that no verdict waits for a compilation."""
    x = np.zeros((4, 1), dtype=np.float32)
    ones = np.ones(1)
    cols = np.zeros(1, dtype=np.intp)
    for model in (_tiny_forest(), None):
        for sum_excess in (False, True):
            score_route(x, ones, ones, model, cols, 0.7, 0.5, sum_excess)
