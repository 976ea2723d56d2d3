"""The verdict record, built in one place for every door."""

from __future__ import annotations

import orjson

from sentinel_stream.detect.detector import DetectorName
from sentinel_stream.records import SCHEMA_VERSION, ExplanationBody, SourceRecord, VerdictRecord


def build_verdict(
    *,
    event_id: str,
    route: str,
    event_time: str,
    scored_at: str,
    is_anomaly: bool,
    score: float,
    threshold: float,
    detector: DetectorName,
    model_version: int | None,
    window_size: int,
    explanation: ExplanationBody,
    source: tuple[str, int, int] | None,
) -> VerdictRecord:
    src: SourceRecord | None = (
        {"topic": source[0], "partition": source[1], "offset": source[2]}
        if source is not None
        else None
    )
    return {
        "kind": "verdict",
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id,
        "route": route,
        "event_time": event_time,
        "scored_at": scored_at,
        "status": "THREAT_DETECTED" if is_anomaly else "OK",
        "is_anomaly": is_anomaly,
        "score": score,
        "threshold": threshold,
        "detector": detector,
        "warming_up": detector == "rules",
        "model_version": model_version,
        "window_size": window_size,
        "explanation": explanation,
        "source": src,
    }


class VerdictEncoder:
    """Verdict JSON for one route's events scored together, without a dict per event.

    Everything but the event's id, time, score, anomaly flag, explanation and offset is
    the same for a route's events in one batch, so it is encoded once and the bytes are
    joined per event. The result is byte for byte ``orjson.dumps(build_verdict(...))``
    (``tests/unit/test_verdict.py`` proves it), which the Kafka door would otherwise pay
    for with a dict per event.
    """

    __slots__ = ("_after_id", "_after_score", "_after_time", "_source")

    def __init__(
        self,
        *,
        route: str,
        scored_at: str,
        threshold: float,
        detector: DetectorName,
        model_version: int | None,
        window_size: int,
        topic: str,
    ) -> None:
        dumps = orjson.dumps
        self._after_time = b',"scored_at":' + dumps(scored_at) + b',"status":'
        self._after_score = (
            b',"threshold":'
            + dumps(threshold)
            + b',"detector":'
            + dumps(detector)
            + b',"warming_up":'
            + dumps(detector == "rules")
            + b',"model_version":'
            + dumps(model_version)
            + b',"window_size":'
            + dumps(window_size)
            + b',"explanation":'
        )
        self._after_id = b',"route":' + dumps(route) + b',"event_time":'
        self._source = b',"source":{"topic":' + dumps(topic) + b',"partition":'

    def encode(
        self,
        event_id: str,
        event_time: str,
        is_anomaly: bool,
        score: float,
        explanation: bytes,
        source: tuple[str, int, int] | None,
    ) -> bytes:
        dumps = orjson.dumps
        return b"".join(
            (
                _HEAD,
                dumps(event_id),
                self._after_id,
                dumps(event_time),
                self._after_time,
                _THREAT if is_anomaly else _OK,
                dumps(score),
                self._after_score,
                explanation,
                (self._source + dumps(source[1]) + b',"offset":' + dumps(source[2]) + b"}}")
                if source is not None
                else b',"source":null}',
            )
        )


_HEAD = b'{"kind":"verdict","schema_version":' + str(SCHEMA_VERSION).encode() + b',"event_id":'
_OK = b'"OK","is_anomaly":false,"score":'
_THREAT = b'"THREAT_DETECTED","is_anomaly":true,"score":'
