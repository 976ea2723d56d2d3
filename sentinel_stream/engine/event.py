"""A valid event, as every door hands it to the engine."""

from __future__ import annotations

from dataclasses import dataclass

from sentinel_stream.clock import format_event_time
from sentinel_stream.records import TelemetryEvent


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
        record: TelemetryEvent,
        default_id: str,
        default_time: str,
        source: tuple[str, int, int] | None = None,
        produced_ms: int | None = None,
    ) -> Event:
        """The one way from a validated record to an event: the record's own id and
        timestamp when it has them, the door's defaults otherwise."""
        return cls(
            route=record.route,
            latency=record.latency,
            input_length=record.input_length,
            errors=record.errors,
            event_id=record.event_id or default_id,
            event_time=(
                format_event_time(record.timestamp)
                if record.timestamp is not None
                else default_time
            ),
            source=source,
            produced_ms=produced_ms,
        )
