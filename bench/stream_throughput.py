"""Stream throughput and produce-to-verdict latency, next to a pass-through ceiling.

Not a test: it prints figures. Two consumers run the same two phases on a real broker,
with the same librdkafka settings and the same commit cadence:

- ``pipeline``: the real :class:`~sentinel_stream.stream.pipeline.Pipeline` (decode,
  score, explain, publish, commit), at least once;
- ``exactly-once``: the same with ``SENTINEL_EXACTLY_ONCE=true`` (each commit interval
  one Kafka transaction; the latency phase reads ``read_committed``);
- ``pass-through``: consume, produce the same bytes, commit (the ceiling this machine
  and these client settings allow).

Phase 1 (throughput): ``--events`` events over ``--routes`` routes are pre-loaded into the
input topic; the consumer starts and the rate is measured from the output records' own
timestamps (first to last verdict). Phase 2 (latency): events are produced at ``--rate``
for ``--seconds`` into the warmed consumer; the latency of each is the output record's
timestamp minus the input record's (both stamped by producers on this machine).

    python bench/stream_throughput.py --events 200000 --routes 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine
from sentinel_stream.metrics import Metrics
from sentinel_stream.stream.checkpoint import AtLeastOnce
from sentinel_stream.stream.kafka.batching import next_batch
from sentinel_stream.stream.kafka.clients import consumer_config, producer_config
from sentinel_stream.stream.kafka.produce import produce_waiting
from sentinel_stream.stream.pipeline import Pipeline
from sentinel_stream.tools.synthetic import generate
from tests.support.kafka import create_topics as make_topics

PARTITIONS = 6


class PassThrough:
    """Consume, produce the same bytes, commit: the same clients, no scoring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self.producer = Producer(producer_config(settings, None))
        self.consumer = Consumer(consumer_config(settings))
        self.checkpoint = AtLeastOnce(
            self.consumer, self.producer, settings.input_topic, settings.commit_interval_ms / 1000
        )

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        s = self.settings
        self.consumer.subscribe([s.input_topic])
        out = s.output_topic
        try:
            while not self._stop.is_set():
                msgs = next_batch(
                    self.consumer, s.batch_max, s.poll_timeout_ms / 1000, s.batch_linger_ms / 1000
                )
                for m in msgs:
                    if m.error() is not None:
                        continue
                    produce_waiting(self.producer, out, m.value(), m.key())
                    self.checkpoint.track(m.partition() or 0, m.offset() or 0)
                self.producer.poll(0)
                if self.checkpoint.due():
                    self.checkpoint.commit()
            self.checkpoint.commit()
        finally:
            self.consumer.close()


def create_topics(bootstrap: str, names: list[str], output: str) -> None:
    make_topics(bootstrap, [n for n in names if n != output], PARTITIONS)
    # The output topic stamps records when the broker appends them, so the rate measured
    # from them is what reached the broker, not how fast records entered a local queue.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"message.timestamp.type": "LogAppendTime"}
    admin.create_topics([NewTopic(output, PARTITIONS, 1, config=config)])[output].result(30)


def preload(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "partitioner": "murmur2_random",
        }
    )
    t = time.perf_counter()
    for i, e in enumerate(events):
        e = {**e, "event_id": f"p{i}"}
        produce_waiting(p, topic, orjson.dumps(e), e["route"].encode())
    assert p.flush(120) == 0
    return time.perf_counter() - t


def end_count(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex}"})
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        )
    finally:
        c.close()


def paced_producer(
    bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float, total: int
) -> None:
    """Send ``total`` events at ``rate`` per second, in 1 ms steps (run as a process)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "partitioner": "murmur2_random"})
    start = time.monotonic()
    i = 0
    while i < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while i < due:
            e = {**events[i % len(events)], "event_id": f"l{i}"}
            produce_waiting(p, topic, orjson.dumps(e), e["route"].encode())
            i += 1
        p.poll(0)
        time.sleep(0.001)
    p.flush(60)


def read_timestamps(
    bootstrap: str, topic: str, want: int, timeout: float, prefix: str = ""
) -> dict[str, int]:
    """event_id -> record timestamp (ms) of the records of ``topic`` whose event id
    starts with ``prefix``, reading until ``want`` records are seen."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rd-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: dict[str, int] = {}
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < want and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error() is None:
                    seen += 1
                    event_id = orjson.loads(m.value())["event_id"]
                    if event_id.startswith(prefix):
                        out[event_id] = m.timestamp()[1]
    finally:
        c.close()
    return out


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def run_case(
    name: str,
    bootstrap: str,
    make: Callable[[Settings], Any],
    events: list[dict[str, Any]],
    rate: float,
    seconds: float,
    **settings: Any,
) -> dict[str, Any]:
    prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    s = Settings(  # type: ignore[call-arg]
        kafka_bootstrap=bootstrap,
        group_id=f"{prefix}-g",
        input_topic=f"{prefix}.in",
        output_topic=f"{prefix}.out",
        dlq_topic=f"{prefix}.dlq",
        state_topic=f"{prefix}.state",
        members_topic=f"{prefix}.members",
        refit_workers=1,
        instance_id=f"{prefix}-member",
        **settings,
    )
    create_topics(
        bootstrap,
        [s.input_topic, s.output_topic, s.dlq_topic, s.state_topic, s.members_topic],
        s.output_topic,
    )
    preload(bootstrap, s.input_topic, events)
    runner = make(s)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    n = len(events)
    ok = wait_until(lambda: end_count(bootstrap, s.output_topic) >= n, 600)
    stamps = read_timestamps(bootstrap, s.output_topic, n, 300)
    ts = sorted(stamps.values())
    throughput = (len(ts) - 1) / max((ts[-1] - ts[0]) / 1000.0, 1e-9) if len(ts) > 1 else 0.0
    # Phase 2: paced load into the warmed consumer, from another process (a load
    # generator in this one would compete with the pipeline for the interpreter).
    total = int(rate * seconds)
    gen = multiprocessing.get_context("spawn").Process(
        target=paced_producer, args=(bootstrap, s.input_topic, events, rate, total)
    )
    gen.start()
    gen.join(seconds + 60)
    sent_at = read_timestamps(bootstrap, s.input_topic, n + total, 120, prefix="l")
    wait_until(lambda: end_count(bootstrap, s.output_topic) >= n + len(sent_at), 120)
    got = read_timestamps(bootstrap, s.output_topic, n + len(sent_at), 120, prefix="l")
    lat = sorted(got[k] - v for k, v in sent_at.items() if k in got)
    runner.stop()
    thread.join(60)
    if hasattr(runner, "engine"):
        runner.engine.close()
    return {
        "case": name,
        "events": n,
        "complete": ok and len(stamps) == n,
        "events_per_s": round(throughput),
        "latency_events": len(lat),
        "latency_rate_per_s": rate,
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] if lat else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s in the latency phase")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--llm-hang",
        action="store_true",
        help="also run the pipeline with an LLM configured that never answers",
    )
    args = ap.parse_args()
    events = [le.event for le in generate(args.events, args.routes, 0.005, seed=1)]

    def pipeline(s: Settings) -> Pipeline:
        return Pipeline(s, Engine(s), Metrics())

    def pipeline_llm_hang(s: Settings) -> Pipeline:
        """The pipeline with its anomalies handed to an LLM server that never answers."""
        from sentinel_stream.explain.llm import ChatBackend, Explainer, ExplainRequest
        from tests.support.llm_standins import StandIn

        server = StandIn("hang").start()
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        backend = ChatBackend("openai", server.url, "hang", None, 60)
        explainer = Explainer(backend, lambda record: None, timeout_s=s.llm_timeout_s)
        asyncio.run_coroutine_threadsafe(explainer.start(), loop).result(10)
        return Pipeline(
            s,
            Engine(s),
            Metrics(),
            on_anomaly=lambda v: explainer.submit_threadsafe(ExplainRequest.from_verdict(v)),
        )

    def measure(bootstrap: str) -> list[dict[str, Any]]:
        rows = [
            run_case("pass-through", bootstrap, PassThrough, events, args.rate, args.seconds),
            run_case("pipeline", bootstrap, pipeline, events, args.rate, args.seconds),
            run_case(
                "exactly-once",
                bootstrap,
                pipeline,
                events,
                args.rate,
                args.seconds,
                exactly_once=True,
            ),
        ]
        if args.llm_hang:
            rows.append(
                run_case(
                    "llm-hanging", bootstrap, pipeline_llm_hang, events, args.rate, args.seconds
                )
            )
        return rows

    if args.bootstrap:
        rows = measure(args.bootstrap)
    else:
        from tests.support.kafka_broker import broker_for_tests

        with broker_for_tests() as bootstrap:
            rows = measure(bootstrap)
    base, ours = rows[0], rows[1]
    ratio = ours["events_per_s"] / base["events_per_s"] if base["events_per_s"] else 0.0
    eos = rows[2]
    eos_ratio = eos["events_per_s"] / ours["events_per_s"] if ours["events_per_s"] else 0.0
    hang_ratio = (
        rows[3]["events_per_s"] / ours["events_per_s"]
        if len(rows) > 3 and ours["events_per_s"]
        else None
    )
    if args.json:
        print(
            json.dumps(
                {
                    "rows": rows,
                    "ratio_to_pass_through": round(ratio, 3),
                    "exactly_once_ratio_to_at_least_once": round(eos_ratio, 3),
                    "llm_hanging_ratio_to_pipeline": hang_ratio,
                }
            )
        )
        return 0
    print(
        f"stream throughput, {args.events:,} events over {args.routes} routes, "
        f"{PARTITIONS} partitions"
    )
    print(
        f"{'case':<14}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}  (latency at {args.rate:,.0f}/s)"
    )
    for r in rows:
        print(f"{r['case']:<14}{r['events_per_s']:>12,}{r['p50_ms']!s:>10}{r['p99_ms']!s:>10}")
    print(f"pipeline / pass-through throughput: {ratio:.2f}")
    print(f"exactly-once / at-least-once throughput: {eos_ratio:.2f}")
    if hang_ratio is not None:
        print(f"pipeline with a hanging LLM / pipeline without: {hang_ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
