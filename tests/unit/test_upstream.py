"""Two processes' metrics as one member's: the merge the HTTP process serves at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sentinel_stream.http.upstream import merge_expositions
from sentinel_stream.metrics import Metrics


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def process(
    requests: int, memory: float, lag: float, durations: list[float], only: str
) -> tuple[str, float]:
    """One process's exposition, and the moment its counter was created."""
    r = CollectorRegistry()
    c = Counter("sentinel_things", "things", ["kind"], registry=r)
    c.labels("a").inc(requests)
    Gauge("sentinel_memory_mb", "memory", registry=r).set(memory)
    Gauge("sentinel_consumer_lag", "lag", registry=r).set(lag)
    h = Histogram("sentinel_took_seconds", "took", buckets=(0.1, 1.0), registry=r)
    for d in durations:
        h.observe(d)
    Counter(f"sentinel_{only}", "only here", registry=r).inc(7)
    created = values(generate_latest(r).decode())[("sentinel_things_created", (("kind", "a"),))]
    return generate_latest(r).decode(), created


def test_counters_and_histograms_are_summed_gauges_are_the_loops_but_memory() -> None:
    loop, loop_created = process(3, 100.0, 42.0, [0.05, 2.0], "loop_only")
    http, http_created = process(5, 60.0, 0.0, [0.5], "http_only")
    merged = values(merge_expositions(loop, http))
    a = (("kind", "a"),)
    assert merged[("sentinel_things_total", a)] == 8
    assert merged[("sentinel_things_created", a)] == min(loop_created, http_created)
    assert merged[("sentinel_memory_mb", ())] == 160.0
    assert merged[("sentinel_consumer_lag", ())] == 42.0
    assert merged[("sentinel_took_seconds_bucket", (("le", "0.1"),))] == 1
    assert merged[("sentinel_took_seconds_bucket", (("le", "1.0"),))] == 2
    assert merged[("sentinel_took_seconds_bucket", (("le", "+Inf"),))] == 3
    assert merged[("sentinel_took_seconds_count", ())] == 3
    assert merged[("sentinel_took_seconds_sum", ())] == 2.55
    assert merged[("sentinel_loop_only_total", ())] == 7
    assert merged[("sentinel_http_only_total", ())] == 7


def test_the_services_own_metrics_merge_into_one_family_each() -> None:
    loop, http = Metrics(), Metrics()
    loop.records_consumed.inc(10)
    http.count_request("/analyze-flow", 200, "POST", 0.002)
    http.count_request("/analyze-flow", 200, "POST", 0.003)
    loop.count_request("/metrics", 200, "GET", None)
    text = merge_expositions(
        generate_latest(loop.registry).decode(), generate_latest(http.registry).decode()
    )
    names = [fam.name for fam in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    assert set(names) == {
        fam.name for fam in text_string_to_metric_families(generate_latest(loop.registry).decode())
    }
    merged = values(text)
    assert merged[("sentinel_records_consumed_total", ())] == 10
    assert (
        merged[("sentinel_requests_total", (("endpoint", "analyze-flow"), ("method", "post")))] == 2
    )
    assert merged[("sentinel_requests_total", (("endpoint", "metrics"), ("method", "get")))] == 1
    assert merged[("sentinel_request_duration_seconds_count", ())] == 2
    assert (
        merged[("sentinel_http_requests_total", (("endpoint", "/analyze-flow"), ("status", "200")))]
        == 2
    )


def test_creation_times_are_the_earlier_and_no_label_set_is_lost() -> None:
    """The HTTP process's registry made first, and a label set only it has."""
    http_reg, loop_reg = CollectorRegistry(), CollectorRegistry()
    http_c = Counter("sentinel_things", "things", ["kind"], registry=http_reg)
    http_c.labels("both").inc(1)
    http_c.labels("http_only").inc(2)
    http_h = Histogram("sentinel_took_seconds", "took", ["s"], buckets=(1.0,), registry=http_reg)
    http_h.labels("b").observe(0.5)
    loop_c = Counter("sentinel_things", "things", ["kind"], registry=loop_reg)
    loop_c.labels("both").inc(3)
    loop_h = Histogram("sentinel_took_seconds", "took", ["s"], buckets=(1.0,), registry=loop_reg)
    loop_h.labels("a").observe(0.5)
    http_text, loop_text = generate_latest(http_reg).decode(), generate_latest(loop_reg).decode()
    http_v, loop_v = values(http_text), values(loop_text)
    merged = values(merge_expositions(loop_text, http_text))
    both, only = (("kind", "both"),), (("kind", "http_only"),)
    assert http_v[("sentinel_things_created", both)] < loop_v[("sentinel_things_created", both)]
    assert merged[("sentinel_things_created", both)] == http_v[("sentinel_things_created", both)]
    assert merged[("sentinel_things_total", both)] == 4
    assert merged[("sentinel_things_total", only)] == 2
    assert merged[("sentinel_things_created", only)] == http_v[("sentinel_things_created", only)]
    assert merged[("sentinel_took_seconds_count", (("s", "a"),))] == 1
    assert merged[("sentinel_took_seconds_count", (("s", "b"),))] == 1
    assert (("sentinel_took_seconds_created", (("s", "b"),))) in merged
