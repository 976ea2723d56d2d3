"""Offline commands: evaluation on labelled data, synthetic telemetry, JSON Schemas."""
