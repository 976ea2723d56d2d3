"""The engine: telemetry events in, verdicts out. The one place events become verdicts.

The Kafka loop, the HTTP handler and ``evaluate`` all call :meth:`Engine.process`; none
of them scores anything itself. The engine maps events to features (``log1p`` of
latency, input length and errors: all three are heavy-tailed, and in log space "20
times the median" is a fixed distance), hands each route's rows to the
:class:`~sentinel_stream.detector.Detector`, and builds the verdict records, with a rule
explanation for every anomaly.

Verdicts are plain dicts in the shape of :class:`~sentinel_stream.models.Verdict`:
building a pydantic model per event would cost more than scoring it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sentinel_stream.config import Settings
from sentinel_stream.decode import Event, iso_utc_ms
from sentinel_stream.detector import Detector, DetectorParams, Scored
from sentinel_stream.explain import NORMAL_EXPLANATION, explain
from sentinel_stream.refit import InlineRefitter, ProcessRefitter, Refitter
from sentinel_stream.rules import telemetry_rules

Verdict = dict[str, Any]


def now_iso() -> str:
    return iso_utc_ms(int(time.time() * 1000))


def detector_params(settings: Settings) -> DetectorParams:
    return DetectorParams(
        n_features=3,
        history_max=settings.history_max,
        min_history=settings.first_fit_after,
        refit_every=settings.refit_every,
        n_estimators=settings.n_estimators,
        max_samples=settings.max_samples,
        contamination=settings.contamination,
        score_floor=settings.score_floor,
        max_routes=settings.max_routes,
        max_models=settings.max_models,
        seed=settings.seed,
        refit_min_interval_s=settings.refit_min_interval_s if settings.refit_workers > 0 else 0.0,
        model_features=(0, 1),
        learn_margin=settings.learn_margin,
        one_sided=(0, 1),
    )


def make_refitter(workers: int) -> Refitter:
    return ProcessRefitter(workers) if workers > 0 else InlineRefitter()


class Engine:
    """Scores batches of telemetry events; safe to call from more than one thread."""

    def __init__(self, settings: Settings, refitter: Refitter | None = None) -> None:
        self.settings = settings
        self.rules = telemetry_rules(settings.rule_factor, settings.error_burst)
        self.detector = Detector(
            detector_params(settings),
            self.rules,
            refitter if refitter is not None else make_refitter(settings.refit_workers),
        )
        self._cold_reference = self.rules.reference(None)
        self._lock = threading.Lock()

    @property
    def refitter(self) -> Refitter:
        return self.detector.refitter

    def tick(self) -> int:
        """Install finished fits; called between batches and when idle."""
        with self._lock:
            return self.detector.install_completed()

    def process(
        self, events: Sequence[Event], scored_at: str | None = None, learn: bool = True
    ) -> list[Verdict]:
        """One verdict per event, in input order. Each route is scored before it learns."""
        if not events:
            return []
        scored_at = scored_at or now_iso()
        raw = np.array([(e.latency, e.input_length, e.errors) for e in events], dtype=np.float64)
        rows = np.log1p(raw).astype(np.float32)
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            groups.setdefault(e.route, []).append(i)
        out: list[Verdict | None] = [None] * len(events)
        with self._lock:
            self.detector.install_completed()
        for route, idx in groups.items():
            sel = np.asarray(idx)
            # The lock is held per route, not per batch: another door (HTTP) waits for
            # one route's scoring at most, never for a whole Kafka batch.
            with self._lock:
                s = self.detector.score_and_learn(route, rows[sel], learn=learn)
            scores = s.scores.tolist()
            flags = s.flags.tolist()
            warming = s.warming_up
            for j, i in enumerate(idx):
                e = events[i]
                flagged = flags[j]
                src = e.source
                out[i] = {
                    "kind": "verdict",
                    "schema_version": 1,
                    "event_id": e.event_id,
                    "route": route,
                    "event_time": e.event_time,
                    "scored_at": scored_at,
                    "status": "THREAT_DETECTED" if flagged else "OK",
                    "is_anomaly": flagged,
                    "score": scores[j],
                    "threshold": s.threshold,
                    "detector": s.detector,
                    "warming_up": warming,
                    "model_version": s.model_version,
                    "window_size": s.window_size,
                    "explanation": (
                        self._explain(route, raw[i], rows[i], s, scores[j])
                        if flagged
                        else NORMAL_EXPLANATION
                    ),
                    "source": (
                        {"topic": src[0], "partition": src[1], "offset": src[2]}
                        if src is not None
                        else None
                    ),
                }
        return out  # type: ignore[return-value]

    def _explain(
        self,
        route: str,
        raw: npt.NDArray[np.float64],
        row: npt.NDArray[np.float32],
        s: Scored,
        score: float,
    ) -> dict[str, Any]:
        with self._lock:
            weights = self.detector.attribute(route, row)
        return explain(
            raw, row, s.baseline, self._cold_reference, s.detector, score, s.threshold, weights
        )

    def close(self) -> None:
        self.detector.refitter.close()
