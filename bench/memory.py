"""Memory of a real ``sentinel-stream run``: the whole process tree, at rest and loaded.

Not a test: it prints figures. A ``sentinel-stream run`` process (the console script,
as the container runs it, with its refit worker(s)) is started on a real broker and fed
through Kafka in two phases:

1. ``--routes`` routes x ``--events`` events each (default 1,000 x 1,000), interleaved,
   until every event is scored and every route has a model;
2. ``--flood`` new routes (default 100,000) with ``--flood-events`` events each.

After start (no routes: the baseline) and after each phase it prints the resident
memory of every process of the tree (main, refit workers, multiprocessing's resource
tracker: RSS, and PSS, which splits the pages processes share) and their sum, and from
``/metrics`` the detector's bytes held and budget, routes, models and bytes per model,
evictions and refusals. The peak of the tree's RSS is sampled every half second.

    python bench/memory.py [--routes 1000 --events 1000 --flood 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from sentinel_stream.config import default_refit_workers
from tests.support.service import free_port, service_env

MIB = 2**20


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "sentinel-stream"
    if script.exists():  # the console script, as the container runs it
        return [str(script), "run"]
    return [sys.executable, "-m", "sentinel_stream", "run"]


def tree(pid: int) -> list[dict[str, Any]]:
    """Every process of the tree rooted at ``pid``: role, RSS and PSS (MiB)."""
    root = psutil.Process(pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        role = (
            "main"
            if p.pid == pid
            else "resource tracker"
            if "resource_tracker" in cmd
            else "refit worker"
            if "spawn" in cmd or "forkserver" in cmd
            else "other"
        )
        out.append(
            {
                "pid": p.pid,
                "role": role,
                "rss_mib": round(info.rss / MIB, 1),
                "pss_mib": round(info.pss / MIB, 1),
                "uss_mib": round(info.uss / MIB, 1),
            }
        )
    return out


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sentinel_") and " " in line:
            name, value = line.rsplit(" ", 1)
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def wait_until(what: str, cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(1.0)
    print(f"  (gave up waiting for {what} after {timeout:.0f} s)", file=sys.stderr)
    return False


def produce(bootstrap: str, topic: str, routes: list[str], per_route: int, seed: int) -> int:
    """``per_route`` events for each route, interleaved (route after route), keyed by route."""
    rng = np.random.default_rng(seed)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000,
            "partitioner": "murmur2_random",
        }
    )
    n = 0
    for _ in range(per_route):
        latency = rng.lognormal(np.log(120), 0.25, len(routes))
        size = rng.lognormal(np.log(600), 0.25, len(routes)).astype(int)
        for route, lat, inp in zip(routes, latency, size, strict=True):
            value = b'{"latency":%.1f,"input_length":%d,"errors":0,"route":"%s"}' % (
                lat,
                inp,
                route.encode(),
            )
            while True:
                try:
                    p.produce(topic, value, route.encode())
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
        p.poll(0)
    assert p.flush(300) == 0
    return n


def settled(port: int, routes: int) -> bool:
    """Every route has a model and no fit waits, or (a budget that cannot hold every
    model) no fit is queued or running, twice in a row a few seconds apart."""
    m = metrics(port)
    if m.get("sentinel_refits_pending", 1) != 0:
        return False
    if m.get("sentinel_models_trained", 0) >= routes:
        return True
    time.sleep(3)
    return metrics(port).get("sentinel_refits_pending", 1) == 0


class Peak:
    """The largest RSS sum of the tree, sampled every half second in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                total = sum(p["rss_mib"] for p in tree(self.pid))
            except psutil.Error:
                continue
            self.mib = max(self.mib, total)

    def take(self) -> float:
        peak, self.mib = self.mib, 0.0
        return peak


def snapshot(label: str, pid: int, port: int, peak: float | None = None) -> dict[str, Any]:
    procs = tree(pid)
    m = metrics(port)
    models = m.get("sentinel_models_trained", 0.0)
    row = {
        "phase": label,
        "processes": procs,
        "rss_mib": round(sum(p["rss_mib"] for p in procs), 1),
        "pss_mib": round(sum(p["pss_mib"] for p in procs), 1),
        "peak_rss_mib": peak,
        "detector_bytes_mib": round(m.get("sentinel_detector_memory_bytes", 0) / MIB, 1),
        "budget_mib": round(m.get("sentinel_detector_memory_budget_bytes", 0) / MIB, 1),
        "routes": int(m.get("sentinel_routes_tracked", 0)),
        "models": int(models),
        "bytes_per_model": round(m.get("sentinel_models_bytes", 0) / models) if models else None,
        "evicted_total": int(m.get("sentinel_routes_evicted_total", 0)),
        "evicted_memory": int(m.get("sentinel_routes_evicted_memory_total", 0)),
        "refused": int(m.get("sentinel_routes_refused_total", 0)),
        "events": int(m.get('sentinel_events_valid_total{door="kafka"}', 0)),
    }
    return row


def print_row(row: dict[str, Any]) -> None:
    print(f"{row['phase']}:")
    for p in row["processes"]:
        print(
            f"  {p['role']:<17} pid {p['pid']:>7}  RSS {p['rss_mib']:>7.1f} MiB  "
            f"PSS {p['pss_mib']:>7.1f} MiB"
        )
    peak = f", peak RSS {row['peak_rss_mib']:.1f} MiB" if row["peak_rss_mib"] else ""
    print(f"  tree: RSS {row['rss_mib']:.1f} MiB, PSS {row['pss_mib']:.1f} MiB{peak}")
    print(
        f"  detector: {row['detector_bytes_mib']:.1f} MiB held of {row['budget_mib']:.0f} MiB; "
        f"{row['routes']:,} routes, {row['models']:,} models"
        + (f" ({row['bytes_per_model']:,} bytes each)" if row["bytes_per_model"] else "")
        + f"; evicted {row['evicted_total']:,} ({row['evicted_memory']:,} for memory), "
        f"refused {row['refused']:,}; events scored {row['events']:,}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--flood", type=int, default=100_000)
    ap.add_argument("--flood-events", type=int, default=3)
    ap.add_argument("--workers", type=int, default=default_refit_workers())
    ap.add_argument("--memory-max-mb", type=int, help="SENTINEL_MEMORY_MAX_MB (default: its)")
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument("--timeout", type=float, default=900.0, help="longest wait per phase, s")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        rows = measure(args, bootstrap)
    else:
        from tests.support.kafka_broker import broker_for_tests

        with broker_for_tests() as servers:
            rows = measure(args, servers)
    if args.json:
        print(json.dumps({"workers": args.workers, "rows": rows, "markdown": markdown(rows)}))
    return 0


def markdown(rows: list[dict[str, Any]]) -> str:
    """The phases as a table (what ``bench/run_all.py`` puts in its report)."""
    out = [
        "| phase | tree RSS MiB | tree PSS MiB | peak RSS MiB | detector MiB (budget) "
        "| routes | models | bytes/model | evicted (memory) | refused |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        peak = f"{r['peak_rss_mib']:.1f}" if r["peak_rss_mib"] else "-"
        per_model = f"{r['bytes_per_model']:,}" if r["bytes_per_model"] else "-"
        out.append(
            f"| {r['phase'] or 'at rest'} | {r['rss_mib']:.1f} | {r['pss_mib']:.1f} | {peak} "
            f"| {r['detector_bytes_mib']:.1f} ({r['budget_mib']:.0f}) | {r['routes']:,} "
            f"| {r['models']:,} | {per_model} | {r['evicted_total']:,} ({r['evicted_memory']:,}) "
            f"| {r['refused']:,} |"
        )
    return "\n".join(out)


def measure(args: argparse.Namespace, bootstrap: str) -> list[dict[str, Any]]:
    port = free_port()
    prefix = f"membench{port}"
    extra = {
        "SENTINEL_CREATE_TOPICS": "true",
        "SENTINEL_REFIT_WORKERS": str(args.workers),
        "SENTINEL_LOG_LEVEL": "warning",
    }
    if args.memory_max_mb:
        extra["SENTINEL_MEMORY_MAX_MB"] = str(args.memory_max_mb)
    env = service_env(bootstrap, prefix, port, **extra)
    cmd = console_script()
    if not args.json:
        print(f"$ {' '.join(cmd)}  (SENTINEL_REFIT_WORKERS={args.workers}, topics {prefix}.*)")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            return run_phases(args, bootstrap, env, port, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.returncode not in (0, -15, None):
                err.seek(0)
                print(err.read().decode(errors="replace")[-3000:], file=sys.stderr)


def run_phases(
    args: argparse.Namespace,
    bootstrap: str,
    env: dict[str, str],
    port: int,
    proc: subprocess.Popen[bytes],
) -> list[dict[str, Any]]:
    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_until("/ready", ready, 120)
    time.sleep(2)
    rows = []
    peak = Peak(proc.pid)
    rows.append(snapshot("after start, no routes (baseline)", proc.pid, port))
    report = (lambda r: None) if args.json else print_row
    report(rows[-1])
    topic = env["SENTINEL_INPUT_TOPIC"]
    warm = [f"/api/v1/route/{i}" for i in range(args.routes)]
    sent = produce(bootstrap, topic, warm, args.events, seed=1)
    wait_until(
        "phase 1 scored", lambda: snapshot("", proc.pid, port)["events"] >= sent, args.timeout
    )
    wait_until("the fits to finish", lambda: settled(port, args.routes), args.timeout)
    label = f"after {args.routes:,} routes x {args.events:,} events"
    rows.append(snapshot(label, proc.pid, port, peak.take()))
    report(rows[-1])
    flood = [f"/flood/{i}" for i in range(args.flood)]
    sent += produce(bootstrap, topic, flood, args.flood_events, seed=2)
    wait_until(
        "phase 2 scored", lambda: snapshot("", proc.pid, port)["events"] >= sent, args.timeout
    )
    time.sleep(3)
    label = f"after {args.flood:,} more routes x {args.flood_events} events"
    rows.append(snapshot(label, proc.pid, port, peak.take()))
    report(rows[-1])
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
