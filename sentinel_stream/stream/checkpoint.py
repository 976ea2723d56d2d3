"""The one place where "processed" becomes "committed": the delivery guarantee.

Two ways, one interface (:class:`Checkpoint`), chosen by ``SENTINEL_EXACTLY_ONCE``:

**At-least-once** (:class:`AtLeastOnce`, the default). :meth:`~Checkpoint.commit`, in
order:

1. flush the producer: every verdict and dead letter produced for the records processed
   so far is acknowledged by the broker (``acks=all``, idempotent);
2. if some are not acknowledged yet (a broker is down, a leader moving), commit
   nothing and say so (:attr:`Outcome.deferred`): the loop retries later, with backoff,
   and the records stay uncommitted, so a crash meanwhile reprocesses them;
3. commit ``offset + 1`` of the last processed record of each partition. A commit that
   races a rebalance, or finds the coordinator moving, is deferred the same way; one
   that cannot heal (:mod:`.errors`) raises :class:`CommitFailed`.

The commit on the interval is asynchronous (``wait=False``): the offsets are sent and
the loop goes on. A synchronous commit is a round trip to the group coordinator, which
appends to ``__consumer_offsets`` and waits for its replicas (7-12 ms on a local broker),
and every record that arrived meanwhile waited with it, once a second
(``bench/stream_throughput.py``'s latency phase). Nothing is lost by not waiting: what
is committed had its outputs acknowledged first (step 1), and the answer comes back
through the consumer's ``on_commit`` callback (:meth:`Checkpoint.on_commit`) during a
later poll: a failure that heals puts the offsets back to be committed on the next
interval, one that cannot heal raises :class:`CommitFailed` at the next commit. The
commits that must have landed before something else happens (partitions revoked in a
rebalance, shutdown) wait.

A delivery that failed for good is never skipped: a failure that heals (a record whose
local timeout expired) rewinds the consumer to the last commit (:attr:`Outcome.rewind`),
so those records are processed and produced again; one that cannot heal raises.

**Exactly-once** (:class:`Transactional`). Each interval's verdicts, dead letters and
input offsets go in one Kafka transaction (``send_offsets_to_transaction`` with the
consumer's group metadata, KIP-447), so a ``read_committed`` reader sees each verdict
once across crashes and rebalances. A transaction that fails in a way the broker
requires to abort is aborted and the consumer rewound to the last commit.

Offsets only move forward (:meth:`~Checkpoint.track` refuses to go back past a commit):
a record is never committed before the ones before it were processed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from sentinel_stream.stream.errors import describe, error_of, heals

log = structlog.get_logger("sentinel_stream.checkpoint")


class CommitFailed(Exception):
    """A commit failed in a way no retry can mend; the member must stop."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a commit attempt did."""

    partitions: int = 0
    """Partitions whose offsets were committed."""
    deferred: str | None = None
    """Why nothing was committed this time (it will be retried), if so."""
    rewind: bool = False
    """Records were lost in flight: the consumer must go back to the last commit."""


class Checkpoint:
    """Tracks processed offsets; the subclasses commit them (see the module doc)."""

    def __init__(
        self, consumer: Consumer, producer: Producer, topic: str, interval_s: float
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._topic = topic
        self._interval = interval_s
        self._next: dict[int, int] = {}
        """partition -> the offset to commit (last processed + 1), not yet committed."""
        self._committed: dict[int, int] = {}
        self._last_commit = time.monotonic()
        self._errors: list[KafkaError] = []
        self._errors_lock = threading.Lock()
        self._sent: dict[int, int] = {}
        """partition -> the offset an asynchronous commit carries, until its answer."""
        self._commit_error: KafkaError | None = None
        """An asynchronous commit's failure that cannot heal, raised at the next commit."""
        self.commits = 0

    # -- called by the producer's delivery reports (only failures report) ---------------

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            with self._errors_lock:
                self._errors.append(err)

    # -- called by the consumer's commit reports (during poll/consume, this thread) -------

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The broker's answer to a commit. Only asynchronous commits are acted on: a
        synchronous one reports through :meth:`commit` itself."""
        for tp in partitions:
            if tp.topic != self._topic or self._sent.get(tp.partition) != tp.offset:
                continue
            del self._sent[tp.partition]
            failure = tp.error or err
            if failure is None:
                continue
            if not heals(failure) and failure.code() != KafkaError._NO_OFFSET:
                self._commit_error = failure
            elif tp.partition not in self._next and tp.partition in self._committed:
                # Commit it again on the next interval (nothing newer is pending).
                self._next[tp.partition] = tp.offset
                log.info("commit_retried", partition=tp.partition, error=describe(failure))

    def _take_errors(self) -> list[KafkaError]:
        with self._errors_lock:
            errors, self._errors = self._errors, []
        return errors

    # -- tracking ------------------------------------------------------------------------

    def track(self, partition: int, offset: int) -> None:
        """Record that ``offset`` of ``partition`` is processed (its outputs produced)."""
        nxt = offset + 1
        if nxt <= self._committed.get(partition, -1):
            raise RuntimeError(f"offset {offset} of partition {partition} goes back past a commit")
        if nxt > self._next.get(partition, -1):
            self._next[partition] = nxt

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions that moved to another member without our commit: it redoes them."""
        for p in partitions:
            self._next.pop(p, None)
            self._committed.pop(p, None)
            self._sent.pop(p, None)

    def committed(self, partition: int) -> int | None:
        """The offset this member last committed for ``partition`` (sent, if the commit
        was asynchronous: its records' outputs were acknowledged either way), or None."""
        return self._committed.get(partition)

    @property
    def pending(self) -> bool:
        return bool(self._next)

    def due(self) -> bool:
        return bool(self._next) and time.monotonic() - self._last_commit >= self._interval

    def begin(self) -> None:
        """Before producing anything for newly consumed records (exactly-once opens its
        transaction here)."""

    def commit(self, timeout: float = 30.0, wait: bool = True) -> Outcome:
        """Commit what is processed; ``wait=False`` does not wait for the offset commit's
        answer (see the module doc)."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Give up what is uncommitted (exactly-once aborts its transaction)."""
        self._next.clear()

    def _commit_offsets(self, offsets: list[TopicPartition], wait: bool = True) -> None:
        if wait:
            self._consumer.commit(offsets=offsets, asynchronous=False)
            return
        self._consumer.commit(offsets=offsets, asynchronous=True)
        self._sent.update((tp.partition, tp.offset) for tp in offsets)

    def _offsets(self) -> list[TopicPartition]:
        return [TopicPartition(self._topic, p, o) for p, o in self._next.items()]

    def _done(self, n: int) -> Outcome:
        self._committed.update(self._next)
        self._next.clear()
        self.commits += 1
        return Outcome(partitions=n)


def _fatal(what: str, err: KafkaError) -> CommitFailed:
    return CommitFailed(f"{what}: {describe(err)}")


class AtLeastOnce(Checkpoint):
    """Flush, check, commit (see the module doc)."""

    def commit(self, timeout: float = 30.0, wait: bool = True) -> Outcome:
        self._last_commit = time.monotonic()
        if self._commit_error is not None:
            failure, self._commit_error = self._commit_error, None
            raise _fatal("an offset commit failed", failure)
        remaining = self._producer.flush(timeout)
        errors = self._take_errors()
        for failure in errors:
            if not heals(failure):
                raise _fatal("a record could not be delivered", failure)
        if errors:
            # Lost in flight for a reason that heals: produce them again, from the last
            # commit. Nothing past it is committed.
            log.warning("delivery_failed_rewind", errors=len(errors), first=describe(errors[0]))
            self._next.clear()
            return Outcome(deferred=describe(errors[0]), rewind=True)
        if remaining > 0:
            return Outcome(deferred=f"{remaining} records not yet acknowledged by the broker")
        if not self._next:
            return Outcome()
        offsets = self._offsets()
        try:
            self._commit_offsets(offsets, wait)
        except KafkaException as exc:
            err = error_of(exc)
            if err is None or not heals(err):
                raise CommitFailed(f"offset commit failed: {exc}") from exc
            if err.code() == KafkaError._NO_OFFSET:
                return self._done(0)
            return Outcome(deferred=describe(err))
        return self._done(len(offsets))


class Transactional(Checkpoint):
    """Each commit interval is one Kafka transaction (see the module doc).

    The producer must be transactional, with ``init_transactions`` done.
    """

    def __init__(
        self, consumer: Consumer, producer: Producer, topic: str, interval_s: float
    ) -> None:
        super().__init__(consumer, producer, topic, interval_s)
        self._open = False
        self._must_abort: str | None = None
        """Set when an abort failed for a reason that heals: the next commit retries it."""
        self.aborts = 0

    def begin(self) -> None:
        if not self._open:
            self._producer.begin_transaction()
            self._open = True

    def due(self) -> bool:
        # An open transaction is committed on the interval even with no input offsets
        # in it (state records): left open it would hold up read_committed readers and
        # then be aborted by the broker.
        pending = self._open or bool(self._next)
        return pending and time.monotonic() - self._last_commit >= self._interval

    def commit(self, timeout: float = 30.0, wait: bool = True) -> Outcome:
        """Always waits: the transaction's commit is what makes its records visible."""
        self._last_commit = time.monotonic()
        if self._must_abort is not None:
            return self._abort(self._must_abort)
        if not self._open:
            return Outcome()
        errors = self._take_errors()
        if errors:
            first = errors[0]
            if not heals(first) and not first.txn_requires_abort():
                raise _fatal("a record could not be delivered", first)
            return self._abort(describe(first))
        offsets = self._offsets()
        try:
            if offsets:
                self._producer.send_offsets_to_transaction(
                    offsets, self._consumer.consumer_group_metadata(), timeout
                )
            self._producer.commit_transaction(timeout)
        except KafkaException as exc:
            err = error_of(exc)
            if err is None or err.fatal():
                raise CommitFailed(f"transaction commit failed: {exc}") from exc
            if err.txn_requires_abort():
                return self._abort(describe(err))
            if heals(err):
                # The same commit can be retried (e.g. a timeout): the transaction stays.
                return Outcome(deferred=describe(err))
            raise CommitFailed(f"transaction commit failed: {exc}") from exc
        self._open = False
        return self._done(len(offsets))

    def abandon(self) -> None:
        if self._open:
            self._abort("abandoned")
        self._next.clear()

    def _abort(self, why: str) -> Outcome:
        log.warning("transaction_aborted", reason=why)
        self.aborts += 1
        try:
            self._producer.abort_transaction(30.0)
        except KafkaException as exc:
            abort_err = error_of(exc)
            if abort_err is None or abort_err.fatal() or not heals(abort_err):
                raise CommitFailed(f"transaction abort failed: {exc}") from exc
            self._must_abort = why
            return Outcome(deferred=f"abort: {describe(abort_err)}")
        self._must_abort = None
        self._open = False
        self._next.clear()
        return Outcome(deferred=why, rewind=True)
