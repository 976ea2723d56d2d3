"""The Kafka loop, top to bottom: consume, decode, score, publish, commit.

One thread runs it. Each turn takes a batch of up to ``SENTINEL_BATCH_MAX`` records, so
that scoring is batched per poll; bad records go to the dead-letter topic with their
original bytes; every valid event gets its verdict from the :class:`Engine`; and the
:class:`Checkpoint` commits offsets only once the broker has acknowledged what was
produced for them.

Shutdown (:meth:`Pipeline.stop`, from SIGTERM/SIGINT): the loop stops fetching, the batch
in hand is finished, the checkpoint flushes and commits, and the consumer closes, which
leaves the group at once so that its partitions move to another member without waiting
for a session timeout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine, Event
from sentinel_stream.metrics import Metrics
from sentinel_stream.records import (
    DETAIL_MAX,
    DLQ_DETAIL,
    DLQ_ERROR,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
    VerdictRecord,
)
from sentinel_stream.status import LoopStatus
from sentinel_stream.stream.checkpoint import Checkpoint
from sentinel_stream.stream.decode import BadRecord, decode_record
from sentinel_stream.stream.kafka.batching import next_batch
from sentinel_stream.stream.kafka.clients import consumer_config, producer_config
from sentinel_stream.stream.kafka.produce import Headers, produce_waiting

log = structlog.get_logger("sentinel_stream.stream")


class PipelineError(Exception):
    """The loop cannot go on without losing or skipping data; the process should exit."""


class Pipeline:
    """Consumes telemetry, publishes verdicts and dead letters, commits what is done."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        metrics: Metrics,
        on_anomaly: Callable[[VerdictRecord], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.status = LoopStatus()
        self._stop = threading.Event()
        self._producer = Producer(producer_config(settings, self._on_delivery))
        self._consumer = Consumer(consumer_config(settings, stats_cb=self._on_stats))
        self.checkpoint = Checkpoint(
            self._consumer,
            self._producer,
            settings.input_topic,
            settings.commit_interval_ms / 1000.0,
        )
        self._out = settings.output_topic
        self._dlq = settings.dlq_topic
        self._anomalies_only = settings.anomalies_only
        self._on_anomaly = on_anomaly
        """Called with each anomaly verdict after it is produced (the LLM explainer)."""

    # -- callbacks (run inside consume/poll/flush, on this thread) -----------------------

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.metrics.delivery_failures.inc()
            log.error("delivery_failed", topic=msg.topic(), error=err.str())
        self.checkpoint.on_delivery(err, msg)

    def _on_stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
            lag = 0
            for part in (
                stats.get("topics", {})
                .get(self.settings.input_topic, {})
                .get("partitions", {})
                .values()
            ):
                if part.get("partition", -1) >= 0 and part.get("consumer_lag", -1) >= 0:
                    lag += int(part["consumer_lag"])
            self.status.consumer_lag = lag
            self.metrics.consumer_lag.set(lag)
        except (ValueError, TypeError, AttributeError):
            pass

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.status.assigned.update(p.partition for p in partitions)
        self.metrics.assigned_partitions.set(len(self.status.assigned))
        log.info("partitions_assigned", partitions=sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what was processed before the partitions move to another member, so
        # that it neither loses nor repeats them.
        self._commit("rebalance")
        lost = [p.partition for p in partitions]
        self.checkpoint.forget(lost)
        self.status.assigned.difference_update(lost)
        self.metrics.assigned_partitions.set(len(self.status.assigned))
        log.info("partitions_revoked", partitions=sorted(lost))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = [p.partition for p in partitions]
        self.checkpoint.forget(lost)
        self.status.assigned.difference_update(lost)
        self.metrics.assigned_partitions.set(len(self.status.assigned))
        log.warning("partitions_lost", partitions=sorted(lost))

    # -- the loop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and leave (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Run until :meth:`stop`; raises :class:`PipelineError` on an unrecoverable fault."""
        s = self.settings
        self._consumer.subscribe(
            [s.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.status.running = True
        self.status.producer_ok = True
        timeout = s.poll_timeout_ms / 1000.0
        linger = s.batch_linger_ms / 1000.0
        log.info("pipeline_started", topic=s.input_topic, group=s.group_id)
        try:
            while not self._stop.is_set():
                msgs = next_batch(self._consumer, s.batch_max, timeout, linger)
                self.status.last_poll = time.monotonic()
                self.metrics.last_poll.set_to_current_time()
                if msgs:
                    self._handle(msgs)
                else:
                    self.engine.tick()
                self._producer.poll(0)
                self.metrics.drain_fit_seconds(self.engine.detector)
                if self.checkpoint.due():
                    self._commit("interval")
            self._commit("shutdown", timeout=s.shutdown_timeout_s)
        except PipelineError as exc:
            self.status.error = str(exc)
            raise
        except KafkaException as exc:
            self.status.error = str(exc)
            raise PipelineError(f"Kafka error: {exc}") from exc
        finally:
            self.status.running = False
            self._close()

    def _close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:  # already closed or broker gone
            log.warning("consumer_close_failed", error=str(exc))
        self.status.assigned.clear()
        log.info("pipeline_stopped", commits=self.checkpoint.commits)

    def _commit(self, reason: str, timeout: float = 30.0) -> None:
        try:
            n = self.checkpoint.commit(timeout)
        except Exception as exc:
            self.metrics.commits.labels("failed").inc()
            self.status.producer_ok = False
            raise PipelineError(f"cannot commit ({reason}): {exc}") from exc
        if n:
            self.metrics.commits.labels("ok").inc()

    def _handle(self, msgs: list[Message]) -> None:
        m = self.metrics
        t0 = time.perf_counter()
        events: list[Event] = []
        bad: list[BadRecord] = []
        topic = self.settings.input_topic
        last: dict[int, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise PipelineError(f"fatal consumer error: {err.str()}")
                log.warning("consumer_error", error=err.str())
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            last[partition] = offset
            rec = decode_record(
                msg.key(), msg.value(), topic, partition, offset, msg.timestamp()[1]
            )
            (events if isinstance(rec, Event) else bad).append(rec)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        verdicts = self.engine.process(events)
        t2 = time.perf_counter()
        for b in bad:
            self._produce(self._dlq, b.key, b.value, _dlq_headers(b))
            m.dead_letters.labels(b.error).inc()
            log.info("dead_letter", reason=b.error, partition=b.partition, offset=b.offset)
        published = 0
        anomalies: dict[str, int] = {}
        for v in verdicts:
            if not v["is_anomaly"] and self._anomalies_only:
                continue
            self._produce(self._out, v["route"].encode(), orjson.dumps(v), None)
            published += 1
            if v["is_anomaly"]:
                anomalies[v["detector"]] = anomalies.get(v["detector"], 0) + 1
                if self._on_anomaly is not None:
                    self._on_anomaly(v)
        # Only now, with their outputs produced, do the records count as processed.
        for partition, offset in last.items():
            self.checkpoint.track(partition, offset)
        t3 = time.perf_counter()
        self.status.records += len(msgs)
        m.records_consumed.inc(len(msgs))
        m.batch_size.observe(len(msgs))
        m.events_valid.labels("kafka").inc(len(events))
        m.verdicts_published.inc(published)
        for detector, n in anomalies.items():
            m.anomalies.labels(detector).inc(n)
        m.stage_seconds.labels("decode").observe(t1 - t0)
        m.stage_seconds.labels("score").observe(t2 - t1)
        m.stage_seconds.labels("publish").observe(t3 - t2)
        oldest = min((e.produced_ms for e in events if e.produced_ms), default=None)
        if oldest is not None:
            m.verdict_lag.observe(max(0.0, time.time() - oldest / 1000.0))

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Headers | None,
    ) -> None:
        produce_waiting(
            self._producer, topic, value, key, headers, on_full=self.metrics.produce_retries.inc
        )


def _dlq_headers(b: BadRecord) -> Headers:
    return [
        (DLQ_ERROR, b.error.encode()),
        (DLQ_DETAIL, b.detail[:DETAIL_MAX].encode("utf-8", "replace")),
        (DLQ_SOURCE_TOPIC, b.topic.encode()),
        (DLQ_SOURCE_PARTITION, str(b.partition).encode()),
        (DLQ_SOURCE_OFFSET, str(b.offset).encode()),
    ]


def describe(settings: Settings) -> dict[str, Any]:
    """What the loop is configured to do, for the start-up log line (no secrets)."""
    return {
        "bootstrap": settings.kafka_bootstrap,
        "group": settings.group_id,
        "input": settings.input_topic,
        "output": settings.output_topic,
        "dlq": settings.dlq_topic,
        "anomalies_only": settings.anomalies_only,
    }
