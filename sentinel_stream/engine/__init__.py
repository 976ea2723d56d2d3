"""Events in, verdicts out: the one engine behind every door (Kafka, HTTP, evaluate)."""

from sentinel_stream.engine.engine import Engine
from sentinel_stream.engine.event import Event
from sentinel_stream.engine.verdict import build_verdict

__all__ = ["Engine", "Event", "build_verdict"]
