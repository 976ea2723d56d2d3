"""What the Kafka loop reports about itself, for the probes to read.

Its own small module so that the HTTP side server can report the loop's state without
importing the loop (and with it the Kafka client): the loop's thread writes these
fields, the server's event loop reads them. Every field is a plain value written whole,
so a reader never sees a half-made one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

STUCK_AFTER_S = 60.0
"""A running loop whose heartbeat is older than this is stuck: liveness fails."""


@dataclass
class LoopStatus:
    """The consumer loop's state (written by its thread only)."""

    running: bool = False
    draining: bool = False
    """A graceful stop has begun: not ready any more, still alive."""
    assigned: frozenset[int] = frozenset()
    restoring: frozenset[int] = frozenset()
    """Partitions assigned but not yet scored: their state is being restored."""
    heartbeat: float = 0.0
    """time.monotonic() of the loop's last sign of life: a poll, or a turn of any wait."""
    waiting_for: str | None = None
    """What the loop waits on right now, if anything (the broker, room in the queue)."""
    broker_up: bool = False
    """A broker answered the consumer recently (librdkafka's broker states)."""
    producer_ok: bool = False
    """The last commit found everything produced acknowledged."""
    consumer_lag: int | None = None
    error: str | None = None
    records: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def state(self, now: float | None = None) -> str:
        """``failed``, ``stopped``, ``stuck``, ``draining``, ``waiting`` or ``running``."""
        now = time.monotonic() if now is None else now
        if self.error:
            return "failed"
        if not self.running:
            return "stopped"
        if self.heartbeat and now - self.heartbeat > STUCK_AFTER_S:
            return "stuck"
        if self.draining:
            return "draining"
        return "waiting" if self.waiting_for else "running"

    def not_ready(self) -> list[str]:
        """Why the member should not receive traffic now (empty: ready)."""
        reasons = []
        if not self.running:
            reasons.append("consumer not running")
        if self.draining:
            reasons.append("draining: shutting down")
        if not self.broker_up:
            reasons.append("no broker reachable")
        if not self.producer_ok:
            reasons.append("producer not acknowledged by the broker")
        if not self.assigned:
            reasons.append("no partitions assigned")
        if self.restoring:
            reasons.append(f"restoring state of {len(self.restoring)} partitions")
        return reasons
