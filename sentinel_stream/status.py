"""What the Kafka loop reports about itself, for the probes to read.

Its own small module so that the HTTP side server can report the loop's state without
importing the loop (and with it the Kafka client): the loop's thread writes these
fields, the server's event loop reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoopStatus:
    """The consumer loop's state (written by its thread only)."""

    running: bool = False
    assigned: set[int] = field(default_factory=set)
    last_poll: float = 0.0
    """time.monotonic() of the last consume call."""
    consumer_lag: int | None = None
    producer_ok: bool = False
    error: str | None = None
    records: int = 0
