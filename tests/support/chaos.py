"""A verifiable producer and consumer, the way Kafka's own system tests count faults.

The producer sends events with unique ids at a steady rate and keeps the ids the broker
acknowledged; the consumer reads the verdicts (``read_committed``) and counts each id it
sees. After a fault: lost = acknowledged and never seen; duplicated = seen more than
once. Recovery is the longest any event sent after the fault began waited for its verdict
(for a killed member: its session timeout and the rebalance; for a broker outage: the
outage and the catching up).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer

from tests.support.kafka import wait_for
from tests.support.service import Proc, free_port, ready, service_env, start

ROUTES = 8
SCALE = float(os.environ.get("CHAOS_SCALE", "1"))
"""Multiplies the events and the time each case runs (``scripts/chaos.sh``: longer)."""
RATE = 800.0
"""Events per second the producer sends."""
COMMIT_INTERVAL_MS = 1000
SESSION_TIMEOUT_MS = 6000
"""Members run with a short session timeout, as a deployment that wants quick failover
does, so a killed member's partitions move within seconds."""


def seconds(s: float) -> float:
    return s * SCALE


@dataclass
class Tally:
    """One chaos case's figures."""

    case: str
    events_in: int = 0
    verdicts: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        note = "; ".join(self.notes)
        return (
            f"| {self.case} | {self.events_in:,} | {self.verdicts:,} | {self.lost} | "
            f"{self.duplicated} | {rec} | {note} |"
        )


HEADER = (
    "| case | events in (acknowledged) | verdicts read | lost | duplicated "
    "| recovery s (longest wait for a verdict after the fault) | notes |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
)
TALLIES: list[Tally] = []
"""Every case's figures, printed as one table at the end of the session."""


class VerifiableProducer:
    """Sends ``total`` events at ``rate`` per second on a thread; keeps what was acked."""

    def __init__(self, bootstrap: str, topic: str, total: int, rate: float, tag: str) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "partitioner": "murmur2_random",
                # Ride out the faults the test makes: acknowledged late is acknowledged.
                "message.timeout.ms": 300_000,
            }
        )
        self._topic = topic
        self.total = total
        self._rate = rate
        self.tag = tag
        self.sent_at: dict[str, float] = {}
        self.acked: set[str] = set()
        self.failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> VerifiableProducer:
        self._thread.start()
        return self

    def _report(self, event_id: str, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is None:
                self.acked.add(event_id)
            else:
                self.failed[event_id] = err.str()

    def _run(self) -> None:
        started = time.monotonic()
        for i in range(self.total):
            if self._stop.is_set():
                break
            due = started + i / self._rate
            while (delay := due - time.monotonic()) > 0 and not self._stop.is_set():
                time.sleep(min(delay, 0.05))
                self._producer.poll(0)
            route = f"/chaos/{i % ROUTES}"
            event_id = f"{self.tag}-{i}"
            body = {
                "latency": 40.0 + (i * 7919) % 60,
                "input_length": 300 + (i * 104729) % 200,
                "errors": 0,
                "route": route,
                "event_id": event_id,
            }
            while True:
                try:
                    self._producer.produce(
                        self._topic,
                        orjson.dumps(body),
                        route.encode(),
                        on_delivery=partial(self._report, event_id),
                    )
                    break
                except BufferError:
                    self._producer.poll(0.1)
            self.sent_at[event_id] = time.monotonic()
            self._producer.poll(0)

    def sent(self) -> int:
        return len(self.sent_at)

    def finish(self, timeout: float = 300.0) -> None:
        """Wait until every event is sent and acknowledged (or failed)."""
        self._thread.join(timeout)
        self._producer.flush(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class VerifiableConsumer:
    """Reads a topic from the beginning, read_committed, counting each event id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"verify-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        self._consumer.subscribe([topic])
        self.seen: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for m in self._consumer.consume(1000, 0.2):
                    if m.error() is not None or m.value() is None:
                        continue
                    record = orjson.loads(cast(bytes, m.value()))
                    event_id = record.get("event_id")
                    if record.get("kind") == "verdict" and isinstance(event_id, str):
                        self.seen[event_id] += 1
                        self.first_seen.setdefault(event_id, time.monotonic())
        finally:
            self._consumer.close()

    def wait_for(self, ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ids <= self.seen.keys():
                return True
            time.sleep(0.2)
        return ids <= self.seen.keys()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def tally(
    case: str,
    producer: VerifiableProducer,
    consumer: VerifiableConsumer,
    fault_start: float | None = None,
) -> Tally:
    """The case's figures, recorded for the session's table."""
    acked = producer.acked
    t = Tally(case, events_in=len(acked))
    t.verdicts = sum(consumer.seen[i] for i in acked)
    t.lost = len(acked - consumer.seen.keys())
    t.duplicated = sum(n - 1 for i, n in consumer.seen.items() if n > 1 and i in acked)
    if fault_start is not None:
        waits = [
            consumer.first_seen[i] - sent
            for i, sent in producer.sent_at.items()
            if sent >= fault_start and i in consumer.first_seen
        ]
        t.recovery_s = max(waits) if waits else None
    if producer.failed:
        t.notes.append(f"{len(producer.failed)} sends failed at the producer")
    TALLIES.append(t)
    return t


@dataclass
class Group:
    """Members of one consumer group, each a real ``sentinel-stream run`` process."""

    bootstrap: str
    prefix: str
    tmp_path: Path
    extra: dict[str, str] = field(default_factory=dict)
    members: dict[str, tuple[Proc, int]] = field(default_factory=dict)

    def start(self, name: str) -> Proc:
        port = free_port()
        env = service_env(
            self.bootstrap,
            self.prefix,
            port,
            SENTINEL_INSTANCE_ID=name,
            SENTINEL_COMMIT_INTERVAL_MS=str(COMMIT_INTERVAL_MS),
            SENTINEL_KAFKA_OPT_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
            SENTINEL_KAFKA_OPT_HEARTBEAT_INTERVAL_MS="1000",
            SENTINEL_KAFKA_OPT_MAX_POLL_INTERVAL_MS=str(SESSION_TIMEOUT_MS + 4000),
            **self.extra,
        )
        proc = start(env, self.tmp_path, f"{name}-{port}")
        self.members[name] = (proc, port)
        return proc

    def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        proc, port = self.members[name]
        wait_for(lambda: ready(proc, port), timeout, f"member {name} ready")

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.members[name][0].popen.send_signal(sig)

    def kill(self, name: str) -> None:
        proc = self.members.pop(name)[0]
        proc.popen.kill()
        proc.popen.wait(30)

    def stop(self, name: str) -> None:
        proc = self.members.pop(name)[0]
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(60) == 0, proc.stderr()[-3000:]

    def alive(self) -> None:
        for proc, _ in self.members.values():
            proc.alive()

    def close(self) -> None:
        for proc, _ in self.members.values():
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(30)
