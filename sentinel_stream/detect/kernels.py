"""One compiled pass that scores a route's batch: rules, forest, and their combination.

Per route and batch, the readable NumPy path (``RuleScorer.score``,
``CompiledForest.score``, :func:`onto_threshold`) makes a dozen small array operations
whose fixed cost dwarfs the work for the few events a route has in one poll or one HTTP
request. The kernel (``_kernel.c``, compiled when the package is installed) does the same
arithmetic in one call, row by row, without the GIL: for two-feature models (the
service's) it walks four trees in lockstep, so that the CPU overlaps their chains of
dependent loads. ``tests/unit/test_kernels.py`` proves it returns what the NumPy path
returns, bit for bit.

It is C rather than numba because numba brings LLVM into the process (about 130 MiB
resident before the first event, and a compile or cache load at every start) for these
few loops; the README's *Memory* section measures what that saved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sentinel_stream.detect import _kernel
from sentinel_stream.detect.forest import PATH_TABLE, CompiledForest

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
    n_flagged, n_teach, n_tail = _kernel.score_route(
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
