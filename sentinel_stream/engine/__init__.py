"""Events in, verdicts out: the one engine behind every door (Kafka, HTTP, evaluate)."""

from sentinel_stream.engine.engine import Encoded, Engine, Failed
from sentinel_stream.engine.event import Event
from sentinel_stream.engine.verdict import build_verdict

__all__ = ["Encoded", "Engine", "Event", "Failed", "build_verdict"]
