"""A valid event, as every door hands it to the engine."""

from __future__ import annotations

from dataclasses import dataclass

from sentinel_stream.clock import format_event_time
from sentinel_stream.records import TelemetryEventFields


@dataclass(slots=True)
class Event:
    """What the engine needs to score one event and what its verdict repeats."""

    route: str
    latency: float
    input_length: int
    errors: int
    event_id: str
    event_time: str
    source: tuple[str, int, int] | None = None
    """(topic, partition, offset); None for events that did not come from Kafka."""
    produced_ms: int | None = None
    """The Kafka record's timestamp, for the produce-to-verdict lag."""

    @classmethod
    def from_record(
        cls,
        record: TelemetryEventFields,
        default_id: str,
        default_time: str,
        source: tuple[str, int, int] | None = None,
        produced_ms: int | None = None,
    ) -> Event:
        """The one way from a validated record (``EVENT_FIELDS``) to an event: the
        record's own id and timestamp when it has them, the door's defaults otherwise."""
        ts = record.get("timestamp")
        return cls(
            record["route"],
            record["latency"],
            record["input_length"],
            record["errors"],
            record.get("event_id") or default_id,
            format_event_time(ts) if ts is not None else default_time,
            source,
            produced_ms,
        )
