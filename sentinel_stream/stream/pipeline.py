"""The Kafka loop, top to bottom: consume, decode, score, publish, commit.

One thread runs it. Each turn takes a batch of up to ``SENTINEL_BATCH_MAX`` records, so
that scoring is batched per poll; bad records go to the dead-letter topic with their
original bytes; every valid event gets its verdict from the :class:`Engine`, and an
event the engine cannot score goes to the dead-letter topic alone; the
:class:`~.checkpoint.Checkpoint` commits offsets only once the broker has acknowledged
what was produced for them.

What the loop rides out, rather than exits on (:mod:`.errors` decides which failures
heal):

- **a broker outage**: the producer keeps every record (no local timeout), commits wait
  (with backoff) until the broker acknowledges, and when the producer's queue passes
  its high-water mark the loop pauses its partitions and keeps polling, so the group
  membership, the probes' heartbeat and shutdown keep working;
- **rebalances**: partitions being revoked are committed first; records fetched for a
  partition revoked meanwhile are left to the new owner; a commit refused because the
  group moved on is retried or left to the new owner (duplicates, never loss);
- **records lost in flight**: the consumer goes back to the last commit and produces
  them again.

A failure that cannot heal raises :class:`PipelineError`; the process exits 1 with it.

Shutdown (:meth:`Pipeline.stop`, from SIGTERM/SIGINT): readiness turns 503 at once, the
loop stops fetching, the batch in hand is finished, the checkpoint commits (retrying
until ``SENTINEL_SHUTDOWN_TIMEOUT_S``), and the consumer closes, which leaves the group
at once so that its partitions move to another member without waiting for a session
timeout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine
from sentinel_stream.metrics import Metrics
from sentinel_stream.records import VerdictRecord
from sentinel_stream.status import LoopStatus
from sentinel_stream.stream.checkpoint import (
    AtLeastOnce,
    Checkpoint,
    CommitFailed,
    Outcome,
    Transactional,
)
from sentinel_stream.stream.decode import decode_batch
from sentinel_stream.stream.errors import Backoff, describe, error_of, heals
from sentinel_stream.stream.kafka.batching import next_batch
from sentinel_stream.stream.kafka.clients import consumer_config, producer_config
from sentinel_stream.stream.kafka.topics import TopicLimits
from sentinel_stream.stream.publish import Publisher
from sentinel_stream.stream.state import StateStore

log = structlog.get_logger("sentinel_stream.stream")

COMMIT_FLUSH_S = 2.0
"""How long one commit waits for acknowledgements before it is deferred: short, because
the loop does not poll meanwhile (a deferred commit is retried, with backoff)."""
REVOKE_COMMIT_S = 5.0
"""How long a rebalance waits for the commit of the partitions it takes away (the
rebalance waits too; past it, the new owner starts from the last commit)."""
STATE_WRITE_EVERY_S = 0.2
"""How often the loop looks for route state due to be written."""
RESUME_FRACTION = 0.25
"""Consumption resumes when the producer's queue is back under this share of its bound."""


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
        limits: TopicLimits | None = None,
        status: LoopStatus | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.status = status if status is not None else LoopStatus()
        self._stop = threading.Event()
        self._fatal: KafkaError | None = None
        self._exactly_once = settings.exactly_once
        self._producer = Producer(
            producer_config(
                settings,
                self._on_delivery,
                limits.producer_max_bytes if limits is not None else None,
                transactional=settings.exactly_once,
                extra={"error_cb": self._on_error},
            )
        )
        self._consumer = Consumer(
            consumer_config(
                settings,
                stats_cb=self._on_stats,
                error_cb=self._on_error,
                on_commit=self._on_commit,
            )
        )
        kind = Transactional if settings.exactly_once else AtLeastOnce
        self.checkpoint: Checkpoint = kind(
            self._consumer,
            self._producer,
            settings.input_topic,
            settings.commit_interval_ms / 1000.0,
        )
        self.publisher = Publisher(
            self._producer,
            settings.output_topic,
            settings.dlq_topic,
            metrics,
            settings.anomalies_only,
            on_anomaly,
            on_wait=self._waiting_for_queue,
            dlq_max_bytes=limits.dlq_max_bytes if limits is not None else None,
        )
        self._owned: set[int] = set()
        """Partitions this member owns now (rebalance callbacks keep it)."""
        self._paused = False
        self._high_water = settings.produce_queue_max // 2
        self._low_water = int(settings.produce_queue_max * RESUME_FRACTION)
        self._commit_backoff = Backoff(0.1, 5.0)
        self.state = StateStore(
            settings,
            self._producer,
            engine,
            metrics,
            pause=self._pause_partitions,
            resume=self._resume_partitions,
            before_write=self.checkpoint.begin,
        )
        self._next_state_write = 0.0

    # -- callbacks (run inside consume/poll/flush, on this thread) -----------------------

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        failure = self.publisher.on_delivery(err, msg)
        if failure is not None:
            self.checkpoint.on_delivery(failure, msg)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self.checkpoint.on_commit(err, partitions)

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's client-wide errors: all brokers down, or a fatal one."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.status.broker_up = False
        if err.fatal():
            self._fatal = err
        log.warning("kafka_error", error=describe(err))

    def _on_stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
            self.status.broker_up = any(
                b.get("state") == "UP" and b.get("nodeid", -1) >= 0
                for b in stats.get("brokers", {}).values()
            )
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

    def _set_owned(self) -> None:
        self.status.assigned = frozenset(self._owned)
        self.metrics.assigned_partitions.set(len(self._owned))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            consumer.incremental_assign(partitions)  # now, so that they can be paused
        except (KafkaException, RuntimeError):
            consumer.assign(partitions)  # an eager assignor (set by the operator)
        added = [p.partition for p in partitions]
        self._owned.update(added)
        self._set_owned()
        if self._paused and partitions:
            consumer.pause(partitions)  # still over the high-water mark: stay paused
        self.state.on_assign(added)  # paused until their routes' state is restored
        self.status.restoring = self.state.restoring
        log.info("partitions_assigned", partitions=sorted(added))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Write the leaving routes' state and commit what was processed before the
        # partitions move to another member, so that it neither loses nor repeats them.
        # If that cannot be done in time, the new owner starts from the last commit:
        # duplicates, never loss.
        revoked = [p.partition for p in partitions]
        self.state.on_revoke(revoked)
        self._commit_within("rebalance", REVOKE_COMMIT_S)
        self.checkpoint.forget(revoked)
        self._owned.difference_update(revoked)
        self._set_owned()
        self.status.restoring = self.state.restoring
        log.info("partitions_revoked", partitions=sorted(revoked))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = [p.partition for p in partitions]
        self._owned.difference_update(lost)
        self._set_owned()
        if self._exactly_once:
            # The open transaction holds records of lost partitions: it cannot commit
            # any more. Abort it and go back to the last commit on what we still own.
            self.checkpoint.abandon()
            self._rewind()
        self.checkpoint.forget(lost)
        self.state.on_lost(lost)  # another member owns their state now
        self.status.restoring = self.state.restoring
        log.warning("partitions_lost", partitions=sorted(lost))

    def _pause_partitions(self, partitions: list[int]) -> None:
        self._consumer.pause([TopicPartition(self.settings.input_topic, p) for p in partitions])

    def _resume_partitions(self, partitions: list[int]) -> None:
        owned = [p for p in partitions if p in self._owned]
        if owned and not self._paused:
            tps = [TopicPartition(self.settings.input_topic, p) for p in owned]
            self._consumer.resume(tps)
        self.status.restoring = self.state.restoring

    def _waiting_for_queue(self) -> None:
        self.status.waiting_for = "room in the producer queue"
        self.status.beat()

    # -- the loop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and leave (thread- and signal-safe)."""
        self.status.draining = True
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Run until :meth:`stop`; raises :class:`PipelineError` on a fault that cannot heal."""
        s = self.settings
        self._consumer.subscribe(
            [s.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.status.running = True
        self.status.producer_ok = True
        self.state.input_partitions = self._input_partitions()
        self.status.beat()
        timeout = s.poll_timeout_ms / 1000.0
        linger = s.batch_linger_ms / 1000.0
        log.info("pipeline_started", topic=s.input_topic, group=s.group_id)
        try:
            if self._exactly_once:
                self._init_transactions()
            while not self._stop.is_set():
                self._check_fatal()
                self.status.beat()
                if self._backpressure():
                    # Paused: polling serves rebalances and keeps the group membership. A
                    # record fetched just before the pause is still processed.
                    msg = self._consumer.poll(timeout)
                    if msg is not None:
                        self._handle([msg])
                else:
                    msgs = next_batch(self._consumer, s.batch_max, timeout, linger)
                    self.status.beat()
                    self.metrics.last_poll.set_to_current_time()
                    if msgs:
                        self._handle(msgs)
                    else:
                        self.engine.tick()
                if self.status.restoring:
                    self.state.restore_step()
                self._write_state()
                self._producer.poll(0)
                self.metrics.drain_fit_seconds(self.engine.detector)
                if self.checkpoint.due() and self._commit_backoff.ready():
                    self._commit("interval", COMMIT_FLUSH_S, wait=False)
            self._drain()
        except (PipelineError, CommitFailed) as exc:
            self.status.error = str(exc)
            raise PipelineError(str(exc)) from exc
        except KafkaException as exc:
            self.status.error = str(exc)
            raise PipelineError(f"Kafka error: {exc}") from exc
        finally:
            self.status.running = False
            self._close()

    def _input_partitions(self) -> int:
        try:
            md = self._consumer.list_topics(self.settings.input_topic, timeout=10.0)
            return len(md.topics[self.settings.input_topic].partitions)
        except (KafkaException, KeyError):
            return 0  # unknown for now: the partitioner check waits

    def _check_fatal(self) -> None:
        if self._fatal is not None:
            raise PipelineError(f"fatal Kafka error: {describe(self._fatal)}")

    def _init_transactions(self) -> None:
        """Register the transactional id; this also aborts what a previous incarnation of
        this member left open, so readers are not held up until it times out."""
        backoff = Backoff(0.2, 5.0)
        while not self._stop.is_set():
            try:
                self._producer.init_transactions(30.0)
                return
            except KafkaException as exc:
                err = error_of(exc)
                if err is None or not heals(err):
                    raise PipelineError(f"cannot start transactions: {exc}") from exc
                self.status.waiting_for = "the broker (init transactions)"
                time.sleep(backoff.failed())

    def _backpressure(self) -> bool:
        """Pause every partition while the producer's queue is over its high-water mark
        (a slow or absent broker), resume when it has drained to the low-water mark."""
        queued = len(self._producer)
        if not self._paused and queued >= self._high_water:
            self._set_paused(True)
            self.metrics.backpressure_pauses.inc()
            log.warning("consumer_paused", queued=queued)
        elif self._paused and queued <= self._low_water:
            self._set_paused(False)
            log.info("consumer_resumed", queued=queued)
        return self._paused

    def _set_paused(self, paused: bool) -> None:
        assignment = self._consumer.assignment()
        if assignment:
            (self._consumer.pause if paused else self._consumer.resume)(assignment)
        self._paused = paused
        self.status.waiting_for = "the broker to take the queued records" if paused else None

    def _write_state(self, force: bool = False) -> None:
        """Write the routes' state that is due, a few times a second at most."""
        now = time.monotonic()
        if not force and now < self._next_state_write:
            return
        self._next_state_write = now + STATE_WRITE_EVERY_S
        if force:
            self.state.checkpoint(now, partitions=self._owned)
        else:
            self.state.checkpoint(now)

    def _drain(self) -> None:
        """Write the routes' state, commit what is done, retrying until the shutdown
        deadline: a restart then begins where this run ended."""
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self._write_state(force=True)
        self._commit_within("shutdown", self.settings.shutdown_timeout_s)
        if self.checkpoint.pending:
            log.warning(
                "shutdown_uncommitted",
                reason="the broker did not acknowledge in time; these records will be "
                "processed again after a restart",
                seconds=round(max(0.0, deadline - time.monotonic()), 1),
            )

    def _commit_within(self, reason: str, seconds: float) -> None:
        """Commit, retrying what heals, for at most ``seconds``."""
        deadline = time.monotonic() + seconds
        backoff = Backoff(0.05, 1.0)
        while True:
            outcome = self._commit(reason, min(COMMIT_FLUSH_S, seconds))
            if outcome.deferred is None or time.monotonic() >= deadline:
                return
            self.status.beat()
            time.sleep(min(backoff.failed(), max(0.0, deadline - time.monotonic())))

    def _commit(self, reason: str, flush_s: float, wait: bool = True) -> Outcome:
        try:
            outcome = self.checkpoint.commit(flush_s, wait)
        except CommitFailed as exc:
            self.metrics.commits.labels("failed").inc()
            self.status.producer_ok = False
            raise PipelineError(f"cannot commit ({reason}): {exc}") from exc
        if outcome.rewind:
            self.metrics.commits.labels("rewound").inc()
            self._rewind()
        if outcome.deferred is not None:
            self.metrics.commits.labels("deferred").inc()
            self.status.producer_ok = False
            delay = self._commit_backoff.failed()
            log.warning("commit_deferred", reason=reason, why=outcome.deferred, retry_s=delay)
            return outcome
        self._commit_backoff.succeeded()
        self.status.producer_ok = True
        if outcome.partitions:
            self.metrics.commits.labels("ok").inc()
        return outcome

    def _rewind(self) -> None:
        """Go back to the last committed offset of every owned partition: what was
        processed after it is processed again (its outputs were lost or aborted). The
        last commit is this member's own when it is newer than the broker's (an
        asynchronous one still on its way: its records' outputs were acknowledged)."""
        assignment = [tp for tp in self._consumer.assignment() if tp.partition in self._owned]
        if not assignment:
            return
        self.metrics.rewinds.inc()
        for tp in self._consumer.committed(assignment, timeout=30.0):
            offset = max(tp.offset, self.checkpoint.committed(tp.partition) or -1)
            offset = offset if offset >= 0 else OFFSET_BEGINNING
            try:
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:  # not yet fetching: it starts at the commit anyway
                log.info("rewind_seek_skipped", partition=tp.partition, error=str(exc))
        log.warning("consumer_rewound", partitions=sorted(tp.partition for tp in assignment))

    def _close(self) -> None:
        self.state.close()
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:  # already closed or broker gone
            log.warning("consumer_close_failed", error=str(exc))
        self._owned.clear()
        self._set_owned()
        log.info("pipeline_stopped", commits=self.checkpoint.commits)

    def _handle(self, msgs: list[Message]) -> None:
        m = self.metrics
        t0 = time.perf_counter()
        batch = decode_batch(msgs, self.settings.input_topic, self._owned, self._consumer_error)
        events = batch.events
        if batch.skipped:
            m.records_skipped_revoked.inc(batch.skipped)
        note = self.state.note
        for e in events:
            note(e.route, e.source[1])  # type: ignore[index]
        self.checkpoint.begin()
        t1 = time.perf_counter()
        encoded = self.engine.process_each(events, features=batch.features)
        t2 = time.perf_counter()
        anomalies = self.publisher.verdicts(events, batch.raws, encoded)
        for b in batch.bad:
            self.publisher.dead_letter(b)
        # Only now, with their outputs produced, do the records count as processed.
        for partition, offset in batch.last.items():
            self.checkpoint.track(partition, offset)
        if not self._paused:
            self.status.waiting_for = None
        t3 = time.perf_counter()
        self.status.records += len(msgs)
        m.records_consumed.inc(len(msgs))
        m.batch_size.observe(len(msgs))
        m.events_valid.labels("kafka").inc(len(events))
        for detector, n in anomalies.items():
            m.anomalies.labels(detector).inc(n)
        m.stage_seconds.labels("decode").observe(t1 - t0)
        m.stage_seconds.labels("score").observe(t2 - t1)
        m.stage_seconds.labels("publish").observe(t3 - t2)
        if events and events[0].produced_ms:
            m.verdict_lag.observe(max(0.0, time.time() - events[0].produced_ms / 1000.0))

    def _consumer_error(self, err: KafkaError) -> None:
        """An error the consumer returned in place of a record."""
        if not heals(err):
            raise PipelineError(f"consumer error: {describe(err)}")
        log.warning("consumer_error", error=describe(err))


def describe_settings(settings: Settings) -> dict[str, Any]:
    """What the loop is configured to do, for the start-up log line (no secrets)."""
    return {
        "bootstrap": settings.kafka_bootstrap,
        "group": settings.group_id,
        "instance": settings.instance_id,
        "input": settings.input_topic,
        "output": settings.output_topic,
        "dlq": settings.dlq_topic,
        "anomalies_only": settings.anomalies_only,
        "exactly_once": settings.exactly_once,
    }
