"""sentinel-stream: per-request anomaly verdicts, with reasons, for request telemetry on Kafka."""

from __future__ import annotations

__version__ = "0.1.0"
