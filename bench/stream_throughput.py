"""Stream throughput and produce-to-verdict latency, next to a pass-through ceiling.

Not a test: it prints figures. Each case is a consumer with the same librdkafka settings
and the same commit cadence, on a real broker:

- ``pass-through``: consume, produce the same bytes, commit (the ceiling this machine
  and these client settings allow);
- ``pipeline``: the real :class:`~sentinel_stream.stream.pipeline.Pipeline` (decode,
  score, explain, publish, commit), at least once, fits in a worker process;
- ``exactly-once``: the same with ``SENTINEL_EXACTLY_ONCE=true`` (each commit interval
  one Kafka transaction);
- ``llm-hanging``: the pipeline with its anomalies handed to an LLM server that never
  answers (no verdict may wait for it).

Phase 1 (throughput): ``--events`` events over ``--routes`` routes are pre-loaded into the
input topic; the consumer starts and the rate is measured from the output records' own
timestamps, stamped by the broker as it appends them (first to last verdict). This also
warms every route until it has a model.

Phase 2 (latency): for each rate of ``--rates`` (the curve cases) or ``--rate`` (the
others), events are produced at that rate for ``--seconds`` into the warmed consumer,
from a load generator in its own process; the latency of each is the output record's
broker timestamp minus the input record's producer timestamp (one machine, one clock).
Refits run meanwhile: each phase reports the models the pipeline installed during it.

Before the measured runs, every case runs once at ``--rate`` on the same broker and its
figures are set apart (``warm_up``): what is measured is the pipeline beside a broker in
its steady state, not the broker's first minutes of each kind of traffic
(``--no-warm-up`` skips it).

    python bench/stream_throughput.py --events 200000 --routes 100 --rates 1000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench, tests.support

from bench.common import (
    create_topics,
    end_count,
    end_offsets,
    percentile,
    read_stamps,
    settings_for,
    wait_until,
)
from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine
from sentinel_stream.metrics import Metrics
from sentinel_stream.process import settle_heap
from sentinel_stream.stream.checkpoint import AtLeastOnce
from sentinel_stream.stream.kafka.batching import next_batch
from sentinel_stream.stream.kafka.clients import consumer_config, producer_config
from sentinel_stream.stream.kafka.produce import produce_waiting
from sentinel_stream.stream.pipeline import Pipeline
from sentinel_stream.tools.synthetic import generate

PARTITIONS = 6
CASES = ("pass-through", "pipeline", "exactly-once", "llm-hanging")


class PassThrough:
    """Consume, produce the same bytes, commit: the same clients, no scoring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self.producer = Producer(producer_config(settings, None))
        self.consumer = Consumer(consumer_config(settings, on_commit=self._on_commit))
        self.checkpoint = AtLeastOnce(
            self.consumer, self.producer, settings.input_topic, settings.commit_interval_ms / 1000
        )

    def _on_commit(self, err: Any, partitions: Any) -> None:
        self.checkpoint.on_commit(err, partitions)

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
                    self.checkpoint.commit(wait=False)  # as the pipeline commits
            self.checkpoint.commit()
        finally:
            self.consumer.close()


def preload(bootstrap: str, topic: str, events: list[dict[str, Any]], tag: str = "p") -> float:
    """Produce ``events`` as fast as the broker takes them; seconds taken."""
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
        e = {**e, "event_id": f"{tag}{i}"}
        produce_waiting(p, topic, orjson.dumps(e), e["route"].encode())
    if p.flush(120) != 0:
        raise RuntimeError("preload: the broker did not take every record in 120 s")
    return time.perf_counter() - t


def paced_producer(
    bootstrap: str, topic: str, events: list[dict[str, Any]], rate: float, total: int, tag: str
) -> None:
    """Send ``total`` events at ``rate`` per second, in 1 ms steps (run as a process).

    The records are encoded before the clock starts: on 2 cores, encoding them on the way
    took CPU the broker and the consumer under test needed."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "partitioner": "murmur2_random"})
    records = []
    for i in range(total):
        e = {**events[i % len(events)], "event_id": f"{tag}{i}"}
        records.append((orjson.dumps(e), e["route"].encode()))
    del events
    gc.collect()
    gc.freeze()
    start = time.monotonic()
    i = 0
    while i < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while i < due:
            value, key = records[i]
            produce_waiting(p, topic, value, key)
            i += 1
        p.poll(0)
        time.sleep(0.001)
    p.flush(60)


def throughput_of(stamps: dict[str, int]) -> float:
    """Records per second from the first to the last broker timestamp."""
    ts = sorted(stamps.values())
    if len(ts) < 2:
        return 0.0
    return (len(ts) - 1) / max((ts[-1] - ts[0]) / 1000.0, 1e-9)


def models_installed(runner: Any) -> int | None:
    engine = getattr(runner, "engine", None)
    if engine is None:
        return None
    return int(getattr(engine.detector.stats, "models_installed", 0))


def quiet_gc() -> None:
    """Keep this process's own bookkeeping (the events, the timestamps read) out of the
    garbage collector's way: the case runs on a thread of this process, and a full
    collection over millions of benchmark objects would stall it as no service is."""
    gc.collect()
    gc.freeze()


def latency_phase(
    bootstrap: str,
    s: Settings,
    runner: Any,
    events: list[dict[str, Any]],
    rate: float,
    seconds: float,
    tag: str,
) -> dict[str, Any]:
    """Produce at ``rate`` for ``seconds`` into the running consumer; the latency of
    each event from its input record to its output record."""
    in_start = end_offsets(bootstrap, s.input_topic) or {}
    out_start = end_offsets(bootstrap, s.output_topic) or {}
    fits_before = models_installed(runner)
    total = int(rate * seconds)
    # From another process: a load generator in this one would compete with the
    # consumer for the interpreter.
    gen = multiprocessing.get_context("spawn").Process(
        target=paced_producer, args=(bootstrap, s.input_topic, events, rate, total, tag)
    )
    gen.start()
    gen.join(seconds + 60)
    if gen.is_alive():
        gen.terminate()
    sent_at = read_stamps(bootstrap, s.input_topic, total, 60, start=in_start)
    out_end = sum(out_start.values()) + len(sent_at)
    wait_until(lambda: end_count(bootstrap, s.output_topic) >= out_end, 120)
    got = read_stamps(bootstrap, s.output_topic, len(sent_at), 60, start=out_start)
    lat = sorted(float(got[k] - v) for k, v in sent_at.items() if k in got)
    del got
    fits_after = models_installed(runner)
    sent = sorted(sent_at.values())
    span = (sent[-1] - sent[0]) / 1000.0 if len(sent) > 1 else 0.0
    n_sent = len(sent_at)
    del sent_at
    quiet_gc()
    return {
        "rate_per_s": rate,
        "sent": n_sent,
        "sent_rate_per_s": round((len(sent) - 1) / span) if span > 0 else None,
        "verdicts": len(lat),
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "models_installed": (
            fits_after - fits_before if fits_after is not None and fits_before is not None else None
        ),
    }


def run_case(
    name: str,
    bootstrap: str,
    make: Callable[[Settings], Any],
    events: list[dict[str, Any]],
    rates: list[float],
    seconds: float,
    **settings: Any,
) -> dict[str, Any]:
    prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    s = settings_for(bootstrap, prefix, **settings)
    create_topics(
        bootstrap,
        [s.input_topic, s.output_topic, s.dlq_topic, s.state_topic, s.members_topic],
        PARTITIONS,
        stamped=(s.output_topic,),
    )
    preload(bootstrap, s.input_topic, events)
    runner = make(s)
    settle_heap()  # as the service does before its loop starts (every case alike)
    thread = threading.Thread(target=runner.run, name=f"bench-{name}", daemon=True)
    thread.start()
    n = len(events)
    try:
        ok = wait_until(lambda: end_count(bootstrap, s.output_topic) >= n, 600)
        stamps = read_stamps(bootstrap, s.output_topic, n, 300)
        row: dict[str, Any] = {
            "case": name,
            "events": n,
            "complete": ok and len(stamps) == n,
            "events_per_s": round(throughput_of(stamps)),
            "models_after_throughput": models_installed(runner),
            "latency": [],
        }
        del stamps
        quiet_gc()
        for k, rate in enumerate(rates):
            time.sleep(1.0)  # let the previous phase's tail settle
            row["latency"].append(
                latency_phase(bootstrap, s, runner, events, rate, seconds, f"l{k}-")
            )
    finally:
        runner.stop()
        thread.join(60)
        if hasattr(runner, "engine"):
            runner.engine.close()
    return row


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


MAKERS: dict[str, tuple[Callable[[Settings], Any], dict[str, Any]]] = {
    "pass-through": (PassThrough, {}),
    "pipeline": (pipeline, {}),
    "exactly-once": (pipeline, {"exactly_once": True}),
    "llm-hanging": (pipeline_llm_hang, {}),
}


def warm_broker(bootstrap: str) -> None:
    """A pass-through run with a latency phase, thrown away: a broker that has just
    started (its JIT, its consumer-offsets topic) makes the first case it serves look slow,
    and the first case is the baseline."""
    events = [le.event for le in generate(20_000, 10, 0.0, seed=2)]
    run_case("warm-up", bootstrap, PassThrough, events, [5000.0], 3)


def measure(
    bootstrap: str,
    events: list[dict[str, Any]],
    cases: list[str],
    curve_cases: list[str],
    rates: list[float],
    rate: float,
    seconds: float,
    warm_cases: bool = True,
) -> dict[str, Any]:
    quiet_gc()  # the events, made once, live as long as the run
    warm_broker(bootstrap)
    warm_up = []
    if warm_cases:
        # Every case once at the headline rate, thrown away: a broker's first minutes of
        # a kind of traffic are slow while its JVM warms up (measured on a fresh local
        # broker: the pass-through's p99 at 10,000 events/s 638 ms, then 20, 11, 11 in
        # three more runs; the pipeline's, whose state topic and group commits the pass-through does
        # not exercise, 1,393 ms, then 63, 49, 27). Their figures are kept beside the
        # measured ones.
        for name in cases:
            make, settings = MAKERS[name]
            r = run_case(f"warm-up-{name}", bootstrap, make, events, [rate], seconds, **settings)
            phase = r["latency"][0]
            warm_up.append(
                {
                    "case": name,
                    "events_per_s": r["events_per_s"],
                    **{k: phase[k] for k in ("p50_ms", "p99_ms", "max_ms", "models_installed")},
                }
            )
            print(f"stream: warm-up {name} done", file=sys.stderr, flush=True)
    rows = []
    for name in cases:
        make, settings = MAKERS[name]
        case_rates = rates if name in curve_cases else [rate]
        rows.append(run_case(name, bootstrap, make, events, case_rates, seconds, **settings))
        print(f"stream: {name} done", file=sys.stderr, flush=True)
    by = {r["case"]: r for r in rows}

    def ratio(a: str, b: str) -> float | None:
        if a in by and b in by and by[b]["events_per_s"]:
            return round(float(by[a]["events_per_s"]) / float(by[b]["events_per_s"]), 3)
        return None

    for r in rows:  # the headline latency: the phase at --rate
        at = [p for p in r["latency"] if p["rate_per_s"] == rate]
        head = at[0] if at else {}
        r["latency_rate_per_s"] = rate
        r["p50_ms"] = head.get("p50_ms")
        r["p99_ms"] = head.get("p99_ms")
    return {
        "events": len(events),
        "partitions": PARTITIONS,
        "rows": rows,
        "warm_up": warm_up,
        "ratio_to_pass_through": ratio("pipeline", "pass-through"),
        "exactly_once_ratio_to_at_least_once": ratio("exactly-once", "pipeline"),
        "llm_hanging_ratio_to_pipeline": ratio("llm-hanging", "pipeline"),
    }


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10_000.0, help="the headline latency's rate")
    ap.add_argument(
        "--rates", type=floats, default=None, help="rates of the latency curve (default: --rate)"
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each latency phase")
    ap.add_argument("--cases", default="pass-through,pipeline,exactly-once")
    ap.add_argument("--curve-cases", default="pass-through,pipeline")
    ap.add_argument("--llm-hang", action="store_true", help="also the llm-hanging case")
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run every case once at --rate before measuring, thrown away (default: yes)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if args.llm_hang and "llm-hanging" not in cases:
        cases.append("llm-hanging")
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    rates = sorted(set(args.rates or []) | {args.rate})
    events = [le.event for le in generate(args.events, args.routes, 0.005, seed=1)]
    todo = (cases, args.curve_cases.split(","), rates, args.rate, args.seconds, args.warm_up)
    if args.bootstrap:
        res = measure(args.bootstrap, events, *todo)
    else:
        from tests.support.kafka_broker import broker_for_tests

        with broker_for_tests() as bootstrap:
            res = measure(bootstrap, events, *todo)
    res["routes"] = args.routes
    if args.json:
        print(json.dumps(res))
        return 0
    print(
        f"stream throughput, {args.events:,} events over {args.routes} routes, "
        f"{PARTITIONS} partitions"
    )
    print(
        f"{'case':<14}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}  (latency at {args.rate:,.0f}/s)"
    )
    for r in res["rows"]:
        print(f"{r['case']:<14}{r['events_per_s']:>12,}{r['p50_ms']!s:>10}{r['p99_ms']!s:>10}")
    print(f"{'case':<14}{'rate/s':>10}{'sent/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'models':>8}")
    for r in res["rows"]:
        for p in r["latency"]:
            print(
                f"{r['case']:<14}{p['rate_per_s']:>10,.0f}{p['sent_rate_per_s']!s:>10}"
                f"{p['p50_ms']!s:>10}{p['p99_ms']!s:>10}{p['models_installed']!s:>8}"
            )
    print(f"pipeline / pass-through throughput: {res['ratio_to_pass_through']}")
    print(f"exactly-once / at-least-once throughput: {res['exactly_once_ratio_to_at_least_once']}")
    if res["llm_hanging_ratio_to_pipeline"] is not None:
        print(
            "pipeline with a hanging LLM / pipeline without: "
            f"{res['llm_hanging_ratio_to_pipeline']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
