"""Thin Kafka plumbing: client settings, topic checks. Nothing here knows about scoring."""
