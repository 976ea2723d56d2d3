"""Re-warm time of N routes: from the state changelog, against from cold.

Not a test: it prints a table. For each N of ``--routes``, on a real broker:

1. ``sentinel-stream run`` is taught N routes (events round-robin over them at
   ``--rate``) until every route has had a verdict from its model; then SIGTERM (the
   graceful drain writes every route's state to ``SENTINEL_STATE_TOPIC``).
2. **restore**: the same member starts again on the same topics while events keep
   coming at ``--rate``; timed from the process's start until every route has had a
   verdict from its model (``detector: isolation_forest``), with how many routes'
   *first* verdict after the restart came from a model, and the restore's own seconds
   (``sentinel_state_restore_duration_seconds``, the ``state_restored`` log lines).
3. **cold**: the same, on a fresh state topic (nothing to restore: every route warms
   up and is fit again), same group, same events.

HTTP forwarding is off (only the Kafka events teach); fits run in one worker process,
as by default. Times include the process's start (imports, joining the group), the
same in both.

    python bench/rewarm.py --routes 100,1000
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench, tests.support

from bench.common import bench_env, create_topics, end_count, end_offsets, topic_env
from sentinel_stream.stream.kafka.produce import produce_waiting
from tests.support.service import Proc, free_port, ready, scrape, start

PARTITIONS = 6
MODEL = "isolation_forest"


class Feeder:
    """Events round-robin over the routes at a steady rate, on a thread, until stopped."""

    def __init__(self, bootstrap: str, topic: str, routes: list[str], rate: float, tag: str):
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 2, "partitioner": "murmur2_random"}
        )
        self._topic = topic
        self._routes = routes
        self._rate = rate
        self._tag = tag
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        self._producer.flush(30)
        return self.sent

    def _run(self) -> None:
        started = time.monotonic()
        n = len(self._routes)
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self._rate) + 1
            while self.sent < due:
                i = self.sent
                r = i % n
                route = self._routes[r]
                body = {
                    # each route its own typical latency and input length, some spread
                    "latency": 20.0 + r % 50 + (i * 7919 % 97) / 10.0,
                    "input_length": 200 + r % 300 + i * 104729 % 41,
                    "errors": 0,
                    "route": route,
                    "event_id": f"{self._tag}{i}",
                }
                produce_waiting(self._producer, self._topic, orjson.dumps(body), route.encode())
                self.sent += 1
            self._producer.poll(0)
            time.sleep(0.002)


class VerdictWatch:
    """Reads verdicts from given offsets on a thread: each route's first verdict's
    detector, and when its first verdict from a model was appended (broker time, ms)."""

    def __init__(self, bootstrap: str, topic: str, start: dict[int, int]):
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"watch-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
        self.first: dict[str, str] = {}
        self.first_model_ms: dict[str, int] = {}
        self.verdicts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> VerdictWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for m in self._consumer.consume(2000, 0.1):
                    if m.error() is not None:
                        continue
                    v = orjson.loads(m.value() or b"{}")
                    if v.get("kind") != "verdict":
                        continue
                    self.verdicts += 1
                    route = v["route"]
                    self.first.setdefault(route, v["detector"])
                    if v["detector"] == MODEL and route not in self.first_model_ms:
                        self.first_model_ms[route] = m.timestamp()[1]
        finally:
            self._consumer.close()


def stop_service(proc: Proc, timeout: float = 90.0) -> int | None:
    """SIGTERM: the graceful drain (state written, offsets committed); SIGKILL if it hangs."""
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except Exception:
            proc.popen.kill()
            proc.popen.wait(10)
    return proc.popen.returncode


def restore_log(proc: Proc) -> dict[str, float]:
    """The ``state_restored`` log lines of a run: routes and seconds, added up."""
    routes = seconds = 0.0
    for line in proc.stderr().splitlines():
        if "state_restored" not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        routes += float(rec.get("routes", 0))
        seconds += float(rec.get("seconds", 0))
    return {"routes": routes, "seconds": round(seconds, 3)}


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
    return round(float(m.group(1)), 3) if m else None


def phase(
    bootstrap: str,
    env: dict[str, str],
    port: int,
    routes: list[str],
    rate: float,
    timeout: float,
    tmp: Path,
    name: str,
) -> dict[str, Any]:
    """Start the member, feed the routes, time until every route had a model's verdict."""
    out_topic = env["SENTINEL_OUTPUT_TOPIC"]
    watch = VerdictWatch(bootstrap, out_topic, end_offsets(bootstrap, out_topic) or {}).start()
    started = time.time()
    proc = start(env, tmp, name)
    feeder = Feeder(bootstrap, env["SENTINEL_INPUT_TOPIC"], routes, rate, f"{name}-").start()
    ready_s = None
    deadline = time.monotonic() + timeout
    n = len(routes)
    try:
        while time.monotonic() < deadline and len(watch.first_model_ms) < n:
            if ready_s is None and ready(proc, port):
                ready_s = round(time.time() - started, 2)
            time.sleep(0.1)
        fed = feeder.sent
        metrics = scrape(port) if proc.popen.poll() is None else ""
    finally:
        feeder.stop()
        watch.stop()
    done = len(watch.first_model_ms) == n
    last = max(watch.first_model_ms.values(), default=None)
    return {
        "proc": proc,
        "ready_s": ready_s,
        "all_models_s": round(last / 1000.0 - started, 2) if done and last else None,
        "routes_with_model": len(watch.first_model_ms),
        "first_verdict_from_model": sum(1 for d in watch.first.values() if d == MODEL),
        "events_fed": fed,
        "restore_metric_s": metric(metrics, "sentinel_state_restore_duration_seconds_sum"),
        "restored_metric_routes": metric(metrics, "sentinel_state_restored_total"),
    }


def rewarm(bootstrap: str, n: int, rate: float, timeout: float, tmp: Path) -> dict[str, Any]:
    from sentinel_stream.detect.params import DEFAULTS

    prefix = f"bench-rewarm-{n}-{uuid.uuid4().hex[:6]}"
    topics = topic_env(prefix)
    cold_state = f"{prefix}.cold.state"
    create_topics(
        bootstrap,
        [*topics.values(), cold_state],
        PARTITIONS,
        stamped=(topics["SENTINEL_OUTPUT_TOPIC"],),
    )
    port = free_port()
    env = bench_env(
        SENTINEL_KAFKA_BOOTSTRAP=bootstrap,
        SENTINEL_GROUP_ID=f"{prefix}-g",
        SENTINEL_INSTANCE_ID=f"{prefix}-member",
        SENTINEL_HOST="127.0.0.1",
        SENTINEL_PORT=str(port),
        SENTINEL_HTTP_FORWARD="false",
        SENTINEL_MAX_ROUTES=str(max(n, DEFAULTS.max_routes)),
        SENTINEL_MAX_MODELS=str(max(n, DEFAULTS.max_models)),
        SENTINEL_LOG_FORMAT="json",
        **topics,
    )
    routes = [f"/rewarm/{i}" for i in range(n)]
    taught = phase(bootstrap, env, port, routes, rate, timeout, tmp, "teach")
    stop_service(taught["proc"])
    state_records = end_count(bootstrap, topics["SENTINEL_STATE_TOPIC"])
    restored = phase(bootstrap, env, port, routes, rate, timeout, tmp, "restore")
    restored.update(restore_log(restored["proc"]))
    stop_service(restored["proc"])
    cold_env = {**env, "SENTINEL_STATE_TOPIC": cold_state}
    cold = phase(bootstrap, cold_env, port, routes, rate, timeout, tmp, "cold")
    stop_service(cold["proc"])
    for p in (taught, restored, cold):
        p.pop("proc")
    return {
        "routes": n,
        "rate_per_s": rate,
        "teach": taught,
        "state_records": state_records,
        "restore": restored,
        "cold": cold,
    }


def measure(bootstrap: str, sizes: list[int], rate: float, timeout: float) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            out.append(rewarm(bootstrap, n, rate, timeout, Path(d)))
            print(f"rewarm: {n} routes done", file=sys.stderr, flush=True)
    return out


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| routes | start | ready s | every route has a model's verdict, s | first verdict "
        "from a model | events fed | restore s (the metric's sum) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        for kind in ("restore", "cold"):
            p = r[kind]
            label = "from the state changelog" if kind == "restore" else "cold (fresh state topic)"
            lines.append(
                f"| {r['routes']:,} | {label} | {p['ready_s']} | {p['all_models_s']} | "
                f"{p['first_verdict_from_model']:,} of {r['routes']:,} | {p['events_fed']:,} | "
                f"{p['restore_metric_s']} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", default="100,1000", help="comma-separated route counts")
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s fed")
    ap.add_argument("--timeout", type=float, default=900.0, help="longest wait of one phase")
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in args.routes.split(",") if x]
    if args.bootstrap:
        rows = measure(args.bootstrap, sizes, args.rate, args.timeout)
    else:
        from tests.support.kafka_broker import broker_for_tests

        with broker_for_tests() as bootstrap:
            rows = measure(bootstrap, sizes, args.rate, args.timeout)
    print(json.dumps(rows) if args.json else render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
