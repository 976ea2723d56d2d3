"""The detector's knobs, with their defaults written once.

:class:`~sentinel_stream.config.Settings` takes its detector defaults from
:data:`DEFAULTS`, and the service builds its parameters with
:meth:`DetectorParams.from_settings`, so a default cannot differ between the two. This
module imports nothing of the service: ``from_settings`` reads any object with the
settings' attributes (:class:`DetectorSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from sentinel_stream.detect.features import FEATURES, INPUT_LENGTH, LATENCY


class DetectorSettings(Protocol):
    """The settings :meth:`DetectorParams.from_settings` reads."""

    @property
    def history_max(self) -> int: ...
    @property
    def first_fit_after(self) -> int: ...
    @property
    def refit_every(self) -> int: ...
    @property
    def n_estimators(self) -> int: ...
    @property
    def max_samples(self) -> int: ...
    @property
    def contamination(self) -> float: ...
    @property
    def score_floor(self) -> float: ...
    @property
    def max_routes(self) -> int: ...
    @property
    def max_models(self) -> int: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def refit_min_interval_s(self) -> float: ...
    @property
    def refit_workers(self) -> int: ...
    @property
    def learn_margin(self) -> float: ...
    @property
    def memory_max_mb(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """What the detector does; each field's effect is documented on the setting that
    sets it (``sentinel-stream`` settings of the same name)."""

    n_features: int = len(FEATURES)
    history_max: int = 1000
    """Rows in a route's recent window."""
    min_history: int = 128
    """Rows before a route's first model (rules score it until then)."""
    refit_every: int = 250
    """Rows admitted since the last fit before a refit is due."""
    n_estimators: int = 100
    max_samples: int = 256
    contamination: float = 0.001
    """The share of normal rows a route's threshold lets through."""
    score_floor: float = 0.68
    """No model threshold goes below this score."""
    max_routes: int = 10_000
    max_models: int = 5_000
    max_bytes: int | None = None
    """What the detector may hold in memory, bytes (routes' windows, samples, models,
    baselines); None: no bound but the counts."""
    drift_events: int | None = None
    """Most events of mostly-flagged traffic before a shift is learnt; default: 5 x
    history_max (a burst of attacks as long as a window must not be learnt as normal by a
    route that has learnt more than that)."""
    drift_min: int = 32
    """Fewest: a route's patience with traffic it flags is five times the rows it has
    learnt, between ``drift_min`` and ``drift_events`` (a young route judged by the rules
    for features of unknown meaning: at most ``min_history / 2``; see
    :mod:`sentinel_stream.detect.detector`, point 3)."""
    long_memory: int | None = None
    """Size of the uniform sample of all history kept beside the window; default:
    history_max; 0 turns it off."""
    live_scores: int | None = None
    """Scores of the route's live traffic kept to calibrate its threshold against
    (:mod:`sentinel_stream.detect.detector`, point 6); default: history_max; 0 turns the
    calibration off (the out-of-bag threshold alone)."""
    seed: int | None = None
    refit_min_interval_s: float = 15.0
    """Least time between two refits of one route: bounds refit CPU when routes are busy."""
    model_features: tuple[int, ...] | None = None
    """Columns the forest sees (default: all)."""
    learn_margin: float = 0.1
    """Rows scored at least this far above the threshold do not teach; rows flagged by
    less still do (see :mod:`sentinel_stream.detect.detector`, point 2)."""
    one_sided: tuple[int, ...] = ()
    """Columns (of the rows, among ``model_features``) where only excess is anomalous:
    below the training median a value scores as typical (see :mod:`.forest`)."""

    @classmethod
    def from_settings(cls, s: DetectorSettings) -> DetectorParams:
        """The service's parameters: telemetry's three features.

        The forest sees latency and input size, not errors: a count that is almost
        always 0 makes every rare single error look as isolated as an attack and drags
        the threshold up past real anomalies; the rules judge errors. Latency and input
        size are one-sided: a fast or small request is not a threat for being so. With
        inline refits (no worker processes) there is no minimum interval between refits,
        so that a run is reproducible whatever the wall clock does.
        """
        return cls(
            n_features=len(FEATURES),
            history_max=s.history_max,
            min_history=s.first_fit_after,
            refit_every=s.refit_every,
            n_estimators=s.n_estimators,
            max_samples=s.max_samples,
            contamination=s.contamination,
            score_floor=s.score_floor,
            max_routes=s.max_routes,
            max_models=s.max_models,
            max_bytes=s.memory_max_mb * MIB,
            seed=s.seed,
            refit_min_interval_s=s.refit_min_interval_s if s.refit_workers > 0 else 0.0,
            model_features=(LATENCY, INPUT_LENGTH),
            learn_margin=s.learn_margin,
            one_sided=(LATENCY, INPUT_LENGTH),
        )

    @classmethod
    def for_unknown_features(cls, n_features: int, s: DetectorSettings) -> DetectorParams:
        """Parameters for rows whose columns mean nothing known (a labelled data set's).

        Every column is a model feature and two-sided: nothing says a low value is
        harmless. No score floor: the floor is a bound for telemetry routes in their
        log space; on other data the out-of-bag tail threshold alone holds
        ``contamination`` (in 3 to 64 dimensions a fixed floor lies above the threshold,
        and flags nothing). Refits have no minimum interval (evaluation is offline).
        """
        return replace(
            cls.from_settings(s),
            n_features=n_features,
            model_features=None,
            one_sided=(),
            score_floor=GENERIC_SCORE_FLOOR,
            refit_min_interval_s=0.0,
        )


MIB = 1 << 20
DEFAULT_MEMORY_MAX_MB = 384
"""The default memory budget of the detector (``SENTINEL_MEMORY_MAX_MB``), sized for a
1 GiB container: beside it, the process at rest, a refit worker, librdkafka's fetch
queue and the allocator's overhead on what the detector holds (the README's *Memory*
gives the figures, measured by ``bench/memory.py``)."""

GENERIC_SCORE_FLOOR = 0.5
"""The least threshold for features of unknown meaning: a score of 0.5 is a row exactly as
isolated as the average row, never an anomaly."""

DEFAULTS = DetectorParams()
"""The defaults, for the settings to take theirs from."""
