"""Prometheus metrics: one registry per service, names per Prometheus' conventions.

``sentinel_`` prefix, base units (seconds, bytes), ``_total`` counters, and only bounded
label values: a dead-letter reason is one of a handful of codes, an endpoint one of the
server's routes. No user id or route name is ever a label. Counters the pure detector
keeps as plain ints are read at scrape time by a collector, so the hot path never
touches a metric per event.

The v1 service's names (``sentinel_requests_total``, ``sentinel_request_duration_seconds``,
``sentinel_anomaly_rate``, ``sentinel_memory_mb``, ``sentinel_model_fits_total``,
``sentinel_health_check_fails_total``, ``sentinel_llm_failures_total``) are exported
beside ours with the v1 meaning, so that alert rules written for v1 fire unchanged. Most
are views of what is counted anyway, computed at scrape time: they add nothing to the
Kafka loop. docs/operations.md tables which name counts what.
"""

from __future__ import annotations

import os
import time
from collections import deque
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
DEAD_LETTER_REASONS = ("invalid_json", "invalid_utf8", "schema", "too_large", "empty", "processing")
DETECTORS = ("isolation_forest", "rules")
DOORS = ("kafka", "http")
V1_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
"""The v1 service's buckets of ``sentinel_request_duration_seconds`` (its P95 alerts and
dashboards interpolate within them)."""


class Metrics:
    """Every metric the service exports, registered on its own registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, anomaly_rate_window_s: float = 300.0
    ) -> None:
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
        self.state_partitions_unread = Counter(
            "sentinel_state_partitions_unread",
            "state partitions not restored at an assignment: the broker gave no offsets for "
            "them within the wait (their routes warm up again)",
            registry=r,
        )
        self.state_restore_seconds = Histogram(
            "sentinel_state_restore_duration_seconds",
            "from an assignment to its partitions' state restored",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=r,
        )
        self.http_owner = Counter(
            "sentinel_http_owner_answers",
            "/analyze-flow answers by who answered: self (this member owns the route or no "
            "owner is known), owner, owner_failed (asked, no answer in time: answered here)",
            ["outcome"],
            registry=r,
        )
        self.partition_mismatches = Counter(
            "sentinel_route_partition_mismatches",
            "routes whose events arrive on another partition than SENTINEL_PARTITIONER says",
            registry=r,
        )
        self.side_records = Counter(
            "sentinel_side_records",
            "records of the side producer (forwarded HTTP events, LLM explanations) by outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.replica_records = Counter(
            "sentinel_replica_records",
            "state records the HTTP process's replica read (SENTINEL_HTTP_PROCESS), by outcome",
            ["outcome"],
            registry=r,
        )
        self.http_process_restarts = Counter(
            "sentinel_http_process_restarts",
            "HTTP processes started again after one exited (SENTINEL_HTTP_PROCESS)",
            registry=r,
        )
        # Labelled counters start at 0 for every known label value: Prometheus' increase()
        # and rate() read a series' first sample as its start, so a series born at 1
        # (the first dead letter of a kind) would show no increase and alert nobody.
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for detector in DETECTORS:
            self.anomalies.labels(detector)
        for door in DOORS:
            self.events_valid.labels(door)
        for outcome in ("ok", "deferred", "rewound", "failed"):
            self.commits.labels(outcome)
        for kind in ("forward", "explanation"):
            for side_outcome in ("delivered", "dropped", "failed"):
                self.side_records.labels(kind, side_outcome)
        for replica_outcome in ("applied", "dropped", "failed"):
            self.replica_records.labels(replica_outcome)
        for state_kind in ("snapshot", "tombstone"):
            self.state_records.labels(state_kind)
        # -- the v1 service's names -------------------------------------------------------
        self.v1_requests = V1Requests()
        r.register(self.v1_requests)
        self.request_duration = Histogram(
            "sentinel_request_duration_seconds",
            "POST /analyze-flow requests, from arrival to answer (v1 name and buckets)",
            buckets=V1_DURATION_BUCKETS,
            registry=r,
        )
        self.health_check_fails = Counter(
            "sentinel_health_check_fails",
            "GET /health answers that said unhealthy (503) (v1 name)",
            registry=r,
        )
        self._http_scored = 0
        self._http_flagged = 0
        self._http_valid = self.events_valid.labels("http")
        self._http_children: dict[tuple[str, int], Any] = {}
        """(endpoint, status) -> its child of ``http_requests``: bounded by the server's
        routes and the statuses it answers."""
        self.anomaly_rate = RecentShare(anomaly_rate_window_s, self._verdict_totals)
        r.register(_V1Gauges(self.anomaly_rate))

    def count_request(self, endpoint: str, status: int, method: str, seconds: float | None) -> None:
        """One HTTP request answered, under both names (``seconds``: the time of one to
        ``/analyze-flow``). The labelled children are kept rather than looked up per
        request: looking one up cost as much as the increment."""
        child = self._http_children.get((endpoint, status))
        if child is None:
            child = self.http_requests.labels(endpoint, str(status))
            self._http_children[(endpoint, status)] = child
        child.inc()
        self.v1_requests.inc(endpoint, method)
        if seconds is not None:
            self.request_duration.observe(seconds)

    def count_http_verdict(self, is_anomaly: bool, forwarded: bool) -> None:
        """One ``/analyze-flow`` verdict. A forwarded event gets its Kafka verdict later and
        is counted there, so only events that are not forwarded count toward the
        anomaly rate here (each event counts once)."""
        self._http_valid.inc()
        if not forwarded:
            self._http_scored += 1
            self._http_flagged += is_anomaly

    def _verdict_totals(self) -> tuple[float, float]:
        """(events scored, events flagged) since start, each event once."""
        scored = _sample_sum(self.events_valid, {"door": "kafka"}) + self._http_scored
        flagged = _sample_sum(self.anomalies) + self._http_flagged
        return scored, flagged

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
        self.v1_requests.explainer = explainer

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
            "routes evicted by SENTINEL_MAX_ROUTES or SENTINEL_MEMORY_MAX_MB",
            value=st.routes_evicted,
        )
        table = d.table_stats
        yield CounterMetricFamily(
            "sentinel_routes_evicted_memory",
            "routes evicted to stay within SENTINEL_MEMORY_MAX_MB (counted in "
            "sentinel_routes_evicted_total too)",
            value=table.evicted_memory,
        )
        yield CounterMetricFamily(
            "sentinel_routes_refused",
            "new routes not admitted: the detector was full of routes seen more often "
            "(their events were scored by the cold rules)",
            value=table.refused,
        )
        yield GaugeMetricFamily(
            "sentinel_detector_memory_bytes",
            "bytes the detector holds: route windows, samples, models, baselines",
            value=d.memory_bytes,
        )
        yield GaugeMetricFamily(
            "sentinel_detector_memory_budget_bytes",
            "SENTINEL_MEMORY_MAX_MB in bytes",
            value=d.params.max_bytes or 0,
        )
        yield GaugeMetricFamily(
            "sentinel_models_bytes",
            "bytes of the installed models' compiled forests",
            value=d.model_bytes(),
        )
        yield CounterMetricFamily(
            "sentinel_models_dropped",
            "models dropped by SENTINEL_MAX_MODELS",
            value=st.models_dropped,
        )
        yield CounterMetricFamily(
            "sentinel_models_distrusted",
            "models that disagreed with most of their route's traffic (flagged by the model "
            "alone): the route was scored as warming up until its next model",
            value=st.models_distrusted,
        )
        yield CounterMetricFamily(
            "sentinel_refits", "models fitted and installed", value=st.models_installed
        )
        yield CounterMetricFamily(
            "sentinel_model_fits",
            "models fitted and installed (v1 name; the same count as sentinel_refits_total)",
            value=st.models_installed,
        )
        yield CounterMetricFamily(
            "sentinel_refits_discarded",
            "fits that failed or whose route moved on",
            value=st.fits_discarded,
        )
        yield CounterMetricFamily(
            "sentinel_events_learned", "events admitted to route windows", value=st.rows_admitted
        )
        yield CounterMetricFamily(
            "sentinel_refits_failed",
            "fits that raised (the route asks again later)",
            value=st.fits_failed,
        )
        requested = CounterMetricFamily(
            "sentinel_fits_requested",
            "fits requested, by kind: first (a route's first model) or again (refits)",
            labels=["kind"],
        )
        requested.add_metric(["first"], st.fits_requested_first)
        requested.add_metric(["again"], st.fits_requested_again)
        yield requested


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
        # v1 name. Its labels are those of sentinel_requests_total{endpoint="llm"}, so that
        # the v1 ratio rules (failures / requests) match series without `ignoring`.
        failures = CounterMetricFamily(
            "sentinel_llm_failures",
            "anomalies explained by rules because the LLM failed, timed out or its breaker "
            "was open (v1 name)",
            labels=["endpoint", "method"],
        )
        failures.add_metric(["llm", e.backend.api], llm_failures(st.calls))
        yield failures
        breaker = GaugeMetricFamily(
            "sentinel_llm_breaker_state", "0 closed, 1 half-open, 2 open", labels=["backend"]
        )
        breaker.add_metric([e.backend.api], _BREAKER[e.breaker.state])
        yield breaker


LLM_OK = "ok"


def llm_failures(calls: dict[tuple[str, str], int]) -> int:
    """Calls that left an anomaly with the rule explanation only: every outcome but ok."""
    return sum(n for (_, outcome), n in calls.items() if outcome != LLM_OK)


def _sample_sum(metric: Counter, labels: dict[str, str] | None = None) -> float:
    """Sum of a counter's ``_total`` samples (optionally those with ``labels``)."""
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and (
                labels is None or all(sample.labels.get(k) == v for k, v in labels.items())
            ):
                total += sample.value
    return total


V1_ENDPOINTS = {
    "/analyze-flow": "analyze-flow",
    "/health": "health",
    "/ready": "ready",
    "/metrics": "metrics",
    "/openapi.json": "openapi.json",
}
"""Path -> the v1 label value (v1 wrote endpoints without the slash); others are ``other``."""
V1_METHODS = frozenset({"get", "post", "head", "put", "delete", "patch", "options"})


class V1Requests(Collector):
    """``sentinel_requests_total{endpoint,method}``, as the v1 service counted it: HTTP
    requests by endpoint and lower-case method, and (``endpoint="llm"``, ``method`` the
    LLM API) LLM calls that answered. Plain ints, bumped on the event loop's thread."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.explainer: Explainer | None = None

    def inc(self, path: str, method: str) -> None:
        m = method.lower()
        key = (V1_ENDPOINTS.get(path, "other"), m if m in V1_METHODS else "other")
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "sentinel_requests",
            "HTTP requests by endpoint and method; endpoint=llm: LLM calls that answered (v1 name)",
            labels=["endpoint", "method"],
        )
        for (endpoint, method), n in sorted(self.counts.items()):
            family.add_metric([endpoint, method], n)
        e = self.explainer
        if e is not None:
            family.add_metric(["llm", e.backend.api], e.stats.calls.get((e.backend.api, LLM_OK), 0))
        yield family


class RecentShare:
    """The share of flagged verdicts among those of the last ``window_s`` seconds.

    Read from two running totals (scored, flagged) sampled when the value is read (a
    scrape), so that the data path pays nothing for it. The value is over the span from
    the newest sample at least ``window_s`` old (or the start) to now: ``window_s`` when
    scrapes come more often than that, longer when they come less often. Samples closer
    than ``window_s / 60`` to the newest one replace it, so at most about 62 are kept
    however often it is read. No verdict in the span reads 0.
    """

    def __init__(
        self,
        window_s: float,
        totals: Callable[[], tuple[float, float]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._totals = totals
        self._clock = clock
        self._step = window_s / 60.0
        self._samples: deque[tuple[float, float, float]] = deque([(clock(), 0.0, 0.0)])

    def __len__(self) -> int:
        return len(self._samples)

    def value(self) -> float:
        now = self._clock()
        scored, flagged = self._totals()
        s = self._samples
        if len(s) > 1 and now - s[-2][0] < self._step:
            s[-1] = (now, scored, flagged)
        else:
            s.append((now, scored, flagged))
        while len(s) > 2 and s[1][0] <= now - self.window_s:
            s.popleft()
        _, scored0, flagged0 = s[0]
        span = scored - scored0
        return (flagged - flagged0) / span if span > 0 else 0.0


def resident_mib() -> float:
    """This process's resident memory in MiB (what the v1 service reported as MB)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1048576.0
    except (OSError, ValueError, IndexError):  # not Linux: the peak instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _V1Gauges(Collector):
    def __init__(self, anomaly_rate: RecentShare) -> None:
        self._rate = anomaly_rate

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "sentinel_anomaly_rate",
            f"share of the verdicts of the last {self._rate.window_s:g} s that were anomalies, "
            "0-1 (v1 name; SENTINEL_ANOMALY_RATE_WINDOW_S)",
            value=self._rate.value(),
        )
        yield GaugeMetricFamily(
            "sentinel_memory_mb",
            "resident memory of this process, MiB (v1 name)",
            value=resident_mib(),
        )
