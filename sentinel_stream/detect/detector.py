"""The per-route anomaly detector: score a batch, then learn from what was normal.

One :class:`Detector` holds every route's state (window, baseline, model) and is the
only thing that decides whether a row is anomalous. It is pure logic: numbers in,
numbers out, no Kafka and no HTTP, so the service, the HTTP handler and ``evaluate``
share it and it can be tested and benchmarked alone.

The policy, in the order a batch meets it:

1. **Score before learning.** A route's batch is scored by its current model (or by the
   warm-up rules while it has none); only then are the rows added to its window.
2. **Clear anomalies do not teach.** Rows the rules flag, and rows the model scores
   ``learn_margin`` or more above the threshold, stay out of the window, so a burst of
   attacks is not learnt as normal. Rows only the model flags, by a narrower margin,
   still teach: they are mostly the tail of normal
   traffic, and a model fit on traffic cut off at the last threshold learns a narrower
   normal, flags its own tail, and narrows further with every refit (the benchmark
   report measures the effect).
3. **A verdict is trusted as far as the evidence behind it.** If a route keeps flagging
   more than half of its traffic for long, the shift is taken as the new normal and
   every row teaches again. How long is "long" depends on how much the route has
   learnt: the patience is five times the rows it has learnt, at least ``drift_min``
   and at most ``drift_events`` (default five windows). A mature route does not learn
   a burst of attacks as long as a window; a young one does not hold on to what a few
   dozen rows taught it. Cold rules that flag every event of a route whose normal is
   far from the defaults (a 10 s endpoint) give way after a dozen events, and the
   route's own values take over as the rules' reference; a route that began in
   trouble, whose first model was fit on the trouble and now flags all the normal
   traffic that follows, accepts it after a few times as many events as that model was
   fit on, and is refit on it as soon as it has as many new rows as a first fit needs.
   The rules for features of unknown meaning know nothing but what the route has seen:
   a young route (one that has learnt less than a window) with no model is as patient
   with them as with a young model (below), at most about ``min_history / 2`` rows of
   mostly-flagged traffic. A route whose first rows were the trouble has learnt nothing
   else, and those rules, measured against those rows, flag the normal traffic that
   follows as surely as a model fit on them would (a labelled set of 166 features whose
   first 97 rows are its anomalies: the README's *Detection quality*). Telemetry's rules
   know what their features mean (twenty times a route's median latency is anomalous
   however young the route): they keep the patience above, and a burst of attacks they
   flag on a young route is not learnt.
   **A young model that disagrees with most of the traffic is not trusted.** Traffic
   a model flags and the rules do not is either an anomaly or a regime the model has
   not met (on vowels in file order, each new speaker; on a route that began in
   trouble, the normal traffic after it). A mature route (its model fit on a window or
   more) keeps the patience above: a burst of attacks as long as a window is not
   learnt. A young one, whose model was fit on less than a window, has learnt too
   little to hold against most of its traffic. When its model alone has flagged more
   than half of its traffic, averaged over about half the rows a first fit needs
   (``min_history / 2``, 64; all of it flagged, that takes 44 rows, so a burst of 60
   attacks on a young route is flagged as without the distrust, and a new regime is
   not flagged for hundreds of rows), the route is scored as before its first model
   (the rules; for features of unknown meaning, the rows they do not flag graded by
   their neighbours among the route's rows), every row the rules do not flag teaches,
   and it asks for a refit after ``min_history`` admitted rows. Only a model fit after
   that ends the distrust (not one whose fit was already under way). That fit, and
   those after it, weigh the rows since the shift as much as everything before them
   (those rows repeated, at most ``SHIFT_WEIGHT_MAX`` times in all) until they are half
   of the rows a fit is given or fill the window: fit on a hundred new rows beside
   several hundred old, a forest scores the new regime as the unusual part of its world
   for another window. Counted in ``sentinel_models_distrusted_total``.
4. **Long memory.** Beside the recent window, a uniform sample of every admitted row
   that has left it (a reservoir, ``long_memory`` rows); models are fit on both, so
   what normal looked like before a long burst or a slow drift is not forgotten.
5. **Refit off the hot path.** When a route has ``min_history`` rows (first fit) or
   ``refit_every`` new ones since its last fit (and at least ``refit_min_interval_s``
   has passed: a busy route would otherwise ask for a fit every second), it asks the
   :mod:`.refit` scheduler for a fit. The fit runs elsewhere; its result is installed
   whole, with a new version, at the start of a later batch. A route has at most one
   fit queued or running. A mature route (its model fit on a full window) whose traffic
   has not moved, about a tenth of its rows above its model's out-of-bag 90th
   percentile as on the day it was fit, doubles the rows between refits up to
   four windows; traffic that moves brings it back to ``refit_every`` (a fit is the
   costliest thing the detector does, and refitting on the same traffic buys nothing).
   A young route (its model fit on less than a window) whose traffic has moved, more
   than 15 % of it in the model's tail over ``min_history`` rows, is refit after
   ``min_history`` admitted rows: it has learnt too little to hold against its traffic,
   and a shift the rows that teach follow is learnt in half the rows.
   A route that has had a model (one dropped by ``max_models``)
   asks again as a refit, on the refit cadence, not as a first fit at once; a route
   whose fit failed waits ``refit_every`` admitted rows (doubling with each further
   failure, up to 8 times) before it asks again.
6. **The threshold is the route's own, and keeps its promise.** A model's threshold is
   the ``1 - contamination`` quantile of its training rows' out-of-bag scores, read from
   a generalised Pareto tail (:mod:`.threshold`), never below ``score_floor``. Rare
   anomalies that taught (flagged by less than the learn margin, or not at all) sit at
   the top of those scores, and the extrapolated tail can land above everything the
   route's traffic scores: the route then flags nothing, normal or anomaly, far below
   the share ``contamination`` intends. So the route also keeps the scores its live
   traffic got (the last ``live_scores``, whatever model gave them) and the share of
   it that it flagged (over about ``drift_events`` rows, counting a window of unflagged
   rows before the first: a route shows it keeps its promise before it is trusted to,
   and one that began in trouble, flagging much, is not). While that share is below
   ``contamination`` (the promise not kept), it reads the same quantile from the live
   scores (once ``2 x min_history`` are in, again after every quarter of
   ``live_scores``), and the threshold in force is the lower of the two: the share
   flagged comes up to ``contamination``, and what is flagged is the top of the
   traffic. Only then: the lower of two noisy estimates, taken always, flags more than
   the promise on a route that keeps it (KDD99 http). Only lower: a burst of attacks
   raises the live tail, and must not raise the threshold over the attacks that
   follow. What is flagged moves; how a row scores and which rows teach stay the
   model's own.
7. **Bounded, in routes and in bytes.** Every route's bytes (window, long memory,
   model, baseline and a measured per-route overhead: :func:`held_bytes`) are reported
   to the route table as they change, and the table holds at most ``max_routes``
   routes and ``max_bytes`` bytes (:mod:`.routes`): a new route is admitted only if it
   is seen more often than the route it would push out (a flood of one-off routes
   evicts nothing that is seen often); a refused route is scored as a route with no
   state. At most ``max_models`` trained models (the least recently seen route's model
   dropped; the route is scored by rules until it is refit). Evictions, refusals and
   dropped models are counted.
8. **A model of features of unknown meaning scores by its neighbours too** (rules that
   grade: :meth:`.RuleScorer.graded_scores`). A row's score is the mean of the forest's
   and of a grade of its distance to its fifth-nearest training row (features in their
   own p10-p90 units; a row as far as a typical training row, or nearer, grades 0.45,
   rising by 0.1 per e-fold of distance: :func:`.rules.neighbour_grade`), and the
   threshold is read, as the forest's is, from the same mean of the training rows
   (out-of-bag scores, each row's grade against the others: :func:`.refit.fit_route`);
   what the rules flag stays flagged. A forest ranks poorly a row unusual only among
   its neighbours (every value ordinary), and the neighbour distance ranks it well;
   what teaches stays the forest's (``learn_margin`` over its own threshold). The
   grader is made with the model, in the fit, and counted in the route's bytes; it
   costs a distance to each training row (up to 2,000) per scored row.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from sentinel_stream.detect.baseline import Baseline
from sentinel_stream.detect.forest import CompiledForest
from sentinel_stream.detect.kernels import Judged, judge_route, score_route
from sentinel_stream.detect.params import DetectorParams
from sentinel_stream.detect.refit import FitRequest, Refitter, RequestFactory
from sentinel_stream.detect.routes import FrequencySketch, Reason, RouteTable, TableStats
from sentinel_stream.detect.rules import RULE_MIN_HISTORY, RULES_THRESHOLD, Grader, RuleScorer
from sentinel_stream.detect.threshold import TAIL, tail_threshold, threshold_tail
from sentinel_stream.detect.window import FIRST_ROWS, Reservoir, Window

Rows = npt.NDArray[np.float32]
Flags = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
DetectorName = Literal["isolation_forest", "rules"]

SHIFT_WEIGHT_MAX = 8
"""At most this many copies of the rows since a shift in a fit (point 3): 128 rows since
a shift beside 1,000 older ones are fit 8 times (1,024 rows to 1,000); beside 1,900,
still 8 times, less than half. Bounds what a fit is given: at most twice its rows."""
DRIFT_PER_LEARNT = 5
"""A route's patience with traffic it flags is this many times the rows it has learnt (as
a mature route's default ``drift_events`` is five windows)."""
MOVED_TAIL_SHARE = 1.5 * TAIL
"""Traffic has moved when more than this share of the rows scored since the last fit lie
above the model's out-of-bag 90th percentile (a tenth do while it has not)."""
MOVED_MIN_SCORED = 100
"""Fewest rows scored since a young route's last fit before its traffic is said to have
moved: over 20 rows, more than 15 % in a tail that holds a tenth comes one time in eight
by chance; over 100, one in twenty-five."""
MAX_REFIT_SPACING_WINDOWS = 4
"""A mature route whose traffic stays what its model was fit on is refit at least every
this many windows of admitted rows."""
LIVE_READS = 4
"""The live threshold is read again after this share of ``live_scores`` new scores (and
at least ``min_history``)."""
BASELINE_REFRESH = 16
"""During warm-up, the baseline is recomputed every this many admitted rows (after it,
at every ``refit_every``)."""


ROUTE_BYTES = 800
"""What a route holds beside its arrays' data, measured with tracemalloc
(``tests/unit/test_detector.py`` checks the accounting against it): its state, window
and sample objects and their array headers, its name and its place in the table."""
BASELINE_BYTES = 1200
"""A baseline (five arrays of quantiles) and the rules' reference and unit arrays."""
MODEL_BYTES = 900
"""A model's objects and array headers, beside its forest's array data."""
SAMPLER_BYTES = 900
"""The long memory's random generator (from the route's first row that leaves its
window)."""


@dataclass(frozen=True, slots=True)
class RouteModel:
    """A fitted model as installed for a route: swapped whole, never mutated."""

    forest: CompiledForest
    threshold: float
    version: int
    trained_on: int
    fitted_at: float
    tail_score: float = 1.0
    """Out-of-bag 90th percentile of the training scores (see ``RouteState.tail_hits``)."""
    grader: Grader | None = None
    """Grades rows by their distance to the model's training rows (point 8; features of
    unknown meaning); None: the forest's score alone."""
    graded_threshold: float = 1.0
    """With a grader: the threshold of the mean of the forest's score and the grade."""


@dataclass(slots=True)
class RouteState:
    window: Window
    memory: Reservoir | None = None
    model: RouteModel | None = None
    baseline: Baseline | None = None
    rule_reference: npt.NDArray[np.float64] | None = None
    rule_scale: npt.NDArray[np.float64] | None = None
    """Per feature, the rules' unit of deviation (with ``rule_reference``)."""
    fit_pending: bool = False
    admitted_since_fit: int = 0
    admitted_since_baseline: int = 0
    flag_rate: float = 0.0
    disagreement: float = 0.0
    """The share of its traffic the model alone flagged (not the rules), a moving
    average over about ``min_history / 2`` rows (point 3)."""
    distrusted: bool = False
    """The model disagreed with most of the traffic: the route is scored as before its
    first model until a model fit after the distrust is installed."""
    distrusted_at: int = 0
    """``versions`` when the model was distrusted: a fit requested before then (on rows
    from before the shift) does not end the distrust."""
    shift_rows: int | None = None
    """Rows admitted since the model was last distrusted, weighed in fits as much as the
    rest (point 3); None: no shift is being weighed."""
    versions: int = 0
    last_fit_request: float = float("-inf")
    fit_failures: int = 0
    """Consecutive failed fits: each doubles the wait before the next request."""
    tail_hits: int = 0
    """Rows scored since the last fit that scored above the model's ``tail_score``: about
    a tenth of them while the traffic is what the model was fit on."""
    scored_since_fit: int = 0
    refit_backoff: int = 0
    """Refits of a mature route whose traffic has not moved come ``refit_every``
    x 2**refit_backoff admitted rows apart."""
    live: Window | None = None
    """The scores its models gave its live traffic, newest last (point 6)."""
    live_threshold: float = float("inf")
    """The ``1 - contamination`` quantile of ``live`` (inf: too few scores yet)."""
    live_since: int = 0
    """Live scores since ``live_threshold`` was read."""
    live_flagged: float = 0.0
    """The share of its model-scored traffic the route flagged, a moving average over
    about ``drift_events`` rows, over ``live_weight`` (point 6: below ``contamination``,
    the promise is not kept)."""
    live_weight: float = 0.0
    """The weight the average has gathered, from a window of unflagged rows counted
    before the first (``Detector._live_prior``): divided by it, the share is that of
    the rows scored (a route that began in trouble and flags many does not lower its
    threshold), and a route has to show for about a window that it keeps its promise
    before it is trusted to."""
    held: int = 0
    """The bytes the route table accounts for this route (see :func:`held_bytes`)."""
    settled: bool = False
    """Its window and long memory are full: what it holds changes only with its model."""

    @property
    def scoring_model(self) -> RouteModel | None:
        """The model that scores the route: none while it is distrusted (point 3)."""
        return None if self.distrusted else self.model


def held_bytes(state: RouteState) -> int:
    """What a route's state holds in memory: its arrays' data and a measured overhead
    per part. O(1): called whenever a part grows or is replaced, never as a scan."""
    n = ROUTE_BYTES + state.window.nbytes
    memory = state.memory
    if memory is not None:
        n += memory.nbytes + (SAMPLER_BYTES if memory.sampling else 0)
    if state.live is not None:
        n += state.live.nbytes
    if state.baseline is not None:
        n += BASELINE_BYTES
    model = state.model
    if model is not None:
        n += MODEL_BYTES + model.forest.nbytes
        if model.grader is not None:
            n += model.grader.nbytes
    return n


@dataclass(slots=True)
class Scored:
    """One route's batch after scoring: arrays per row, the rest per batch. Not changed
    once made (not frozen: a frozen dataclass costs a microsecond more to make, on every
    route group)."""

    scores: npt.NDArray[np.float64]
    flags: npt.NDArray[np.bool_]
    rule_deviations: npt.NDArray[np.float64]
    threshold: float
    detector: DetectorName
    model_version: int | None
    window_size: int
    baseline: Baseline | None

    @property
    def warming_up(self) -> bool:
        return self.detector == "rules"


@dataclass(slots=True)
class Changes:
    """What changed since the state changelog last looked (see ``Detector.changes``)."""

    rows: set[str] = field(default_factory=set)
    """Routes that admitted rows."""
    models: set[str] = field(default_factory=set)
    """Routes that installed a model."""
    evicted: list[str] = field(default_factory=list)
    """Routes pushed out by the bounds."""
    refused: set[str] = field(default_factory=set)
    """Routes that arrived and were not admitted (the detector holds nothing of them)."""

    def take(self) -> Changes:
        taken = Changes(self.rows, self.models, self.evicted, self.refused)
        self.rows, self.models, self.evicted, self.refused = set(), set(), [], set()
        return taken


@dataclass(slots=True)
class DetectorStats:
    """Counters the metrics module exports; plain ints so this module stays I/O-free."""

    rows_scored: int = 0
    rows_flagged: int = 0
    rows_admitted: int = 0
    routes_evicted: int = 0
    """Routes evicted by either bound (``max_routes``, ``max_bytes``: see the table's
    stats for which)."""
    models_dropped: int = 0
    models_distrusted: int = 0
    """Models that disagreed with most of their route's traffic (point 3)."""
    models_installed: int = 0
    fits_discarded: int = 0
    fits_failed: int = 0
    fits_requested_first: int = 0
    fits_requested_again: int = 0
    """Refits, and fits of routes whose model was dropped or whose fit failed."""
    fit_seconds: list[float] = field(default_factory=list)


class Detector:
    """Every route's window and model, and the policy that scores and learns.

    Example: one route of synthetic telemetry with about 2 % labelled anomalies of five
    kinds, streamed in chunks of 50 as the service polls it. Each chunk is scored, then
    learnt from; fits run inline (the service runs them in a worker process), so with a
    seed the run is the same every time. The warm-up rules score the first chunks; from
    ``min_history`` rows on, the route's own model does, refit as traffic comes:

    >>> import numpy as np
    >>> from sklearn.metrics import roc_auc_score
    >>> from sentinel_stream.detect.features import INPUT_LENGTH, LATENCY, to_rows
    >>> from sentinel_stream.detect.params import DetectorParams
    >>> from sentinel_stream.detect.refit import InlineRefitter
    >>> from sentinel_stream.detect.rules import telemetry_rules
    >>> from sentinel_stream.tools.synthetic import generate
    >>> items = list(generate(4000, n_routes=1, anomaly_share=0.02, seed=3))
    >>> rows = to_rows([(i.event["latency"], i.event["input_length"], i.event["errors"])
    ...                 for i in items])
    >>> labels = np.array([i.is_anomaly for i in items])
    >>> params = DetectorParams(model_features=(LATENCY, INPUT_LENGTH),
    ...                         one_sided=(LATENCY, INPUT_LENGTH), refit_min_interval_s=0, seed=1)
    >>> detector = Detector(params, telemetry_rules(20.0, 5), InlineRefitter())
    >>> scored = []
    >>> for start in range(0, len(rows), 50):
    ...     _ = detector.install_completed()
    ...     scored.append(detector.score_and_learn("/api", rows[start : start + 50]))
    >>> [(s.detector, s.model_version) for s in scored[2:4]]
    [('rules', None), ('isolation_forest', 1)]
    >>> scored[-1].detector, scored[-1].model_version
    ('isolation_forest', 11)
    >>> scores = np.concatenate([s.scores for s in scored])
    >>> flags = np.concatenate([s.flags for s in scored])
    >>> print(f"ROC AUC {roc_auc_score(labels, scores):.3f}, "
    ...       f"false-positive rate {flags[~labels].mean():.4f}")
    ROC AUC 0.982, false-positive rate 0.0000

    A route whose normal is far from the rules' cold defaults (12 s where they expect half
    a second) is flagged at first; having learnt nothing, it accepts its own traffic after
    a few dozen events, and from then on the rules compare with its median:

    >>> rng = np.random.default_rng(0)
    >>> slow = to_rows([(rng.lognormal(np.log(12000), 0.2), 400, 0) for _ in range(300)])
    >>> flags = np.concatenate([detector.score_and_learn("/slow", slow[i : i + 5]).flags
    ...                         for i in range(0, 300, 5)])
    >>> int(flags[:40].sum()), int(flags[40:].sum())
    (26, 0)
    """

    def __init__(self, params: DetectorParams, rules: RuleScorer, refitter: Refitter) -> None:
        self.params = params
        self.rules = rules
        self.refitter = refitter
        self.stats = DetectorStats()
        self.changes: Changes | None = None
        """Set by whoever keeps the state changelog; None: nothing is recorded."""
        self._new_bytes = ROUTE_BYTES + BASELINE_BYTES + FIRST_ROWS * params.n_features * 4
        """What a new route holds after its first batch: the room admission asks for."""
        # The sketch counts as many routes as the table can hold (by count, or by bytes
        # at their smallest), and the budget holds the sketch too (4 bytes a route).
        held_at_most = params.max_routes
        if params.max_bytes is not None:
            held_at_most = min(held_at_most, max(params.max_bytes // self._new_bytes, 1))
        sketch = FrequencySketch(held_at_most)
        budget = None if params.max_bytes is None else max(params.max_bytes - sketch.nbytes, 0)
        self._routes: RouteTable[RouteState] = RouteTable(
            params.max_routes, budget, self._new_state, self._on_evict, sketch
        )
        self._models: OrderedDict[str, None] = OrderedDict()
        self._drift_max = max(params.drift_events or 5 * params.history_max, 1)
        self._live_prior = 1.0 - (1.0 - 1.0 / self._drift_max) ** params.history_max
        """The weight of a window of unflagged rows in the live share's average (see
        ``RouteState.live_weight``)."""
        self._cold = self._new_state("")
        """The state a route the table does not hold is scored with (never learns)."""
        cols = params.model_features
        self._cols = np.asarray(
            cols if cols is not None else range(params.n_features), dtype=np.intp
        )
        # Fits see the model columns only: one-sided columns as positions among them.
        self._one_sided = tuple(self._cols.tolist().index(c) for c in params.one_sided)
        self._least_wait = min(params.min_history, params.refit_every)
        """No refit is due sooner than this many admitted rows (see :meth:`_refit_wait`)."""
        self._drift_min = max(min(params.drift_min, self._drift_max), 1)
        self._disagreement_span = max(self._drift_min, params.min_history // 2)
        """Rows a young model's disagreement is averaged over (point 3)."""
        self._graded = rules.graded
        """Rows the rules do not flag score by :meth:`RuleScorer.graded_scores` until the
        route's first model (features of unknown meaning)."""

    # -- state -------------------------------------------------------------------------

    def _new_state(self, route: str) -> RouteState:
        p = self.params
        size = p.history_max if p.long_memory is None else p.long_memory
        seed = None if p.seed is None else (p.seed + zlib.crc32(route.encode())) % 2**32
        live = p.history_max if p.live_scores is None else p.live_scores
        return RouteState(
            window=Window(p.history_max, p.n_features),
            memory=Reservoir(size, p.n_features, seed) if size > 0 else None,
            live=Window(live, 1) if live > 0 else None,
            live_weight=self._live_prior,
        )

    def _on_evict(self, route: str, state: RouteState, reason: Reason) -> None:
        self.stats.routes_evicted += 1
        self._models.pop(route, None)
        if self.changes is not None:
            self.changes.evicted.append(route)

    def new_state(self, route: str) -> RouteState:
        """A fresh state for ``route`` (not yet in the table): what a restore fills in."""
        return self._new_state(route)

    def adopt(self, route: str, state: RouteState) -> None:
        """Put a restored state in the table, replacing the route's; what is derived
        (the rule reference, a baseline the state lacks) is derived again."""
        self.drop([route])
        if state.baseline is None:
            self._refresh_baseline(state)
        state.rule_reference = None  # derived from the baseline at the next score
        state.held = held_bytes(state)
        self._routes.put(route, state)  # always held: room is made by the policy
        if state.model is not None:
            self._models[route] = None
            self._trim_models()

    def drop(self, routes: Iterable[str]) -> None:
        """Forget routes (their partition moved to another member); not counted as
        evictions and not reported as changes."""
        for route in routes:
            if self._routes.remove(route) is not None:
                self._models.pop(route, None)

    @property
    def routes_tracked(self) -> int:
        return len(self._routes)

    @property
    def models_trained(self) -> int:
        return len(self._models)

    @property
    def memory_bytes(self) -> int:
        """Bytes the detector holds: every route's (:func:`held_bytes`) and the table's
        frequency sketch."""
        return self._routes.nbytes + self._routes.sketch.nbytes

    @property
    def table_stats(self) -> TableStats:
        """Evictions by bound and refusals (see :mod:`.routes`)."""
        return self._routes.stats

    def rows_in_windows(self) -> int:
        """Events held in all route windows (the v1 API's ``history_size``)."""
        return sum(len(s.window) for _, s in self._routes.oldest_first())

    def route_state(self, route: str) -> RouteState | None:
        return self._routes.get(route)

    # -- scoring -----------------------------------------------------------------------

    def score_and_learn(self, route: str, rows: Rows, learn: bool = True) -> Scored:
        """Score ``rows`` (one route's, in arrival order), then learn the normal ones.

        Without ``learn`` (a door that only asks, HTTP) an unknown route is scored as a
        cold one and takes no place in the table: asking about a flood of new routes
        evicts nothing. With ``learn``, a new route the table refuses (it is full of
        routes seen more often: :mod:`.routes`) is scored the same way.
        """
        found = self._routes.touch(route, self._new_bytes) if learn else self._routes.get(route)
        if found is None:
            state = self._cold
            if learn:
                learn = False
                if self.changes is not None:
                    self.changes.refused.add(route)
        else:
            state = found
        model = state.scoring_model
        if state.rule_reference is None:
            self._set_rule_reference(state)
        assert state.rule_reference is not None and state.rule_scale is not None
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        # One kernel call scores the rows, flags them and says which may teach (rows
        # the rules flag, or scored learn_margin above the threshold, do not).
        if model is not None:
            if learn:
                self._models.move_to_end(route)
            j = judge_route(
                rows, state.rule_reference, state.rule_scale, model.forest, self._cols,
                model.threshold, RULES_THRESHOLD, self.rules.sum_excess,
                self.params.learn_margin, model.tail_score,
            )  # fmt: skip
            scores, threshold = j.scores, model.threshold
            fired = None
            if model.grader is not None:
                # Point 8: the forest's score and the neighbour grade together, against
                # the threshold read from both; what the rules flag stays flagged.
                fired = self.rules.fires(j.deviations)
                threshold = model.graded_threshold
                scores = self._with_grade(model.grader, rows, j.scores)
                scores = np.where(fired, np.maximum(scores, threshold), scores)
                j.flags = scores >= threshold
                j.n_flagged = int(np.count_nonzero(j.flags))
            # The live calibration (point 6) moves what is flagged, not how a row scores
            # nor what teaches: those stay the model's own.
            flags, n_flagged = j.flags, j.n_flagged
            if state.live_threshold < threshold and self._promise_unkept(state):
                threshold = state.live_threshold
                flags = scores >= threshold
                n_flagged = int(np.count_nonzero(flags))
            scored = Scored(
                scores, flags, j.deviations, threshold, "isolation_forest", model.version,
                len(state.window), state.baseline,
            )  # fmt: skip
        else:
            threshold = RULES_THRESHOLD
            j = judge_route(
                rows, state.rule_reference, state.rule_scale, None, self._cols, threshold,
                RULES_THRESHOLD, self.rules.sum_excess, self.params.learn_margin, np.inf,
            )  # fmt: skip
            scores, n_flagged = j.scores, j.n_flagged
            if self._graded:
                graded = self.rules.graded_scores(rows, state.window.snapshot())
                if graded is not None:
                    scores = np.where(j.flags, scores, graded)
            scored = Scored(
                scores, j.flags, j.deviations, threshold, "rules", None, len(state.window),
                state.baseline,
            )  # fmt: skip
        n = len(rows)
        self.stats.rows_scored += n
        self.stats.rows_flagged += n_flagged
        if learn:
            if model is not None:
                state.tail_hits += j.n_tail
                state.scored_since_fit += n
                self._calibrate(route, state, scores, n_flagged)
                self._weigh_disagreement(route, state, model, j, fired)
            self._learn(route, state, rows, j)
        return scored

    def _with_grade(self, grader: Grader, rows: Rows, forest_scores: F64) -> F64:
        """The mean of the forest's scores and the neighbour grade of ``rows`` (point 8)."""
        seen = rows if self.params.model_features is None else rows[:, self._cols]
        blended: F64 = 0.5 * (forest_scores + grader.grade(seen))
        return blended

    def _weigh_disagreement(
        self, route: str, state: RouteState, model: RouteModel, j: Judged, fired: Flags | None
    ) -> None:
        """Average the share of the batch only a young model flagged (not the rules);
        past a half, distrust the model (the module doc, point 3). On traffic the model
        agrees with (no flag, and nothing to decay) and on a mature route it costs
        nothing."""
        if model.trained_on >= self.params.history_max:
            return
        n = len(j.scores)
        if j.n_flagged:
            if fired is None:
                fired = self.rules.fires(j.deviations)
            alone = int(np.count_nonzero(j.flags & ~fired))
        elif state.disagreement == 0.0:
            return
        else:
            alone = 0
        keep = (1.0 - 1.0 / self._disagreement_span) ** n
        state.disagreement = state.disagreement * keep + (1.0 - keep) * alone / n
        if state.disagreement > 0.5:
            state.distrusted = True
            state.distrusted_at = state.versions
            state.disagreement = 0.0
            state.shift_rows = 0
            state.admitted_since_fit = 0  # refit after min_history rows of the new traffic
            self.stats.models_distrusted += 1
            if self.changes is not None:
                # What scores the route changed, as with an install: the changelog (and
                # the HTTP process's replica) must not wait for the next admitted row.
                self.changes.models.add(route)

    def _calibrate(self, route: str, state: RouteState, scores: F64, flagged: int) -> None:
        """Keep the live scores and the share flagged; while that share is below the
        contamination, read the threshold the scores call for, every ``LIVE_READS``-th
        of ``live_scores`` (the module doc, point 6). A read costs about 0.3 ms: on a
        route that keeps its promise, none is made."""
        live = state.live
        if live is None:
            return
        keep = (1.0 - 1.0 / self._drift_max) ** len(scores)
        state.live_flagged = state.live_flagged * keep + (1.0 - keep) * flagged / len(scores)
        state.live_weight = state.live_weight * keep + (1.0 - keep)
        grew = not live.full
        live.extend(scores.astype(np.float32).reshape(-1, 1))
        if grew:
            held = held_bytes(state)
            if held != state.held:
                self._routes.resize(route, held)
        state.live_since += len(scores)
        p = self.params
        if (
            not self._promise_unkept(state)  # nothing to read
            or state.live_since < max(p.min_history, live.capacity // LIVE_READS)
            or len(live) < 2 * p.min_history
        ):
            return
        state.live_since = 0
        seen = live.snapshot()[:, 0].astype(np.float64)
        value = tail_threshold(seen, p.contamination, threshold_tail(len(seen)))
        state.live_threshold = min(max(value, p.score_floor), 1.0)

    def _promise_unkept(self, state: RouteState) -> bool:
        """The route has flagged less of its traffic than its contamination (point 6)."""
        return state.live_flagged < self.params.contamination * state.live_weight

    def _score(self, state: RouteState, rows: Rows) -> tuple[F64, F64]:
        """(scores, rule deviations) in one compiled pass: the rules, the route's forest
        if it has one, and the rules kept on as a floor under it (the obvious is flagged
        whatever the forest says), see :mod:`.kernels`."""
        assert state.rule_reference is not None and state.rule_scale is not None
        model = state.scoring_model
        return score_route(
            rows,
            state.rule_reference,
            state.rule_scale,
            model.forest if model is not None else None,
            self._cols,
            model.threshold if model is not None else RULES_THRESHOLD,
            RULES_THRESHOLD,
            self.rules.sum_excess,
        )

    def _learn(self, route: str, state: RouteState, rows: Rows, j: Judged) -> None:
        admitted = self._admit(state, rows, j)
        if admitted == 0:
            return
        if self.changes is not None:
            self.changes.rows.add(route)
        self._refresh_baseline(state)
        if not state.settled:  # its window or sample still grows
            held = held_bytes(state)
            if held != state.held:
                self._routes.resize(route, held)  # may evict other routes (the budget)
            state.settled = state.window.full and (state.memory is None or state.memory.full)
        self._request_fit_if_due(route, state)

    def _admit(self, state: RouteState, rows: Rows, j: Judged) -> int:
        """Add the rows that teach to the window (what leaves it, to the long memory).

        The flag rate is a moving average over five times as many rows as the route has
        learnt (at least ``drift_min``, at most ``drift_events``; a young route judged by
        the rules for features of unknown meaning, at most ``min_history / 2``): once
        more than half of its traffic has been flagged for that long, the shift is the
        new normal and every row teaches again (the module doc, point 3).
        """
        n = len(rows)
        patience = min(max(DRIFT_PER_LEARNT * state.window.total, self._drift_min), self._drift_max)
        if self._graded and state.model is None and state.window.total < self.params.history_max:
            # Rules that know only what a young route has seen hold against its traffic
            # no longer than a young model (the module doc, point 3).
            patience = min(patience, self._disagreement_span)
        keep = (1.0 - 1.0 / patience) ** n
        state.flag_rate = state.flag_rate * keep + (1.0 - keep) * (j.n_flagged / n)
        if j.n_teach == n or state.flag_rate > 0.5:
            admitted = rows
        elif j.n_teach == 0:
            return 0
        else:
            admitted = rows[j.teach]
        evicted = state.window.extend(admitted)
        if state.memory is not None and len(evicted):
            state.memory.extend(evicted)
        k = len(admitted)
        if state.shift_rows is not None:
            state.shift_rows += k
        self.stats.rows_admitted += k
        state.admitted_since_fit += k
        state.admitted_since_baseline += k
        return k

    def _refresh_baseline(self, state: RouteState) -> None:
        """Recompute what is typical: often while warming up (the rules depend on it),
        at the refit cadence once a model exists."""
        warming = state.model is None or state.distrusted
        refresh = BASELINE_REFRESH if warming else self.params.refit_every
        young = state.baseline is None or state.baseline.count < RULE_MIN_HISTORY
        if not young and state.admitted_since_baseline < refresh:
            return
        rows_seen = state.window.snapshot()
        if state.memory is not None and state.model is not None:
            rows_seen = np.concatenate((rows_seen, state.memory.snapshot()))
        state.baseline = Baseline.of(rows_seen)
        self._set_rule_reference(state)
        state.admitted_since_baseline = 0

    def _set_rule_reference(self, state: RouteState) -> None:
        state.rule_reference = self.rules.reference(state.baseline)
        state.rule_scale = self.rules.scale(state.baseline)

    def _request_fit_if_due(self, route: str, state: RouteState) -> None:
        """Ask for a first fit at ``min_history`` rows, a refit every ``refit_every``
        admitted rows (no sooner than ``refit_min_interval_s``); one at a time."""
        if state.fit_pending:
            return
        p = self.params
        # A first fit: the route has never asked. Anything else (a refit, a route whose
        # model max_models dropped, a fit that failed) waits for the refit cadence.
        first = state.versions == 0
        if first:
            due = len(state.window) >= p.min_history
        elif state.admitted_since_fit < self._least_wait:
            return  # no refit comes sooner (and nothing in _refit_wait changes before)
        else:
            due = state.admitted_since_fit >= self._refit_wait(state)
            if due and p.refit_min_interval_s > 0:
                due = time.monotonic() - state.last_fit_request >= p.refit_min_interval_s
        if not due:
            return
        if p.refit_min_interval_s > 0:
            state.last_fit_request = time.monotonic()
        state.fit_pending = True
        state.versions += 1
        if first:
            self.stats.fits_requested_first += 1
        else:
            self.stats.fits_requested_again += 1
            model = state.model
            if model is not None and model.trained_on >= p.history_max:
                # The next refit waits twice as long, unless the traffic moves by then.
                room = max(p.refit_every, MAX_REFIT_SPACING_WINDOWS * p.history_max)
                if p.refit_every << (state.refit_backoff + 1) <= room:
                    state.refit_backoff += 1
        self.refitter.submit(route, first, self._request_for(route, state))

    def _refit_wait(self, state: RouteState) -> int:
        """Admitted rows between two fits of a route that has asked before."""
        p = self.params
        if state.fit_failures:
            return int(p.refit_every << min(state.fit_failures - 1, 3))
        if state.flag_rate > 0.5 or state.distrusted:
            # A model that disagrees with most of the traffic it sees (a shift being
            # accepted, point 3) is replaced as soon as a first fit would be.
            return p.min_history
        model = state.model
        if model is None:
            return p.refit_every  # a dropped model: the refit cadence, not a first fit's
        if model.trained_on < p.history_max:
            # A young route (its model fit on less than a window) whose traffic moved is
            # refit as soon as a first fit would be: what it has learnt is too little to
            # hold against the traffic (as its patience, point 3). A mature route's is not
            # hurried: a burst of attacks moves its traffic too.
            return min(p.min_history, p.refit_every) if self._moved(state) else p.refit_every
        # Traffic that moved puts more than a tenth of its rows in the model's tail.
        moved = state.tail_hits > MOVED_TAIL_SHARE * state.scored_since_fit
        if moved and state.admitted_since_fit >= p.refit_every:
            state.refit_backoff = 0
        return p.refit_every << state.refit_backoff

    def _moved(self, state: RouteState) -> bool:
        """A young route's traffic scored since its last fit has moved from what its model
        was fit on: more than a tenth of it (``MOVED_TAIL_SHARE``) in the model's tail,
        over at least ``min_history`` and ``MOVED_MIN_SCORED`` rows. Not said of a model
        fit on fewer rows than a tree samples (``max_samples``), or than twice
        ``min_history``: its trees sample half of its rows (:mod:`.refit`), its
        out-of-bag tail is too low, and traffic that has not moved lies in it more often
        than one time in ten (a quarter of the time for a first model of 128 rows)."""
        model = state.model
        p = self.params
        return (
            model is not None
            and model.trained_on >= max(2 * p.min_history, p.max_samples)
            and state.scored_since_fit >= max(p.min_history, MOVED_MIN_SCORED)
            and state.tail_hits > MOVED_TAIL_SHARE * state.scored_since_fit
        )

    def _request_for(self, route: str, state: RouteState) -> RequestFactory:
        params = self.params
        version = state.versions
        seed = None
        if params.seed is not None:
            seed = (params.seed * 1_000_003 + zlib.crc32(route.encode()) + version) % 2**32

        def make() -> FitRequest | None:
            # Called when a worker is free: the freshest window, not the one at request time.
            if self._routes.get(route) is not state:
                return None
            state.admitted_since_fit = 0
            rows = state.window.snapshot()
            if state.memory is not None:
                # The recent window and a sample of what came before it: older normal
                # behaviour is not forgotten.
                rows = np.concatenate((rows, state.memory.snapshot()))
            rows, weighted, copies = self._weigh_shift(state, rows)
            return FitRequest(
                route=route,
                token=version,
                rows=rows if params.model_features is None else rows[:, params.model_features],
                n_estimators=params.n_estimators,
                max_samples=params.max_samples,
                contamination=params.contamination,
                score_floor=params.score_floor,
                seed=seed,
                one_sided=self._one_sided,
                graded=self._graded,
                weighted=weighted,
                copies=copies,
            )

        return make

    @staticmethod
    def _weigh_shift(state: RouteState, rows: Rows) -> tuple[Rows, int, int]:
        """(rows, weighted, copies): the training rows (the window, then the long
        memory), and how many times the forest is to see the rows since a shift, so
        that a new regime weighs as much as everything before it (the module doc,
        point 3). Those rows are moved to the end: the fit, in a worker, repeats them by
        slicing the end, and the request carries each row once. Once they are half of
        the rows or fill the window, the shift is no longer weighed."""
        since = state.shift_rows
        if since is None:
            return rows, 0, 1
        if 2 * since >= len(rows) or since >= len(state.window):
            state.shift_rows = None
            return rows, 0, 1
        if since == 0:
            return rows, 0, 1
        copies = min(-(-(len(rows) - since) // since), SHIFT_WEIGHT_MAX)
        end = len(state.window)
        moved = np.concatenate((rows[: end - since], rows[end:], rows[end - since : end]))
        return moved, since, copies

    def attribute(self, route: str, row: Rows) -> npt.NDArray[np.float64] | None:
        """How much each feature made ``row`` anomalous, by the scorer that judged it.

        For each feature, the score is recomputed with that feature alone set to the
        route's typical value (its median; the cold reference without history), by the
        same compiled scorer (forest and rules). The drop in score is the feature's
        share: a feature that did not matter to the verdict gets 0. Returns None when
        no single feature lowers the score (an anomaly only the combination makes).
        """
        state = self._routes.get(route)
        if state is None or state.rule_reference is None:
            return None
        typical = state.baseline.median if state.baseline is not None else state.rule_reference
        n = row.shape[-1]
        variants = np.repeat(np.asarray(row, dtype=np.float32).reshape(1, n), n + 1, axis=0)
        for f in range(n):
            variants[f + 1, f] = typical[f]
        scores, _ = self._score(state, variants)
        model = state.scoring_model
        if model is not None and model.grader is not None:
            # Scored as the row was (point 8): a value the forest cannot see (a feature
            # constant in its sample) is the grade's.
            scores = self._with_grade(model.grader, variants, scores)
        drop = np.maximum(scores[0] - scores[1:], 0.0)
        total = float(drop.sum())
        return drop / total if total > 0 else None

    # -- models ------------------------------------------------------------------------

    def install_completed(self) -> int:
        """Swap in every model whose fit has finished; returns how many were installed."""
        installed = 0
        for result in self.refitter.collect():
            state = self._routes.get(result.route)
            if result.forest is None or state is None or state.versions != result.token:
                self.stats.fits_discarded += 1
                if state is not None and state.versions == result.token:
                    state.fit_pending = False
                    if result.forest is None:
                        state.fit_failures += 1
                        state.admitted_since_fit = 0
                        self.stats.fits_failed += 1
                continue
            state.fit_failures = 0
            if state.distrusted and result.token > state.distrusted_at:
                state.distrusted = False
                state.disagreement = 0.0  # the model fit on the shift starts afresh
            state.model = RouteModel(
                forest=result.forest,
                threshold=result.threshold,
                version=result.token,
                trained_on=result.trained_on,
                fitted_at=time.monotonic(),
                tail_score=result.tail_score,
                grader=result.grader,
                graded_threshold=result.graded_threshold,
            )
            state.tail_hits = state.scored_since_fit = 0
            state.fit_pending = False
            self.stats.fit_seconds.append(result.seconds)
            self.stats.models_installed += 1
            installed += 1
            self._models[result.route] = None
            self._models.move_to_end(result.route)
            if self.changes is not None:
                self.changes.models.add(result.route)
            self._routes.resize(result.route, held_bytes(state))
            self._trim_models()
        return installed

    def _trim_models(self) -> None:
        while len(self._models) > self.params.max_models:
            old, _ = self._models.popitem(last=False)
            old_state = self._routes.get(old)
            if old_state is not None:
                old_state.model = None
                self._routes.resize(old, held_bytes(old_state))
            self.stats.models_dropped += 1

    def model_bytes(self) -> int:
        """Bytes of the installed models' forests (a scan of the models: for scrapes)."""
        return sum(
            s.model.forest.nbytes
            for r in self._models
            if (s := self._routes.get(r)) is not None and s.model is not None
        )

    def oldest_model_age(self, now: float | None = None) -> float:
        """Seconds since the oldest installed model was fitted (0 with none)."""
        now = time.monotonic() if now is None else now
        ages = [
            now - s.model.fitted_at
            for r in self._models
            if (s := self._routes.get(r)) is not None and s.model is not None
        ]
        return max(ages, default=0.0)
