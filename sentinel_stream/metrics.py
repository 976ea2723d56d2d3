"""Prometheus metrics: one registry per service, names per Prometheus' conventions.

``sentinel_`` prefix, base units (seconds, bytes), ``_total`` counters, and only bounded
label values: a dead-letter reason is one of a handful of codes, an endpoint one of the
server's routes. No user id or route name is ever a label. Counters the pure detector
keeps as plain ints are read at scrape time by a collector, so the hot path never
touches a metric per event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sentinel_stream.detect.detector import Detector
from sentinel_stream.explain.llm import Explainer

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_LAG = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FIT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric the service exports, registered on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "sentinel_records_consumed", "Kafka records read from the input topic", registry=r
        )
        self.events_valid = Counter(
            "sentinel_events_valid", "valid events scored (Kafka and HTTP)", ["door"], registry=r
        )
        self.verdicts_published = Counter(
            "sentinel_verdicts_published", "verdict records produced", registry=r
        )
        self.anomalies = Counter(
            "sentinel_anomalies", "events judged anomalous", ["detector"], registry=r
        )
        self.dead_letters = Counter(
            "sentinel_dead_letters",
            "bad records sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "sentinel_stage_duration_seconds",
            "time per batch spent in each stage of the data path",
            ["stage"],
            buckets=_FAST,
            registry=r,
        )
        self.batch_size = Histogram(
            "sentinel_batch_records",
            "records per consumed batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.verdict_lag = Histogram(
            "sentinel_verdict_lag_seconds",
            "from a record's Kafka timestamp to its verdict, for each batch's oldest record",
            buckets=_LAG,
            registry=r,
        )
        self.commits = Counter("sentinel_commits", "offset commits", ["outcome"], registry=r)
        self.produce_retries = Counter(
            "sentinel_produce_queue_full",
            "produce calls that found the producer queue full and waited",
            registry=r,
        )
        self.delivery_failures = Counter(
            "sentinel_delivery_failures", "records the broker did not acknowledge", registry=r
        )
        self.consumer_lag = Gauge(
            "sentinel_consumer_lag_records",
            "records behind the end of assigned partitions",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "sentinel_assigned_partitions", "input partitions assigned to this member", registry=r
        )
        self.last_poll = Gauge(
            "sentinel_last_poll_timestamp_seconds", "when the consumer last polled", registry=r
        )
        self.fit_seconds = Histogram(
            "sentinel_refit_duration_seconds",
            "time to fit one route's model",
            buckets=_FIT,
            registry=r,
        )
        self.llm_seconds = Histogram(
            "sentinel_llm_call_duration_seconds",
            "LLM explanation calls",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.http_requests = Counter(
            "sentinel_http_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.http_unexpected_errors = Counter(
            "sentinel_http_unexpected_errors",
            "HTTP requests that failed inside the service (answered 500, JSON)",
            registry=r,
        )
        self.processing_failures = Counter(
            "sentinel_processing_failures",
            "valid records that failed while scored or published (dead-lettered, 'processing')",
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "sentinel_dead_letters_without_value",
            "dead letters the DLQ topic refused for size, sent again without their value",
            registry=r,
        )
        self.records_skipped_revoked = Counter(
            "sentinel_records_skipped_revoked",
            "fetched records of partitions revoked meanwhile, left to their new owner",
            registry=r,
        )
        self.backpressure_pauses = Counter(
            "sentinel_consumer_backpressure_pauses",
            "times consumption paused because the producer queue was over its high-water mark",
            registry=r,
        )
        self.rewinds = Counter(
            "sentinel_consumer_rewinds",
            "times the consumer went back to the last commit to produce lost records again",
            registry=r,
        )
        self.state_records = Counter(
            "sentinel_state_records",
            "records written to the state changelog, by kind (snapshot, tombstone)",
            ["kind"],
            registry=r,
        )
        self.state_bytes = Counter(
            "sentinel_state_written_bytes", "bytes of route snapshots written", registry=r
        )
        self.state_skipped = Counter(
            "sentinel_state_writes_skipped",
            "route snapshots not written, by reason",
            ["reason"],
            registry=r,
        )
        self.state_restored = Counter(
            "sentinel_state_routes_restored", "routes restored from the changelog", registry=r
        )
        self.state_restore_failures = Counter(
            "sentinel_state_records_unreadable",
            "state records skipped at restore (corrupt, or another schema version)",
            registry=r,
        )
        self.state_restore_seconds = Histogram(
            "sentinel_state_restore_duration_seconds",
            "from an assignment to its partitions' state restored",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=r,
        )
        self.side_records = Counter(
            "sentinel_side_records",
            "records of the side producer (forwarded HTTP events, LLM explanations) by outcome",
            ["kind", "outcome"],
            registry=r,
        )

    def watch_detector(
        self,
        detector: Detector,
        refits_pending: Callable[[], int],
        lock: AbstractContextManager[Any],
    ) -> None:
        """Export the detector's own counters and gauges, read at scrape time under
        ``lock`` (the engine's: the Kafka thread changes the detector as it scores)."""
        self.registry.register(_DetectorCollector(detector, refits_pending, lock))

    def watch_explainer(self, explainer: Explainer) -> None:
        self.registry.register(_ExplainerCollector(explainer))

    def drain_fit_seconds(self, detector: Detector) -> None:
        """Move fit durations recorded by the detector into the histogram."""
        durations = detector.stats.fit_seconds
        while durations:
            self.fit_seconds.observe(durations.pop())


class _DetectorCollector(Collector):
    def __init__(
        self,
        detector: Detector,
        refits_pending: Callable[[], int],
        lock: AbstractContextManager[Any],
    ) -> None:
        self._d = detector
        self._pending = refits_pending
        self._lock = lock

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return list(self._collect())

    def _collect(self) -> Iterable[Metric]:
        d, st = self._d, self._d.stats
        yield GaugeMetricFamily(
            "sentinel_routes_tracked", "routes with state", value=d.routes_tracked
        )
        yield GaugeMetricFamily(
            "sentinel_models_trained", "routes with a trained model", value=d.models_trained
        )
        yield GaugeMetricFamily(
            "sentinel_refits_pending", "fits queued or running", value=self._pending()
        )
        yield GaugeMetricFamily(
            "sentinel_model_age_seconds",
            "age of the oldest installed model",
            value=d.oldest_model_age(),
        )
        yield CounterMetricFamily(
            "sentinel_routes_evicted",
            "routes evicted by SENTINEL_MAX_ROUTES",
            value=st.routes_evicted,
        )
        yield CounterMetricFamily(
            "sentinel_models_dropped",
            "models dropped by SENTINEL_MAX_MODELS",
            value=st.models_dropped,
        )
        yield CounterMetricFamily(
            "sentinel_refits", "models fitted and installed", value=st.models_installed
        )
        yield CounterMetricFamily(
            "sentinel_refits_discarded",
            "fits that failed or whose route moved on",
            value=st.fits_discarded,
        )
        yield CounterMetricFamily(
            "sentinel_events_learned", "events admitted to route windows", value=st.rows_admitted
        )


_BREAKER = {"closed": 0, "half_open": 1, "open": 2}


class _ExplainerCollector(Collector):
    def __init__(self, explainer: Explainer) -> None:
        self._e = explainer

    def collect(self) -> Iterable[Metric]:
        e, st = self._e, self._e.stats
        calls = CounterMetricFamily(
            "sentinel_llm_calls", "LLM calls by backend and outcome", labels=["backend", "outcome"]
        )
        for (backend, outcome), n in sorted(st.calls.items()):
            calls.add_metric([backend, outcome], n)
        yield calls
        yield CounterMetricFamily(
            "sentinel_llm_cache_hits", "anomalies explained from the cache", value=st.cache_hits
        )
        yield CounterMetricFamily(
            "sentinel_llm_queue_dropped",
            "anomalies skipped: LLM queue full",
            value=st.queue_dropped,
        )
        yield CounterMetricFamily(
            "sentinel_llm_explanations_published", "explanation records", value=st.published
        )
        yield GaugeMetricFamily("sentinel_llm_queue_depth", "anomalies waiting", value=e.queued)
        breaker = GaugeMetricFamily(
            "sentinel_llm_breaker_state", "0 closed, 1 half-open, 2 open", labels=["backend"]
        )
        breaker.add_metric([e.backend.api], _BREAKER[e.breaker.state])
        yield breaker
