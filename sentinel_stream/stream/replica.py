"""A standby replica of every route's state: the state changelog followed into an engine.

The HTTP door served from a process of its own (``SENTINEL_HTTP_PROCESS``) has no Kafka
loop beside it to learn from, and must still answer from each route's model (never from
cold rules while a warm model exists elsewhere). The members already write what every
route learnt to the state topic (:mod:`.state`): a model when it installs one, the rest
at most every ``SENTINEL_STATE_INTERVAL_S``. The replica reads every partition of that
topic from the beginning and then follows it, as a Kafka Streams standby task follows
its changelog: a record replaces its route's state, a tombstone drops it. Its answers are
as fresh as the last record, a model installed on any member within the time a record
takes to travel.

It joins no consumer group (it assigns itself every partition, and commits nothing), so
it moves no partition of the loop's group, and it takes the engine's lock only per
record. A record that cannot be read is counted and skipped: that route answers from
rules until its next record.
"""

from __future__ import annotations

import threading
import time

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from sentinel_stream.config import Settings
from sentinel_stream.detect.snapshot import SnapshotError, restore_route
from sentinel_stream.engine import Engine
from sentinel_stream.metrics import Metrics
from sentinel_stream.stream.errors import Backoff
from sentinel_stream.stream.kafka.clients import reader_config

log = structlog.get_logger("sentinel_stream.replica")

READ_BATCH = 500
"""State records read per turn at most."""
TOPIC_RECHECK_S = 30.0
"""How often the replica looks for partitions added to the state topic."""


class StateReplica:
    """Follows the state topic into ``engine`` on a thread of its own."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self._settings = settings
        self._engine = engine
        self._metrics = metrics
        self._topic = settings.state_topic
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._ends: dict[int, int] = {}
        """Partition -> its end when first read: caught up once every one is read to it."""
        self._thread = threading.Thread(target=self._run, name="state-replica", daemon=True)

    @property
    def caught_up(self) -> bool:
        """Every partition read up to where it ended when the replica started."""
        return self._caught_up.is_set()

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        """Follow the topic; after an error, pause and read it again from the beginning
        (installing a record twice changes nothing): the replica never stops for good
        while the door serves."""
        backoff = Backoff(1.0, 30.0)
        while not self._stop.is_set():
            consumer = Consumer(reader_config(self._settings, "replica"))
            try:
                self._follow(consumer)
            except Exception:
                pause = backoff.failed()
                log.exception("replica_failed", retry_in_s=pause)
                self._stop.wait(pause)
            finally:
                try:
                    consumer.close()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("replica_close_failed", error=str(exc))

    def _follow(self, consumer: Consumer) -> None:
        assigned: set[int] = set()
        self._ends = {}
        recheck = 0.0
        backoff = Backoff(0.2, 5.0)
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= recheck:
                try:
                    assigned |= self._assign_new(consumer, assigned)
                    recheck = now + TOPIC_RECHECK_S
                    backoff.succeeded()
                except KafkaException as exc:  # broker away: ask again, the door keeps serving
                    log.warning("replica_topic_unreadable", error=str(exc))
                    self._stop.wait(backoff.failed())
                    continue
            for msg in consumer.consume(READ_BATCH, 0.2) if assigned else []:
                self._apply(msg)
            if not self._caught_up.is_set() and assigned:
                self._check_caught_up(consumer)
            if not assigned:
                self._stop.wait(0.2)

    def _assign_new(self, consumer: Consumer, assigned: set[int]) -> set[int]:
        md = consumer.list_topics(self._topic, timeout=5.0)
        topic = md.topics.get(self._topic)
        if topic is None or topic.error is not None:
            raise KafkaException(topic.error if topic is not None else "state topic not listed")
        new = sorted(set(topic.partitions) - assigned)
        if not new:
            return set()
        for p in new:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self._topic, p), timeout=5.0, cached=False
            )
            # Nothing to read (never written, or emptied by retention: low == high > 0)
            # counts as read to its end.
            self._ends[p] = int(high) if high > low else 0
        consumer.incremental_assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in new])
        log.info("replica_following", topic=self._topic, partitions=new)
        return set(new)

    def _check_caught_up(self, consumer: Consumer) -> None:
        positions = consumer.position([TopicPartition(self._topic, p) for p in self._ends])
        ends = self._ends
        if all(ends[tp.partition] == 0 or tp.offset >= ends[tp.partition] for tp in positions):
            self._caught_up.set()
            log.info("replica_caught_up", routes=self._engine.detector.routes_tracked)

    def _apply(self, msg: Message) -> None:
        err = msg.error()
        key = msg.key()
        if err is not None or key is None:
            if err is not None:
                log.warning("replica_read_error", error=err.str())
            return
        route = key.decode("utf-8", "replace")
        value = msg.value()
        outcome = "applied"
        with self._engine.lock:
            if value is None:
                self._engine.detector.drop([route])
                outcome = "dropped"
            else:
                try:
                    restore_route(self._engine.detector, route, value)
                except SnapshotError as exc:
                    outcome = "failed"
                    log.warning("replica_record_skipped", reason=str(exc))
        self._metrics.replica_records.labels(outcome).inc()
