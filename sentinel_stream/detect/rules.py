"""Warm-up rules: what scores a route until it has a model, and must catch the obvious.

A rule compares each feature with the route's typical value in the detector's log space,
where "20 times the median" is a fixed distance, ``log(20)``. Each feature has a factor
and a reference: latency and input size are compared with the route's median, errors
with its 90th percentile (a route that errs on 2 % of requests has p90 = 0, so a burst
of ``error_burst`` errors is ``error_burst + 1`` times that). A route with too little
history is compared with cold defaults, so that a fresh service still flags a 25 s
request with 15 errors.

Features of unknown meaning and scale (a labelled data set's columns) cannot be judged
in log space: a fixed distance is nothing on a feature that spans hundreds and
everything on one that spans a hundredth. Their rules (``relative`` specs) compare with
the largest value the route has learnt, and measure the excess in a unit of the
feature's own, the largest of:

- three times its p10-p90 spread (:data:`GENERIC_FACTOR`);
- ``log2(n_features / 3)`` times how far its largest value lies beyond its median: with
  more features, more chances that some feature of an ordinary row exceeds what was
  seen, so each feature's bar rises with their number (0 for three features, 3.6 for
  36). On heavy tails (log-normal, Pareto) this is what keeps ordinary rows of dozens
  of features from tripping a rule (``tests/unit/test_rules.py`` measures it on 36);
- ``log(20)`` (:data:`GENERIC_LEAST_UNIT`): on a feature that barely varies (a duration
  that is almost always 0) the spreads are nothing, and every other value would be
  flagged, never learnt, and flagged again. On a log-scaled feature it is 20 times the
  largest value.

A feature the route has learnt at one value only (its largest value is its median and
its p10-p90 spread is nothing: a pixel that is almost always blank, a count that is
almost always 0) has no unit at all, and its rule is silent. Its rare values are
ordinary: on a set of 100 such pixel features, 30 % of the normal rows hold one; the
first of them was flagged, so never learnt, and every later one was flagged in turn
(the README's *Detection quality* has the figures). Once a route has a model, the
neighbour grade sees such a value (:func:`grading_units` measures a constant feature in
units of 1) and may flag it; before, it is ranked, never flagged. The forest cannot
split on a feature that never varied in its sample.

The score is ``max_f deviation_f / 2`` in units of each feature's factor, clipped to
[0, 1]: exactly at the factor it is 0.5, the rules' threshold. With ``sum_excess``
(telemetry's rules), the features' excesses over their references are summed instead:
one feature at its factor still scores 0.5, and so do two features each at half of it
(latency and input each about 4.5 times the median). An incident that raises latency,
input size and errors together, mildly on each axis, is as anomalous as one extreme
value, and the forest, which does not see errors, would miss it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from sentinel_stream.detect.baseline import SPREAD_FLOOR, Baseline, quantiles

RULES_THRESHOLD = 0.5
RULE_MIN_HISTORY = 8
"""Events a route needs before rules compare with its own values rather than cold defaults."""
GRADED_NEIGHBOURS = 5
"""The neighbour whose distance grades a row before a route's first model
(:meth:`RuleScorer.graded_scores`)."""
GRADER_BLOCK = 256
"""Rows whose distances to a whole history :func:`fit_grader` takes at once (a block of
256 x 2,000 distances, 4 MiB)."""
GRADE_SLOPE = 0.1
"""What a model's neighbour grade rises by per e-fold of a row's distance over a typical
row's (:func:`neighbour_grade`)."""
GRADED_TYPICAL = 0.45
"""What a row as far from its neighbours as a typical row is graded: what a forest scores
its ordinary rows (:meth:`RuleScorer.graded_scores`)."""


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """How one feature is judged during warm-up."""

    factor: float
    reference: Literal["median", "p90", "p99", "max"]
    cold_typical: float
    """The reference used before a route has history, in the detector's space."""
    relative: bool = False
    """Measure the excess in units of the feature's span times ``factor`` (features of
    unknown scale), not in ``log(factor)`` (see the module doc)."""


@dataclass(frozen=True, slots=True)
class RuleResult:
    scores: npt.NDArray[np.float64]
    deviations: npt.NDArray[np.float64]
    """Per feature, how far above its reference, in units of the feature's factor."""


class RuleScorer:
    """Scores rows against a route's baseline with fixed per-feature factors."""

    def __init__(self, specs: tuple[RuleSpec, ...], sum_excess: bool = False) -> None:
        self.specs = specs
        self.sum_excess = sum_excess
        self.log_factor = np.array([math.log(s.factor) if not s.relative else 1.0 for s in specs])
        """Each feature's unit of deviation without history (and always, unless relative)."""
        self._relative = np.array([s.relative for s in specs])
        self._factor = np.array([s.factor for s in specs])
        # Each feature's bar rises with the number of features (see the module doc).
        self._span_factor = max(math.log2(len(specs) / 3.0), 0.0)
        self._cold = np.array([s.cold_typical for s in specs])
        self._use_p90 = np.array([s.reference == "p90" for s in specs])
        self._use_p99 = np.array([s.reference == "p99" for s in specs])
        self._use_max = np.array([s.reference == "max" for s in specs])

    def reference(self, baseline: Baseline | None) -> npt.NDArray[np.float64]:
        if baseline is None or baseline.count < RULE_MIN_HISTORY:
            return self._cold
        ref = np.where(self._use_p90, baseline.p90, baseline.median)
        ref = np.where(self._use_p99, baseline.p99, ref)
        return np.where(self._use_max, baseline.top, ref)

    def scale(self, baseline: Baseline | None) -> npt.NDArray[np.float64]:
        """Each feature's unit of deviation for a route with this baseline."""
        if baseline is None or baseline.count < RULE_MIN_HISTORY or not self._relative.any():
            return self.log_factor
        unit = np.maximum(
            self._factor * baseline.spread, self._span_factor * (baseline.top - baseline.median)
        )
        unit = np.maximum(unit, GENERIC_LEAST_UNIT)
        # A feature learnt at one value (its largest is its median, its p10-p90 spread
        # nothing) has no unit to measure an excess in: its rule is silent (the module
        # doc). A feature at its largest in most rows but spread below it keeps its rule.
        flat = (baseline.top <= baseline.median) & (baseline.spread <= SPREAD_FLOOR)
        unit = np.where(flat, np.inf, unit)
        return np.where(self._relative, unit, self.log_factor)

    @property
    def graded(self) -> bool:
        """Rows these rules do not flag get a graded score (:meth:`graded_scores`), not 0:
        rules for features of unknown meaning, whose reference is the largest value seen
        (every ordinary row lies below it and would score 0)."""
        return bool(self._relative.any())

    def graded_scores(
        self, rows: npt.NDArray[np.float32], history: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float64] | None:
        """How unusual each row is before a route has a model, below the rules' threshold.

        A row's distance to its ``GRADED_NEIGHBOURS``-th nearest row of the route's history
        (the features in units of their p10-p90 spread), over the same distance of a
        typical history row (``r``), scores ``RULES_THRESHOLD * 9 r**4 / (9 r**4 + 1)``:
        ``GRADED_TYPICAL`` (0.45) for a typical row, 0.49 at 1.4 times its distance, 0.2
        at 0.6 times, never the threshold itself, so nothing more is flagged and nothing
        less is learnt. What it buys is the ranking: an anomaly that arrives before the
        route's first model would otherwise score 0, as low as its most typical row; and
        one unusual only in the combination of its values (no feature far from its
        median) is still far from its neighbours. On the scale of the forest that comes
        after it (a typical row 0.45, as a forest's ordinary rows): a set's scores are
        ranked together, and an anomaly graded below the forest's ordinary rows (as when a
        typical row was graded a quarter of the threshold) ranks under most of them. With
        fewer than
        ``RULE_MIN_HISTORY`` rows learnt, the batch is its own history (its first batch
        is scored against itself); None with fewer rows than that in both.
        """
        own = len(history) < RULE_MIN_HISTORY
        reference = rows if own else history
        if len(reference) < RULE_MIN_HISTORY:
            return None
        median, unit = grading_units(reference)
        ref = (reference.astype(np.float64) - median) / unit
        x = (rows.astype(np.float64) - median) / unit
        k = min(GRADED_NEIGHBOURS, len(ref) - 1)
        among = _kth_distance(ref, ref, k, within=0)
        typical = max(float(np.median(among)), 1e-12)
        r = (among if own else _kth_distance(x, ref, k)) / typical
        # typical / (threshold - typical): 9 for 0.45 of 0.5.
        return _grade(r)

    def fires(self, deviations: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Rows whose deviations (from :meth:`score` or the kernel) reach the rules'
        threshold: anomalous by the rules alone, whatever a model says."""
        if self.sum_excess:
            combined = np.maximum(deviations, 0.0).sum(axis=1)
        else:
            combined = deviations.max(axis=1)
        fired: npt.NDArray[np.bool_] = combined >= 2.0 * RULES_THRESHOLD
        return fired

    def score(
        self,
        rows: npt.NDArray[np.float32],
        reference: npt.NDArray[np.float64],
        scale: npt.NDArray[np.float64] | None = None,
    ) -> RuleResult:
        """Score rows against ``reference`` and ``scale`` (from :meth:`reference` and
        :meth:`scale`, cached by the caller; the scale defaults to ``log_factor``)."""
        unit = self.log_factor if scale is None else scale
        dev = (rows.astype(np.float64) - reference) / unit
        combined = np.maximum(dev, 0.0).sum(axis=1) if self.sum_excess else dev.max(axis=1)
        scores = np.clip(combined / 2.0, 0.0, 1.0)
        return RuleResult(scores=scores, deviations=dev)


def telemetry_rules(rule_factor: float, error_burst: int) -> RuleScorer:
    """The rules for (latency, input_length, errors) in log1p space."""
    return RuleScorer(
        (
            RuleSpec(rule_factor, "median", math.log1p(500.0)),
            RuleSpec(rule_factor, "median", math.log1p(1000.0)),
            RuleSpec(error_burst + 1.0, "p90", 0.0),
        ),
        sum_excess=True,
    )


GENERIC_FACTOR = 3.0
"""Spreads (p10 to p90) beyond the largest value learnt at which a rule for a feature of
unknown meaning fires, at least (see the module doc)."""
GENERIC_LEAST_UNIT = math.log(20.0)
"""The least unit of a rule for a feature of unknown meaning (see the module doc)."""


def generic_rules(n_features: int, factor: float = GENERIC_FACTOR) -> RuleScorer:
    """Rules for features of unknown meaning: flag a value far beyond the largest value
    the route has learnt, in units of the feature's own spread (see the module doc);
    nothing before any history."""
    return RuleScorer(
        tuple(RuleSpec(factor, "max", math.inf, relative=True) for _ in range(n_features))
    )


def grading_units(
    history: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(median, unit) per feature, in which a grade measures distances: the feature's
    p10-p90 spread; where that is 0 (a feature almost always at one value), its full
    range; where that is 0 too, 1.

    Not the baseline's spread, whose least value (0.05) is a bound for telemetry in log
    space: on features of unknown scale it is a fixed distance, nothing on a feature that
    spans hundreds and everything on one that spans a hundredth. Thyroid's hormone levels
    span a few hundredths: with that floor, the features that tell its anomalies apart
    weighed next to nothing in the distance (the README's *Detection quality* has the
    figures)."""
    q = quantiles(history.astype(np.float64), _GRADING_QUANTILES)
    spread = q[2] - q[0]
    span = q[3] - q[4]
    unit = np.where(spread > 0, spread, np.where(span > 0, span, 1.0))
    return q[1], unit


_GRADING_QUANTILES = np.array([0.1, 0.5, 0.9, 1.0, 0.0])


def _grade(r: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The grade of a row ``r`` times as far from its neighbours as a typical row (see
    :meth:`RuleScorer.graded_scores`)."""
    r4 = GRADED_TYPICAL / (RULES_THRESHOLD - GRADED_TYPICAL) * np.square(np.square(r))
    graded: npt.NDArray[np.float64] = RULES_THRESHOLD * r4 / (r4 + 1.0)
    return graded


def _squared_distances(
    x: npt.NDArray[np.float64], ref: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """(rows of ``x``, rows of ``ref``): squared Euclidean distances."""
    r = ref.astype(np.float64, copy=False)
    sq: npt.NDArray[np.float64] = (
        np.square(x).sum(axis=1)[:, None] + np.square(r).sum(axis=1)[None, :] - 2.0 * (x @ r.T)
    )
    return sq


@dataclass(frozen=True, slots=True)
class Grader:
    """Grades rows by their distance to their ``k``-th nearest row of a fixed history
    (:func:`fit_grader`)."""

    median: npt.NDArray[np.float64]
    spread: npt.NDArray[np.float64]
    ref: npt.NDArray[np.float32]
    """The history, in units of its spreads from its median."""
    typical: float
    k: int

    @property
    def nbytes(self) -> int:
        return int(self.ref.nbytes + self.median.nbytes + self.spread.nbytes)

    def grade(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        x = (rows.astype(np.float64) - self.median) / self.spread
        return neighbour_grade(_kth_distance(x, self.ref, self.k) / self.typical)


def neighbour_grade(r: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A model's grade of a row ``r`` times as far from its ``k``-th neighbour as a
    typical row: ``GRADED_TYPICAL`` (0.45, what a forest scores its ordinary rows) up to
    ``r = 1``, then rising by ``GRADE_SLOPE`` per e-fold (0.52 at twice the distance,
    0.68 at ten times), at most 1.

    Not :meth:`RuleScorer.graded_scores`' grade, which stays under the rules' threshold
    and so saturates (every row three times as far as a typical one grades 0.499): beside
    a forest, it left the forest alone to rank the rows far from their neighbours, the
    ones that matter. Logarithmic, as a forest's score is in a row's isolation depth.
    Never below a typical row's: a row nearer its neighbours than most is not the more
    normal for it, and a tight cluster of anomalies that taught (near each other, far
    from everything else) would be pulled under the normal rows' tail, where the forest
    ranks it on top."""
    graded: npt.NDArray[np.float64] = GRADED_TYPICAL + GRADE_SLOPE * np.log(
        np.clip(r, 1.0, math.exp((1.0 - GRADED_TYPICAL) / GRADE_SLOPE))
    )
    return graded


def fit_grader(
    history: npt.NDArray[np.float32],
) -> tuple[Grader, npt.NDArray[np.float64]] | None:
    """What grades rows by their distance to their ``GRADED_NEIGHBOURS``-th nearest row of
    ``history`` (a model's training rows, made where the model is fit), and the grade of
    each row of ``history`` against the others, from which a threshold is read as a
    forest's is from its out-of-bag scores. A typical row's distance is the median of
    the history's own. None with fewer than ``RULE_MIN_HISTORY`` rows. Costs the
    distances between every two rows of the history, ``GRADER_BLOCK`` rows at a time."""
    if len(history) < RULE_MIN_HISTORY:
        return None
    median, unit = grading_units(history)
    ref = (history.astype(np.float64) - median) / unit
    k = min(GRADED_NEIGHBOURS, len(ref) - 1)
    own = np.empty(len(ref))
    for a in range(0, len(ref), GRADER_BLOCK):
        own[a : a + GRADER_BLOCK] = _kth_distance(ref[a : a + GRADER_BLOCK], ref, k, within=a)
    typical = max(float(np.median(own)), 1e-12)
    grader = Grader(median, unit, ref.astype(np.float32), typical, k)
    return grader, neighbour_grade(own / typical)


def _kth_distance(
    x: npt.NDArray[np.float64],
    ref: npt.NDArray[np.floating],
    k: int,
    within: int | None = None,
) -> npt.NDArray[np.float64]:
    """Each row of ``x``'s Euclidean distance to its ``k``-th nearest row of ``ref``
    (``within``: ``x`` is ``ref[within:within + len(x)]``, and a row is not its own
    neighbour)."""
    sq = _squared_distances(x, ref)
    if within is not None:
        rows = np.arange(len(x))
        sq[rows, rows + within] = np.inf
    kth = np.partition(sq, k - 1, axis=1)[:, k - 1]
    out: npt.NDArray[np.float64] = np.sqrt(np.maximum(kth, 0.0))
    return out
