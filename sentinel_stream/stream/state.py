"""What each route learnt, checkpointed to a compacted topic and restored on assignment.

The changelog (``SENTINEL_STATE_TOPIC``, ``cleanup.policy=compact``, as many partitions
as the input topic) holds one record per route, keyed by the route, in the partition
number the route's events arrive on: whoever owns that input partition owns the state
partition of the same number, as Kafka Streams co-partitions a task's changelog.

**Writing.** A route's snapshot (:mod:`sentinel_stream.detect.snapshot`: window,
long-memory sample, model) is written when it installs a model, and otherwise at most
every ``SENTINEL_STATE_INTERVAL_S`` while it learns; never per event, and at most
``WRITES_PER_TURN`` records per turn of the loop. Routes with fewer than
``MIN_ROWS`` rows are not written (a flood of one-off routes writes nothing). A route
the detector evicts gets a tombstone, so the topic holds what members hold. The records
go through the loop's own producer: under at-least-once they are acknowledged before
the offsets are committed; under exactly-once they are part of the transaction.

**Restoring.** When partitions are assigned (at start and at every rebalance) the loop
pauses them, reads the same state partitions from the beginning to their end (a few
hundred records per turn, so the loop keeps polling and stays in the group), installs
the routes, and only then resumes them: no event of a restored partition is scored
before its routes' state is back. ``/ready`` answers 503 meanwhile. Partitions that
leave are checkpointed first and their routes dropped from memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from sentinel_stream.config import Settings
from sentinel_stream.detect.detector import Changes
from sentinel_stream.detect.snapshot import SnapshotError, restore_route, snapshot_route
from sentinel_stream.engine import Engine
from sentinel_stream.metrics import Metrics
from sentinel_stream.stream.errors import Backoff
from sentinel_stream.stream.kafka.clients import reader_config
from sentinel_stream.stream.kafka.produce import produce_waiting
from sentinel_stream.stream.owners import partition_of

log = structlog.get_logger("sentinel_stream.state")

MIN_ROWS = 16
"""Rows a route must hold before its state is worth a record."""
WRITES_PER_TURN = 64
"""Snapshots written per turn of the loop at most (models first): bounds the pause."""
RESTORE_BATCH = 500
"""State records read per turn of the loop while restoring."""
OFFSETS_WAIT_S = 10.0
"""How long an assignment waits, in all, for its state partitions' offsets while the
broker answers with an error (a partition whose leader is being elected, after a broker
restart, answers ``NOT_LEADER_FOR_PARTITION`` for a moment); past it, a partition whose
offsets cannot be read is not restored (counted, logged) and its routes warm up again."""
OFFSETS_ASK_S = 5.0
"""One ask's timeout within that wait (a broker that is down answers nothing)."""


@dataclass
class _Restore:
    """One restore in progress: the state partitions still being read."""

    started: float
    ends: dict[int, int]
    """State partition -> the offset to read up to (its end when the restore began)."""
    routes: dict[int, dict[str, bytes | None]] = field(default_factory=dict)
    """What was read per partition: the last value per route (None: a tombstone)."""


class StateStore:
    """The loop's changelog of per-route state (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        producer: Producer,
        engine: Engine,
        metrics: Metrics,
        pause: Callable[[list[int]], None],
        resume: Callable[[list[int]], None],
        before_write: Callable[[], None] = lambda: None,
    ) -> None:
        self._topic = settings.state_topic
        self._producer = producer
        self._engine = engine
        self._metrics = metrics
        self._pause = pause
        self._resume = resume
        self._before_write = before_write
        """Called before a record is produced (exactly-once opens its transaction)."""
        self._interval = settings.state_interval_s
        self._max_bytes = settings.state_max_bytes
        self._settings = settings
        self._changes = Changes()
        engine.detector.changes = self._changes
        self._home: dict[str, int] = {}
        """Route -> the input partition its events arrive on (where its state goes)."""
        self._written: dict[str, float] = {}
        """Route -> when its state was last written (monotonic)."""
        self._dirty: dict[str, bool] = {}
        """Routes whose state changed since written -> whether a model was installed."""
        self._restore: _Restore | None = None
        self._reader: Consumer | None = None
        self._partitioner = settings.partitioner
        self._warned_partitioner = False
        self.input_partitions = 0
        """The input topic's partition count, once known (the partitioner check)."""

    # -- what changed ----------------------------------------------------------------------

    def note(self, route: str, partition: int) -> None:
        """The route's events arrive on ``partition`` (called for each event)."""
        if self._home.get(route) != partition:
            self._home[route] = partition
            self._check_partitioner(route, partition)

    def _check_partitioner(self, route: str, partition: int) -> None:
        """Other members find a route's owner with SENTINEL_PARTITIONER: say when the
        producers partition otherwise (once per route and partition)."""
        if not self.input_partitions:
            return
        expected = partition_of(route.encode(), self.input_partitions, self._partitioner)
        if expected != partition:
            self._metrics.partition_mismatches.inc()
            if not self._warned_partitioner:
                self._warned_partitioner = True
                log.warning(
                    "partitioner_mismatch",
                    partition=partition,
                    expected=expected,
                    advice="set SENTINEL_PARTITIONER to the producers' partitioner; until "
                    "then other members ask the wrong owner for such routes",
                )

    def _collect(self) -> None:
        changes = self._changes.take()
        for route in changes.rows:
            self._dirty.setdefault(route, False)
        for route in changes.models:
            self._dirty[route] = True
        for route in changes.evicted:
            self._dirty.pop(route, None)
            partition = self._home.pop(route, None)
            if self._written.pop(route, None) is not None and partition is not None:
                self._produce(route, partition, None)
                self._metrics.state_records.labels("tombstone").inc()
        detector = self._engine.detector
        for route in changes.refused:
            # The detector holds nothing of a route it refused (a flood of one-off
            # routes): nor does this, beyond the next write.
            if route not in self._dirty and detector.route_state(route) is None:
                self._home.pop(route, None)

    # -- writing ---------------------------------------------------------------------------

    def checkpoint(self, now: float | None = None, partitions: Iterable[int] | None = None) -> int:
        """Write what is due: routes with a new model, then routes that learnt and were
        last written ``SENTINEL_STATE_INTERVAL_S`` ago or more. With ``partitions``,
        every changed route of those partitions, now (they are about to move)."""
        self._collect()
        if not self._dirty:
            return 0
        now = time.monotonic() if now is None else now
        wanted = set(partitions) if partitions is not None else None
        due: list[str] = []
        for route, model in self._dirty.items():
            home = self._home.get(route)
            if home is None:
                continue
            if wanted is not None:
                if home in wanted:
                    due.append(route)
            elif model or now - self._written.get(route, float("-inf")) >= self._interval:
                due.append(route)
        if wanted is None:
            due.sort(key=lambda r: not self._dirty[r])  # models first
            due = due[:WRITES_PER_TURN]
        written = 0
        detector = self._engine.detector
        for route in due:
            del self._dirty[route]
            with self._engine.lock:
                state = detector.route_state(route)
                if state is None or (state.model is None and len(state.window) < MIN_ROWS):
                    continue
                data = snapshot_route(detector, route)
            if data is None:
                continue
            if len(data) > self._max_bytes:
                self._metrics.state_skipped.labels("too_large").inc()
                log.warning("state_too_large", bytes=len(data), limit=self._max_bytes)
                continue
            self._produce(route, self._home[route], data)
            self._written[route] = now
            self._metrics.state_records.labels("snapshot").inc()
            self._metrics.state_bytes.inc(len(data))
            written += 1
        return written

    def _produce(self, route: str, partition: int, value: bytes | None) -> None:
        self._before_write()
        produce_waiting(self._producer, self._topic, value, route.encode(), partition=partition)

    # -- moving partitions -----------------------------------------------------------------

    def on_revoke(self, partitions: list[int]) -> None:
        """Write what the leaving partitions' routes learnt, then forget them here."""
        self.checkpoint(partitions=partitions)
        self._forget(set(partitions))

    def on_lost(self, partitions: list[int]) -> None:
        """Partitions taken away without a revoke: their routes' state is another
        member's now; forget it here without writing."""
        self._forget(set(partitions))

    def _forget(self, leaving: set[int]) -> None:
        routes = [r for r, p in self._home.items() if p in leaving]
        with self._engine.lock:
            self._engine.detector.drop(routes)
        for route in routes:
            self._home.pop(route, None)
            self._written.pop(route, None)
            self._dirty.pop(route, None)
        if self._restore is not None:
            for p in leaving:
                self._restore.ends.pop(p, None)
                self._restore.routes.pop(p, None)

    def on_assign(self, partitions: list[int]) -> None:
        """Pause the new partitions and begin reading their state."""
        if not partitions:
            return
        self._pause(partitions)
        reader = self._reader_for()
        ends = {}
        deadline = time.monotonic() + OFFSETS_WAIT_S
        for p in partitions:
            try:
                low, high = self._offsets(reader, p, deadline)
            except KafkaException as exc:
                # No state to read (the topic is gone or unreachable): the partition's
                # routes warm up again rather than hold the partition up.
                self._metrics.state_partitions_unread.inc()
                log.warning("state_unreadable", partition=p, error=str(exc))
                continue
            if low > 0:
                log.warning(
                    "state_partly_gone",
                    partition=p,
                    first_offset=low,
                    reason="records before it were deleted (retention on the state "
                    "topic?): routes whose state was there warm up again",
                )
            if high > low:
                ends[p] = high
        if self._restore is None:
            self._restore = _Restore(time.monotonic(), {})
        self._restore.ends.update(ends)
        for p in partitions:
            self._restore.routes.setdefault(p, {})
        assignment = [
            TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in sorted(self._restore.ends)
        ]
        reader.assign(assignment)
        empty = [p for p in partitions if p not in ends]
        self._finish(empty)

    def _offsets(self, reader: Consumer, partition: int, deadline: float) -> tuple[int, int]:
        """The state partition's (low, high) offsets, asked again while the broker answers
        with an error, until ``deadline`` (:data:`OFFSETS_WAIT_S`): a moment without a
        leader must not cost the partition its routes' models. Raises the last error."""
        tp = TopicPartition(self._topic, partition)
        backoff = Backoff(0.1, 1.0)
        while True:
            left = deadline - time.monotonic()
            try:
                low, high = reader.get_watermark_offsets(
                    tp, timeout=max(0.5, min(left, OFFSETS_ASK_S)), cached=False
                )
                return int(low), int(high)
            except KafkaException:
                pause = backoff.failed()
                if deadline - time.monotonic() <= pause:
                    raise
            time.sleep(pause)

    @property
    def restoring(self) -> frozenset[int]:
        if self._restore is None:
            return frozenset()
        return frozenset(self._restore.routes)

    def restore_step(self, timeout: float = 0.05) -> None:
        """Read some state records; install the partitions read to their end."""
        r = self._restore
        if r is None or self._reader is None:
            return
        for msg in self._reader.consume(RESTORE_BATCH, timeout) if r.ends else []:
            err = msg.error()
            if err is not None:
                log.warning("state_read_error", error=err.str())
                continue
            p = msg.partition() or 0
            key = msg.key()
            if p in r.ends and key is not None:
                r.routes.setdefault(p, {})[key.decode("utf-8", "replace")] = msg.value()
        # Done when the next offset to read is the end: positions, not the last offset
        # seen, because a transaction's commit marker can take the last offset.
        positions = self._reader.position([TopicPartition(self._topic, p) for p in r.ends])
        done = [tp.partition for tp in positions if tp.offset >= r.ends[tp.partition]]
        for p in done:
            r.ends.pop(p, None)
        self._finish(done)

    def _finish(self, partitions: list[int]) -> None:
        r = self._restore
        if r is None or not partitions:
            return
        restored = failed = 0
        detector = self._engine.detector
        for p in partitions:
            for route, value in r.routes.pop(p, {}).items():
                if value is None:
                    continue
                try:
                    with self._engine.lock:
                        restore_route(detector, route, value)
                except SnapshotError as exc:
                    failed += 1
                    log.warning("state_record_skipped", partition=p, reason=str(exc))
                    continue
                self._home[route] = p
                self._written[route] = time.monotonic()
                restored += 1
        self._changes.take()  # what the restore itself changed is not news
        seconds = time.monotonic() - r.started
        self._metrics.state_restored.inc(restored)
        self._metrics.state_restore_failures.inc(failed)
        self._metrics.state_restore_seconds.observe(seconds)
        log.info(
            "state_restored",
            partitions=sorted(partitions),
            routes=restored,
            skipped=failed,
            seconds=round(seconds, 3),
        )
        self._resume(partitions)
        if not r.routes:
            self._restore = None
            if self._reader is not None:
                self._reader.assign([])

    def _reader_for(self) -> Consumer:
        if self._reader is None:
            self._reader = Consumer(reader_config(self._settings, "state-reader"))
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("state_reader_close_failed", error=str(exc))
            self._reader = None
