"""Which Kafka failures heal by themselves, and which stop the member.

A member must ride out what a healthy cluster does every day (a broker restarting, a
coordinator moving, a rebalance racing a commit) and must stop, loudly, on what no retry
can mend (no permission, a fenced producer, a topic that is gone). This module is the one
place that decides which is which; the README's table of the two lists is checked
against it by ``tests/unit/test_errors.py``.

Healing failures are retried with backoff (:class:`Backoff`): nothing is committed until
what was produced for the records is acknowledged, so waiting loses nothing. A failure
that is not on the healing list, and that librdkafka does not mark retriable, is fatal.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException

HEALS: dict[int, str] = {
    KafkaError._TRANSPORT: "connection to a broker lost",
    KafkaError._ALL_BROKERS_DOWN: "no broker reachable",
    KafkaError._RESOLVE: "broker address does not resolve (yet)",
    KafkaError._TIMED_OUT: "a request timed out",
    KafkaError._TIMED_OUT_QUEUE: "a request timed out in the local queue",
    KafkaError._MSG_TIMED_OUT: "a record was not acknowledged in time",
    KafkaError._WAIT_COORD: "waiting for the group coordinator",
    KafkaError._NO_OFFSET: "nothing to commit",
    KafkaError._MAX_POLL_EXCEEDED: "the loop was away longer than max.poll.interval.ms",
    KafkaError._ASSIGNMENT_LOST: "partitions lost to a rebalance",
    KafkaError._PREV_IN_PROGRESS: "a previous operation is still in progress",
    KafkaError._UNKNOWN_PARTITION: "partition not (yet) known to the client",
    KafkaError.REQUEST_TIMED_OUT: "a broker did not answer in time",
    KafkaError.NETWORK_EXCEPTION: "network error",
    KafkaError.COORDINATOR_NOT_AVAILABLE: "group coordinator moving or starting",
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS: "group coordinator loading",
    KafkaError.NOT_COORDINATOR: "group coordinator moved",
    KafkaError.REBALANCE_IN_PROGRESS: "a rebalance raced the commit",
    KafkaError.ILLEGAL_GENERATION: "the group moved on to a new generation",
    KafkaError.UNKNOWN_MEMBER_ID: "this member was removed from the group; it rejoins",
    KafkaError.STALE_MEMBER_EPOCH: "the member epoch moved on",
    KafkaError.FENCED_MEMBER_EPOCH: "the member epoch moved on",
    KafkaError.NOT_LEADER_FOR_PARTITION: "partition leadership moved",
    KafkaError.LEADER_NOT_AVAILABLE: "partition leader being elected",
    KafkaError.NOT_ENOUGH_REPLICAS: "too few in-sync replicas for now",
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND: "too few in-sync replicas for now",
    KafkaError.KAFKA_STORAGE_ERROR: "a broker's disk failed; another replica takes over",
    KafkaError.CONCURRENT_TRANSACTIONS: "the previous transaction is still completing",
}
"""Failures that heal: retried with backoff, never fatal on their own."""

FATAL: dict[int, str] = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "no permission on a topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "no permission on the consumer group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "no permission on the cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "no permission on the transactional id",
    KafkaError.SASL_AUTHENTICATION_FAILED: "SASL authentication failed",
    KafkaError._AUTHENTICATION: "authentication failed",
    KafkaError._SSL: "TLS failure",
    KafkaError.PRODUCER_FENCED: "another member took over this transactional id",
    KafkaError._FENCED: "this producer was fenced by a newer one",
    KafkaError.FENCED_INSTANCE_ID: "another member runs with this group.instance.id",
    KafkaError._UNKNOWN_TOPIC: "a topic does not exist",
    KafkaError.INVALID_CONFIG: "invalid configuration",
    KafkaError._INVALID_ARG: "invalid configuration",
}
"""Failures that stop the member (exit 1, the reason logged). Anything else that
librdkafka does not mark retriable stops it too."""


def heals(err: KafkaError) -> bool:
    """True when retrying later can succeed."""
    if err.fatal() or err.code() in FATAL:
        return False
    return err.code() in HEALS or err.retriable()


def error_of(exc: KafkaException) -> KafkaError | None:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def describe(err: KafkaError) -> str:
    """``CODE_NAME: what it means``, for logs and the fatal exit message."""
    why = HEALS.get(err.code()) or FATAL.get(err.code()) or err.str()
    return f"{err.name()}: {why}"


class Backoff:
    """Exponential backoff between attempts, reset by a success.

    The loop asks :meth:`ready` before each attempt instead of sleeping, so it keeps
    serving callbacks, the probes' heartbeat and shutdown while it waits.
    """

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self._first = first_s
        self._max = max_s
        self._delay = 0.0
        self._next = 0.0
        self.failures = 0

    def ready(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self._next

    def failed(self, now: float | None = None) -> float:
        """Record a failure; returns the delay before the next attempt."""
        self.failures += 1
        self._delay = min(self._max, self._delay * 2 if self._delay else self._first)
        self._next = (time.monotonic() if now is None else now) + self._delay
        return self._delay

    def succeeded(self) -> None:
        self.failures = 0
        self._delay = 0.0
        self._next = 0.0
