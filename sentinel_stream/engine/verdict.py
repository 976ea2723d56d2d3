"""The verdict record, built in one place for every door."""

from __future__ import annotations

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
