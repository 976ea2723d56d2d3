"""What the benchmarks share: paths, subprocess JSON, waiting, and the Kafka reads they
time things with (watermarks, record timestamps), robust to a topic created a moment ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DATASETS = ROOT.parent / "shared" / "datasets"


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def run_json(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> Any:
    """Run a benchmark script that prints one JSON document as its last line."""
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def topic_env(prefix: str) -> dict[str, str]:
    """The topics of a benchmark's member, named after ``prefix``."""
    return {
        "SENTINEL_INPUT_TOPIC": f"{prefix}.in",
        "SENTINEL_OUTPUT_TOPIC": f"{prefix}.out",
        "SENTINEL_DLQ_TOPIC": f"{prefix}.dlq",
        "SENTINEL_STATE_TOPIC": f"{prefix}.state",
        "SENTINEL_MEMBERS_TOPIC": f"{prefix}.members",
    }


def settings_for(bootstrap: str, prefix: str, **extra: Any) -> Any:
    """Production settings for an in-process member on ``prefix``'s topics and group, fits
    in one worker process; ``extra`` overrides."""
    from sentinel_stream.config import Settings

    topics = {k.removeprefix("SENTINEL_").lower(): v for k, v in topic_env(prefix).items()}
    fields: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "group_id": f"{prefix}-g",
        "instance_id": f"{prefix}-member",
        "refit_workers": 1,
        **topics,
        **extra,
    }
    return Settings(**fields)


PIPELINE_THREAD = "sentinel-pipeline"


class Member:
    """The real pipeline of one member, in this process, on a thread of its own (named
    ``PIPELINE_THREAD``, so that a profile can pick it out)."""

    def __init__(self, settings: Any) -> None:
        from sentinel_stream.engine import Engine
        from sentinel_stream.metrics import Metrics
        from sentinel_stream.process import limit_malloc_arenas
        from sentinel_stream.stream.pipeline import Pipeline

        limit_malloc_arenas()  # as the service runs (the arenas threads made before stay)
        self.engine = Engine(settings)
        self.pipeline = Pipeline(settings, self.engine, Metrics())
        self._thread = threading.Thread(target=self.pipeline.run, name=PIPELINE_THREAD, daemon=True)

    def start(self) -> Member:
        from sentinel_stream.process import settle_heap

        settle_heap()  # as the service does before its loop starts
        self._thread.start()
        return self

    @property
    def records(self) -> int:
        """Records the loop has handled (its own count: asking the broker would cost it)."""
        return int(self.pipeline.status.records)

    def stop(self) -> None:
        self.pipeline.stop()
        self._thread.join(60)
        self.engine.close()


def bench_env(**extra: str) -> dict[str, str]:
    """This environment without the service's own settings (a benchmark sets its own)."""
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("SENTINEL_", "OLLAMA_"))
    }
    env.update(extra)
    return env


def create_topics(
    bootstrap: str,
    names: list[str],
    partitions: int,
    stamped: tuple[str, ...] = (),
    compacted: tuple[str, ...] = (),
) -> None:
    """Create topics; those in ``stamped`` have the broker stamp records as it appends them
    (``LogAppendTime``), so that a rate or a latency measured from them is what reached
    the broker; those in ``compacted`` (and any ``*.state``) are compacted."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = []
    for n in names:
        config: dict[str, str] = {}
        if n in stamped:
            config["message.timestamp.type"] = "LogAppendTime"
        if n in compacted or n.endswith((".state", ".members")):
            config["cleanup.policy"] = "compact"
        topics.append(NewTopic(n, 1 if n.endswith(".members") else partitions, 1, config=config))
    for f in admin.create_topics(topics).values():
        f.result(timeout=30)
    # A fresh client may not know a topic the broker created a moment ago.
    wait_until(lambda: all(end_offsets(bootstrap, n) is not None for n in names), 30)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int] | None:
    """Partition -> end offset, or None while the topic is not yet known to a client."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex}"})
    try:
        md = c.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return None
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in t.partitions
        }
    except KafkaException:
        return None
    finally:
        c.close()


def end_count(bootstrap: str, topic: str) -> int:
    """Records in ``topic`` (its partitions' end offsets added up; 0 while unknown)."""
    ends = end_offsets(bootstrap, topic)
    return sum(ends.values()) if ends else 0


def read_stamps(
    bootstrap: str,
    topic: str,
    want: int,
    timeout: float,
    start: dict[int, int] | None = None,
    key: str = "event_id",
    prefix: str = "",
) -> dict[str, int]:
    """``value[key]`` -> the record's timestamp (ms) for the JSON records of ``topic``
    after ``start`` (partition -> offset; default: from the beginning) whose ``key``
    starts with ``prefix``, reading until ``want`` records were seen or ``timeout``."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rd-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    ends = start if start is not None else {p: 0 for p in (end_offsets(bootstrap, topic) or {})}
    c.assign([TopicPartition(topic, p, o) for p, o in ends.items()])
    out: dict[str, int] = {}
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < want and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error() is not None:
                    continue
                seen += 1
                ident = orjson.loads(m.value() or b"{}").get(key)
                if isinstance(ident, str) and ident.startswith(prefix):
                    out[ident] = m.timestamp()[1]
    finally:
        c.close()
    return out


def percentile(sorted_values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of values already sorted."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * (len(sorted_values) - 1)))]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
