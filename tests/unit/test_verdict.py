"""The Kafka door's verdict bytes are the verdict record's JSON, byte for byte."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_stream.detect.detector import DetectorName
from sentinel_stream.engine.verdict import VerdictEncoder, build_verdict
from sentinel_stream.explain import NORMAL_EXPLANATION
from sentinel_stream.records import ExplanationBody

texts = st.text(max_size=40)
scores = st.floats(min_value=0.0, max_value=1.0)
explanations = st.one_of(
    st.just(NORMAL_EXPLANATION),
    st.fixed_dictionaries(
        {
            "source": st.just("rules"),
            "text": texts,
            "attributions": st.lists(
                st.fixed_dictionaries(
                    {
                        "feature": st.sampled_from(["latency", "input_length", "errors"]),
                        "value": st.floats(allow_nan=False, allow_infinity=False),
                        "typical": st.one_of(st.none(), st.floats(min_value=0, max_value=1e9)),
                        "direction": st.sampled_from(["high", "low", "typical"]),
                        "weight": scores,
                    }
                ),
                max_size=3,
            ),
        }
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    route=texts,
    scored_at=texts,
    threshold=scores,
    detector=st.sampled_from(["isolation_forest", "rules"]),
    model_version=st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
    window_size=st.integers(min_value=0, max_value=10**6),
    topic=texts,
    event_id=texts,
    event_time=texts,
    is_anomaly=st.booleans(),
    score=scores,
    explanation=explanations,
    offsets=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(0, 2**62))),
)
def test_encoded_verdicts_equal_the_records_json(
    route: str,
    scored_at: str,
    threshold: float,
    detector: DetectorName,
    model_version: int | None,
    window_size: int,
    topic: str,
    event_id: str,
    event_time: str,
    is_anomaly: bool,
    score: float,
    explanation: ExplanationBody,
    offsets: tuple[int, int] | None,
) -> None:
    source = None if offsets is None else (topic, *offsets)
    record = build_verdict(
        event_id=event_id,
        route=route,
        event_time=event_time,
        scored_at=scored_at,
        is_anomaly=is_anomaly,
        score=score,
        threshold=threshold,
        detector=detector,
        model_version=model_version,
        window_size=window_size,
        explanation=explanation,
        source=source,
    )
    encoder = VerdictEncoder(
        route=route,
        scored_at=scored_at,
        threshold=threshold,
        detector=detector,
        model_version=model_version,
        window_size=window_size,
        topic=topic,
    )
    got = encoder.encode(
        event_id,
        event_time,
        is_anomaly,
        score,
        orjson.dumps(explanation),
        source,
    )
    assert got == orjson.dumps(record)
