"""The engine: telemetry events in, verdicts out. The one place events become verdicts.

The Kafka loop, the HTTP handler and ``evaluate`` all call :meth:`Engine.process`; none
of them scores anything itself, and none of them knows the others. The engine maps
events to the detector's features (:mod:`sentinel_stream.detect.features`), hands each
route's rows to the :class:`~sentinel_stream.detect.Detector`, and builds the verdict
records (:func:`~sentinel_stream.engine.verdict.build_verdict`), with a rule explanation
for every anomaly.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson

from sentinel_stream.clock import now_iso
from sentinel_stream.config import Settings
from sentinel_stream.detect.detector import Detector, Scored
from sentinel_stream.detect.features import to_rows
from sentinel_stream.detect.params import DetectorParams
from sentinel_stream.detect.refit import Refitter, make_refitter
from sentinel_stream.detect.rules import telemetry_rules
from sentinel_stream.engine.event import Event
from sentinel_stream.engine.verdict import VerdictEncoder, build_verdict
from sentinel_stream.explain import NORMAL_EXPLANATION, explain
from sentinel_stream.records import ExplanationBody, VerdictRecord


@dataclass(frozen=True, slots=True)
class Failed:
    """An event the engine could not turn into a verdict, and why."""

    event: Event
    error: Exception


@dataclass(slots=True)
class Encoded:
    """A batch's verdicts as the Kafka door publishes them."""

    payloads: list[bytes | None]
    """Per event, in input order: its verdict's JSON; None for an event that failed."""
    anomalies: list[tuple[int, VerdictRecord]] = field(default_factory=list)
    """The anomalies' records, by event index (for the LLM explainer)."""
    failed: list[tuple[int, Failed]] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    """What every route group of one call shares."""

    events: Sequence[Event]
    raw: npt.NDArray[np.float64]
    rows: npt.NDArray[np.float32]
    scored_at: str
    learn: bool
    out: list[VerdictRecord | Failed | None]
    encoded: Encoded | None


_NORMAL = orjson.dumps(NORMAL_EXPLANATION)


class Engine:
    """Scores batches of telemetry events; safe to call from more than one thread."""

    def __init__(self, settings: Settings, refitter: Refitter | None = None) -> None:
        self.settings = settings
        self.rules = telemetry_rules(settings.rule_factor, settings.error_burst)
        self.detector = Detector(
            DetectorParams.from_settings(settings),
            self.rules,
            refitter
            if refitter is not None
            else make_refitter(settings.refit_workers, settings.refit_nice),
        )
        self._cold_reference = self.rules.reference(None)
        self._lock = threading.Lock()

    @property
    def lock(self) -> threading.Lock:
        """Held while the detector changes; readers of its tables (metrics) take it."""
        return self._lock

    @property
    def refitter(self) -> Refitter:
        return self.detector.refitter

    def tick(self) -> int:
        """Install finished fits; called between batches and when idle."""
        with self._lock:
            return self.detector.install_completed()

    def process(
        self, events: Sequence[Event], scored_at: str | None = None, learn: bool = True
    ) -> list[VerdictRecord]:
        """One verdict per event, in input order. Each route is scored before it learns.

        Raises what scoring raises: the HTTP door answers it as a 500. The Kafka door
        uses :meth:`process_each`, which keeps one event's failure to that event.
        """
        out = self._process(events, scored_at, learn, isolate=False)
        return out  # type: ignore[return-value]

    def process_each(
        self,
        events: Sequence[Event],
        scored_at: str | None = None,
        features: npt.NDArray[np.float64] | None = None,
    ) -> Encoded:
        """The Kafka door's call: :meth:`process`, with every verdict already JSON, and an
        event that cannot be scored or explained set apart as :class:`Failed` instead of
        failing its batch (a route whose batch fails is scored again event by event, so
        only the events that fail alone go to the DLQ)."""
        out = Encoded([None] * len(events))
        self._process(events, scored_at, True, isolate=True, encoded=out, features=features)
        return out

    def _process(
        self,
        events: Sequence[Event],
        scored_at: str | None,
        learn: bool,
        isolate: bool,
        encoded: Encoded | None = None,
        features: npt.NDArray[np.float64] | None = None,
    ) -> list[VerdictRecord | Failed]:
        """``features``: the events' (latency, input length, errors), when the door has
        them already (the Kafka door builds them as it decodes)."""
        if not events:
            return []
        scored_at = scored_at or now_iso()
        raw = (
            features
            if features is not None
            else np.array([(e.latency, e.input_length, e.errors) for e in events], dtype=np.float64)
        )
        rows = to_rows(raw)
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            groups.setdefault(e.route, []).append(i)
        out: list[VerdictRecord | Failed | None] = [None] * len(events)
        batch = _Batch(events, raw, rows, scored_at, learn, out, encoded)
        with self._lock:
            self.detector.install_completed()
        for route, idx in groups.items():
            if not isolate:
                self._score_group(route, idx, batch)
                continue
            try:
                self._score_group(route, idx, batch)
            except Exception:
                for i in idx:
                    try:
                        self._score_group(route, [i], batch)
                    except Exception as exc:  # this event alone fails: it is the DLQ's
                        failed = Failed(events[i], exc)
                        out[i] = failed
                        if encoded is not None:
                            encoded.failed.append((i, failed))
        return out  # type: ignore[return-value]

    def _score_group(self, route: str, idx: list[int], b: _Batch) -> None:
        """Score one route's events; write their verdicts into ``b.out`` (records) or
        ``b.encoded`` (JSON, and records of the anomalies)."""
        sel = np.asarray(idx)
        # The lock is held per route, not per batch: another door (HTTP) waits for one
        # route's scoring at most, never for a whole Kafka batch.
        with self._lock:
            s = self.detector.score_and_learn(route, b.rows[sel], learn=b.learn)
        scores = s.scores.tolist()
        flags = s.flags.tolist()
        events = b.events
        if b.encoded is None:
            for j, i in enumerate(idx):
                b.out[i] = self._verdict(route, i, b, s, scores[j], flags[j])
            return
        first = events[idx[0]].source
        encoder = VerdictEncoder(
            route=route,
            scored_at=b.scored_at,
            threshold=s.threshold,
            detector=s.detector,
            model_version=s.model_version,
            window_size=s.window_size,
            topic=first[0] if first is not None else "",
        )
        payloads = []
        anomalies = []
        for j, i in enumerate(idx):
            e = events[i]
            if flags[j]:
                v = self._verdict(route, i, b, s, scores[j], True)
                anomalies.append((i, v))
                payloads.append(orjson.dumps(v))
            else:
                payloads.append(
                    encoder.encode(e.event_id, e.event_time, False, scores[j], _NORMAL, e.source)
                )
        payload_list = b.encoded.payloads
        for i, payload in zip(idx, payloads, strict=True):
            payload_list[i] = payload
        b.encoded.anomalies.extend(anomalies)

    def _verdict(
        self, route: str, i: int, b: _Batch, s: Scored, score: float, flagged: bool
    ) -> VerdictRecord:
        e = b.events[i]
        return build_verdict(
            event_id=e.event_id,
            route=route,
            event_time=e.event_time,
            scored_at=b.scored_at,
            is_anomaly=flagged,
            score=score,
            threshold=s.threshold,
            detector=s.detector,
            model_version=s.model_version,
            window_size=s.window_size,
            explanation=(
                self._explain(route, b.raw[i], b.rows[i], s, score)
                if flagged
                else NORMAL_EXPLANATION
            ),
            source=e.source,
        )

    def _explain(
        self,
        route: str,
        raw: npt.NDArray[np.float64],
        row: npt.NDArray[np.float32],
        s: Scored,
        score: float,
    ) -> ExplanationBody:
        with self._lock:
            weights = self.detector.attribute(route, row)
        return explain(
            raw, row, s.baseline, self._cold_reference, s.detector, score, s.threshold, weights
        )

    def close(self) -> None:
        self.detector.refitter.close()
