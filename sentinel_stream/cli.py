"""The ``sentinel-stream`` command line: run, demo-producer, tail, schemas.

Each command imports what it needs when it runs, not this module: a refit worker
(multiprocessing's spawn) imports the parent's main module, this one under the console
script, and must not load the service's settings and logging with it (the README's
*Memory* counts the worker's megabytes).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from sentinel_stream import __version__

if TYPE_CHECKING:
    from sentinel_stream.config import Settings


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    from sentinel_stream.config import load_settings

    if getattr(args, "bootstrap", None):
        overrides["kafka_bootstrap"] = args.bootstrap
    return load_settings(**overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from sentinel_stream.app import run
    from sentinel_stream.http_process import HttpProcessFailed
    from sentinel_stream.logs import configure_logging
    from sentinel_stream.stream.kafka.topics import BrokerUnreachable, TopicsMissing

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    try:
        return run(settings)
    except (TopicsMissing, BrokerUnreachable) as exc:
        print(f"sentinel-stream: {exc}", file=sys.stderr)
        return 2
    except HttpProcessFailed as exc:
        print(f"sentinel-stream: {exc}", file=sys.stderr)
        return 1


def cmd_demo_producer(args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from sentinel_stream.stream.kafka.clients import make_admin
    from sentinel_stream.stream.kafka.produce import produce_waiting
    from sentinel_stream.stream.kafka.topics import ensure_topics
    from sentinel_stream.tools.synthetic import generate

    settings = _settings(args, create_topics=True) if args.create_topics else _settings(args)
    topic = args.topic or settings.input_topic
    if args.create_topics:
        ensure_topics(make_admin(settings), settings)
    producer = Producer(
        {
            **settings.kafka_common(),
            "linger.ms": "5",
            "enable.idempotence": "true",
            "partitioner": settings.partitioner,
        }
    )
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    limit = args.count if args.count else 2**62
    started = time.monotonic()
    deadline = started + args.duration if args.duration > 0 else float("inf")
    sent = anomalies = 0
    next_report = started + 1.0
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    for item in generate(limit if args.count else 10**12, args.routes, args.anomaly_share, seed):
        now = time.monotonic()
        if stop["now"] or now >= deadline or sent >= limit:
            break
        if args.rate > 0:
            due = started + sent / args.rate
            if due > now:
                time.sleep(due - now)
        headers: list[tuple[str, str | bytes | None]] = [
            ("sentinel.demo.label", (item.kind or "normal").encode())
        ]
        produce_waiting(
            producer, topic, orjson.dumps(item.event), item.event["route"].encode(), headers
        )
        producer.poll(0)
        sent += 1
        anomalies += item.is_anomaly
        if now >= next_report:
            rate = sent / max(now - started, 1e-9)
            print(
                f"demo-producer: sent {sent:,} events ({rate:,.0f}/s), "
                f"{anomalies:,} labelled anomalies",
                file=sys.stderr,
                flush=True,
            )
            next_report = now + 1.0
    left = producer.flush(30)
    print(
        f"demo-producer: done, sent {sent:,} events to {topic}, {anomalies:,} labelled anomalies"
        + (f", {left} NOT delivered" if left else ""),
        file=sys.stderr,
    )
    return 1 if left else 0


def format_verdict(v: dict[str, Any]) -> str:
    """One readable line per verdict."""
    when = str(v.get("scored_at", ""))[11:23]
    if v.get("kind") == "explanation":
        return f"{when} EXPLAIN {v['route']} {v['event_id']}: {v['explanation']['text']}"
    mark = "THREAT" if v["is_anomaly"] else "ok    "
    model = "rules, warming up" if v["warming_up"] else f"{v['detector']} v{v['model_version']}"
    line = f"{when} {mark} {v['route']:<24} score {v['score']:.2f} / {v['threshold']:.2f} ({model})"
    if v["is_anomaly"]:
        line += f": {v['explanation']['text']}"
    return line


def cmd_tail(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer

    settings = _settings(args)
    consumer = Consumer(
        {
            **settings.kafka_common(),
            "group.id": f"sentinel-tail-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": "false",
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        }
    )
    consumer.subscribe([args.topic or settings.output_topic])
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    shown = 0
    deadline = time.monotonic() + args.timeout if args.timeout else float("inf")
    try:
        while (
            not stop["now"] and time.monotonic() < deadline and (not args.max or shown < args.max)
        ):
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            try:
                v = orjson.loads(msg.value() or b"")
            except orjson.JSONDecodeError:
                continue
            if args.anomalies_only and not v.get("is_anomaly", v.get("kind") == "explanation"):
                continue
            print(json.dumps(v) if args.json else format_verdict(v), flush=True)
            shown += 1
    finally:
        consumer.close()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from sentinel_stream.config import load_settings
    from sentinel_stream.tools import evaluate as ev

    overrides: dict[str, Any] = {"refit_workers": 0, "seed": args.seed}
    settings = load_settings(**overrides)
    try:
        data = ev.load(Path(args.file), args.label)
    except (OSError, ValueError, KeyError) as exc:
        print(f"sentinel-stream evaluate: {exc}", file=sys.stderr)
        return 2
    if data.y.sum() == 0 or data.y.sum() == len(data.y):
        print("sentinel-stream evaluate: the labels need both classes", file=sys.stderr)
        return 2
    def progress(seed: int) -> ev.Progress | None:
        label = "sentinel-stream" if args.fit_seeds == 1 else f"sentinel-stream, seed {seed}"
        return None if args.json else ev.terminal_progress(label)

    # Everything streams in the arrival order; --scores are written in the file's order.
    order = ev.arrival_order(data, args.order, args.seed or 0)
    stream = ev.reordered(data, order)
    seeds = [args.seed + k for k in range(args.fit_seeds)]
    note = "streaming" if args.order == "file" else f"streaming, {args.order} order"
    reports, scores, _ = ev.over_fit_seeds(stream, settings, seeds, note, progress)
    rows = [ev.summarise(reports)]
    if args.scores:
        in_file_order = np.empty_like(scores)
        in_file_order[order] = scores
        Path(args.scores).write_text(
            "".join(f"{s:.17g}\n" for s in in_file_order), encoding="utf-8"
        )
    if args.baselines:
        x = ev.baseline_features(stream)
        rows.append(ev.summarise([ev.baseline_batch(x, stream.y, k)[0] for k in seeds]))
        if args.hst_rows > 0:
            rows.append(ev.baseline_hst(x, stream.y, args.hst_rows)[0])
        if args.v1_rows > 0:
            rows.append(ev.baseline_v1(x, stream.y, args.v1_rows)[0])
    if args.json:
        print(json.dumps({"file": str(args.file), "order": args.order, "results": rows}))
    else:
        print(
            f"{args.file}: {len(data.y):,} rows, {int(data.y.sum()):,} anomalies, "
            f"{args.order} order"
        )
        print(ev.format_table(rows))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_synth(args: argparse.Namespace) -> int:
    import csv

    from sentinel_stream.tools.synthetic import generate

    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["route", "latency", "input_length", "errors", "label", "kind"])
        for item in generate(args.events, args.routes, args.anomaly_share, args.seed):
            e = item.event
            w.writerow(
                [
                    e["route"],
                    e["latency"],
                    e["input_length"],
                    e["errors"],
                    int(item.is_anomaly),
                    item.kind or "",
                ]
            )
    print(args.out)
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from sentinel_stream.tools.schemas import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sentinel-stream", description="Per-request anomaly verdicts for telemetry on Kafka."
    )
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume telemetry, publish verdicts, serve HTTP")
    run.add_argument("--bootstrap", help="overrides SENTINEL_KAFKA_BOOTSTRAP")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo-producer", help="synthetic telemetry with labelled anomalies")
    demo.add_argument("--bootstrap")
    demo.add_argument("--topic", help="default: SENTINEL_INPUT_TOPIC")
    demo.add_argument(
        "--rate", type=float, default=200.0, help="events per second (0: as fast as possible)"
    )
    demo.add_argument("--routes", type=int, default=20)
    demo.add_argument("--anomaly-share", type=float, default=0.01)
    demo.add_argument(
        "--duration", type=float, default=60.0, help="seconds (0: until --count or Ctrl-C)"
    )
    demo.add_argument("--count", type=int, default=0, help="stop after this many events")
    demo.add_argument("--seed", type=int)
    demo.add_argument("--create-topics", action="store_true", help="create missing topics first")
    demo.set_defaults(func=cmd_demo_producer)

    tail = sub.add_parser("tail", help="print verdicts as they are published")
    tail.add_argument("--bootstrap")
    tail.add_argument("--topic", help="default: SENTINEL_OUTPUT_TOPIC")
    tail.add_argument("--anomalies-only", action="store_true")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--json", action="store_true", help="print records as JSON")
    tail.add_argument("--max", type=int, default=0, help="stop after this many records")
    tail.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    tail.set_defaults(func=cmd_tail)

    evaluate = sub.add_parser("evaluate", help="detection quality on a labelled data set")
    evaluate.add_argument("file", help="ODDS .mat (X, y) or CSV with a label column")
    evaluate.add_argument("--label", help="the CSV's label column (default: label, y, ...)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--scores", help="write each row's score, one per line, in order")
    evaluate.add_argument(
        "--seed", type=int, default=1, help="seeds the fits and the shuffled order"
    )
    evaluate.add_argument(
        "--fit-seeds",
        type=_positive,
        default=1,
        metavar="K",
        help="repeat the stream and the batch model with the fit seeds --seed .. --seed+K-1 "
        "on the same arrival order; report each one's mean and sample standard deviation "
        "(--scores: the first seed's)",
    )
    evaluate.add_argument(
        "--order",
        choices=("file", "shuffled", "anomalies-first"),
        default="file",
        help="arrival order: the file's (default), shuffled by --seed, or the labelled "
        "anomalies first (a route that begins in trouble)",
    )
    evaluate.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the baselines in the same harness (default: yes)",
    )
    evaluate.add_argument(
        "--v1-rows",
        "--older-rows",
        dest="v1_rows",
        type=int,
        default=20_000,
        help="prefix the v1 service's design runs on (it is slow: one sklearn call a row); "
        "0 skips it",
    )
    evaluate.add_argument(
        "--hst-rows",
        type=int,
        default=10**9,
        help="prefix River's HalfSpaceTrees runs on; 0 skips it",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    synth = sub.add_parser("synth", help="write a labelled synthetic telemetry CSV")
    synth.add_argument("out")
    synth.add_argument("--events", type=int, default=100_000)
    synth.add_argument("--routes", type=int, default=20)
    synth.add_argument("--anomaly-share", type=float, default=0.01)
    synth.add_argument("--seed", type=int, default=7)
    synth.set_defaults(func=cmd_synth)

    schemas = sub.add_parser("schemas", help="write the records' JSON Schemas")
    schemas.add_argument("--out", default="schemas")
    schemas.set_defaults(func=cmd_schemas)
    return p


def main(argv: list[str] | None = None) -> int:
    from sentinel_stream.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"sentinel-stream: {exc}", file=sys.stderr)
        return 2
