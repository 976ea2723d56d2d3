"""The v1 service's metric names: the recent anomaly share, request labels, LLM failures,
as exported from a registry (no server)."""

from __future__ import annotations

from prometheus_client import generate_latest

from sentinel_stream.metrics import V1_DURATION_BUCKETS, Metrics, RecentShare, llm_failures


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_recent_share_covers_the_window_only() -> None:
    clock = Clock()
    totals = {"scored": 0.0, "flagged": 0.0}
    share = RecentShare(300.0, lambda: (totals["scored"], totals["flagged"]), clock)
    assert share.value() == 0.0  # nothing scored yet
    totals.update(scored=100, flagged=90)  # a burst of anomalies
    clock.t += 60
    assert share.value() == 0.9
    for _ in range(10):  # then ten minutes of quiet traffic, scraped every 15 s
        for _ in range(4):
            clock.t += 15
            totals["scored"] += 250
            share.value()
    # The burst is more than 5 minutes old: only the last 5 minutes' 5,000 events count.
    assert share.value() == 0.0
    totals["flagged"] += 50
    totals["scored"] += 50
    clock.t += 15
    assert 0.0 < share.value() < 0.02


def test_recent_share_keeps_a_bounded_number_of_samples() -> None:
    clock = Clock()
    n = [0.0]
    share = RecentShare(300.0, lambda: (n[0], 0.0), clock)
    for _ in range(100_000):  # a scraper gone wild: every 10 ms
        clock.t += 0.01
        n[0] += 1
        share.value()
    assert len(share) <= 63


def test_scrapes_apart_by_more_than_the_window_use_the_last_one() -> None:
    clock = Clock()
    totals = [0.0, 0.0]
    share = RecentShare(300.0, lambda: (totals[0], totals[1]), clock)
    totals[:] = [10, 10]
    clock.t += 1000
    assert share.value() == 1.0
    totals[:] = [20, 10]
    clock.t += 1000
    assert share.value() == 0.0  # only what came since the last scrape


def test_llm_failures_are_every_outcome_but_ok() -> None:
    calls = {("ollama", "ok"): 3, ("ollama", "timeout"): 2, ("ollama", "breaker_open"): 5}
    assert llm_failures(calls) == 7


def test_v1_names_types_labels_and_buckets() -> None:
    m = Metrics()
    m.v1_requests.inc("/analyze-flow", "POST")
    m.v1_requests.inc("/health", "GET")
    m.v1_requests.inc("/nope", "BREW")  # unbounded input, bounded labels
    m.request_duration.observe(0.02)
    m.health_check_fails.inc()
    m.events_valid.labels("kafka").inc(8)
    m.anomalies.labels("rules").inc(2)
    m.count_http_verdict(True, forwarded=False)
    m.count_http_verdict(True, forwarded=True)  # counted when its Kafka verdict comes
    text = generate_latest(m.registry).decode()
    assert "# TYPE sentinel_requests_total counter" in text
    assert 'sentinel_requests_total{endpoint="analyze-flow",method="post"} 1.0' in text
    assert 'sentinel_requests_total{endpoint="health",method="get"} 1.0' in text
    assert 'sentinel_requests_total{endpoint="other",method="other"} 1.0' in text
    assert "# TYPE sentinel_request_duration_seconds histogram" in text
    buckets = [
        float(line.split('le="')[1].split('"')[0])
        for line in text.splitlines()
        if line.startswith("sentinel_request_duration_seconds_bucket")
    ]
    assert buckets == [*V1_DURATION_BUCKETS, float("inf")]
    assert "sentinel_health_check_fails_total 1.0" in text
    assert "# TYPE sentinel_anomaly_rate gauge" in text
    assert "sentinel_anomaly_rate 0.3333333333333333" in text  # (2 + 1) / (8 + 1)
    assert 'sentinel_events_valid_total{door="http"} 2.0' in text
    mb = float(text.split("\nsentinel_memory_mb ")[1].split()[0])
    assert 10 < mb < 100_000


def test_every_dead_letter_code_starts_at_zero() -> None:
    """A labelled counter born at 1 shows no increase() in Prometheus: the dead-letter
    alert would miss the first bad record of a kind. Every code decode can give is
    exported at 0 from the start."""
    from sentinel_stream.metrics import DEAD_LETTER_REASONS
    from sentinel_stream.stream.decode import BadRecord, decode_record

    bad_values = [b"", b"{x", b"\xff\xfe", b'{"latency": -1}', b"x" * (70 * 1024)]
    codes = set()
    for value in bad_values:
        rec = decode_record(b"/r", value, "t", 0, 0, 0)
        assert isinstance(rec, BadRecord)
        codes.add(rec.error)
    assert codes == {"empty", "invalid_json", "invalid_utf8", "schema", "too_large"}
    assert codes <= set(DEAD_LETTER_REASONS)
    text = generate_latest(Metrics().registry).decode()
    for reason in DEAD_LETTER_REASONS:
        assert f'sentinel_dead_letters_total{{reason="{reason}"}} 0.0' in text
