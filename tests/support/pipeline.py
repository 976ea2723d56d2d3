"""The Kafka loop run in-process on a thread, for tests that drive it directly."""

from __future__ import annotations

import threading
from typing import Any, cast

import orjson
from confluent_kafka import Message

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine
from sentinel_stream.metrics import Metrics
from sentinel_stream.stream.kafka.topics import TopicLimits
from sentinel_stream.stream.pipeline import Pipeline


def settings_for(bootstrap: str, prefix: str, **kw: Any) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        group_id=f"{prefix}-group",
        input_topic=f"{prefix}.telemetry",
        output_topic=f"{prefix}.verdicts",
        dlq_topic=f"{prefix}.dlq",
        state_topic=f"{prefix}.state",
        members_topic=f"{prefix}.members",
        refit_workers=0,
        commit_interval_ms=200,
        seed=1,
        **kw,
    )


class Running:
    """A pipeline on a thread, stopped gracefully at exit."""

    def __init__(
        self, settings: Settings, engine: Engine | None = None, limits: TopicLimits | None = None
    ) -> None:
        self.engine = engine if engine is not None else Engine(settings)
        self.pipeline = Pipeline(settings, self.engine, Metrics(), limits=limits)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.pipeline.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipeline.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


def service_topics(s: Settings) -> list[str]:
    return [s.input_topic, s.output_topic, s.dlq_topic, s.state_topic, s.members_topic]


def values(msgs: list[Message]) -> list[dict[str, Any]]:
    return [orjson.loads(cast(bytes, m.value())) for m in msgs]
