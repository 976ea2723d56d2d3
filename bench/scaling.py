"""Cost that grows right: events/s and memory against routes and against window size.

Not a test: it prints tables. Each point is one fresh process running the real
:class:`~sentinel_stream.stream.pipeline.Pipeline` (production settings, fits in a worker
process) over a topic pre-loaded with synthetic telemetry:

- against routes: ``--routes`` (10 to 100,000) at the default window, ``--events`` events
  each (or 2 per route, if more), ``SENTINEL_MAX_ROUTES`` raised to the route count so
  that every route is tracked (the default bound would evict);
- against window size: ``SENTINEL_HISTORY_MAX`` of ``--windows`` (250 to 5,000) over
  ``--window-routes`` routes, with enough events that every window fills twice.

events/s is measured from the broker's timestamps of the verdicts (first to last); RSS
is the process's resident memory with its refit worker's, sampled every 0.2 s: the peak
while processing and the value at the end.

    python bench/scaling.py --routes 10,100,1000,10000,100000 --windows 250,1000,5000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench, tests.support

from bench.common import PY, ROOT, Member, bench_env, create_topics, read_stamps, settings_for
from bench.stream_throughput import PARTITIONS, preload, throughput_of

MAX_EVENTS = 1_000_000


def rss_mib(children: bool = True) -> float:
    """This process's resident memory and its children's (the refit worker), MiB."""
    import psutil

    me = psutil.Process()
    total = int(me.memory_info().rss)
    for c in me.children(recursive=True) if children else []:
        with contextlib.suppress(psutil.Error):
            total += int(c.memory_info().rss)
    return round(total / 2**20, 1)


def child(args: argparse.Namespace) -> int:
    s = settings_for(
        args.bootstrap, args.prefix, history_max=args.history_max, max_routes=args.max_routes
    )
    member = Member(s)
    engine = member.engine
    idle = rss_mib()
    member.start()
    peak = idle
    deadline = time.monotonic() + 900
    while member.records < args.events and time.monotonic() < deadline:
        time.sleep(0.2)
        peak = max(peak, rss_mib())
    done = member.records
    # Let the fits requested meanwhile finish and install: the memory of a route with
    # its model is what is measured at the end.
    refitter = engine.refitter
    settle = time.monotonic() + 120
    while refitter.queued + refitter.running and time.monotonic() < settle:
        time.sleep(0.2)
        peak = max(peak, rss_mib())
    time.sleep(0.5)  # the loop installs finished fits when idle
    end = rss_mib()
    main_only = rss_mib(children=False)
    stats = engine.detector
    out = {
        "rss_start_mib": idle,
        "rss_peak_mib": max(peak, end),
        "rss_end_mib": end,
        "rss_end_main_mib": main_only,
        "records": done,
        "routes_tracked": stats.routes_tracked,
        "models": stats.models_trained,
    }
    member.stop()
    print(json.dumps(out))
    return 0


def point(bootstrap: str, routes: int, events: int, history_max: int) -> dict[str, Any]:
    from sentinel_stream.detect.params import DEFAULTS
    from sentinel_stream.tools.synthetic import generate

    prefix = f"bench-scale-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}.{t}" for t in ("in", "out", "dlq", "state")]
    create_topics(bootstrap, names, PARTITIONS, stamped=(f"{prefix}.out",))
    preload(bootstrap, f"{prefix}.in", [le.event for le in generate(events, routes, 0.005, seed=1)])
    cmd = [
        PY,
        str(Path(__file__).resolve()),
        "--child",
        "--bootstrap",
        bootstrap,
        "--prefix",
        prefix,
        "--events",
        str(events),
        "--history-max",
        str(history_max),
        "--max-routes",
        str(max(routes, DEFAULTS.max_routes)),
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT, env=bench_env()
    )
    if run.returncode != 0:
        raise RuntimeError(f"scaling child failed: {run.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    stamps = read_stamps(bootstrap, f"{prefix}.out", events, 300)
    res.update(
        {
            "routes": routes,
            "events": events,
            "history_max": history_max,
            "verdicts": len(stamps),
            "events_per_s": round(throughput_of(stamps)),
        }
    )
    return res


def measure(
    bootstrap: str, routes: list[int], events: int, windows: list[int], window_routes: int
) -> dict[str, Any]:
    from sentinel_stream.detect.params import DEFAULTS

    by_routes = []
    for r in routes:
        n = min(MAX_EVENTS, max(events, 2 * r))
        by_routes.append(point(bootstrap, r, n, DEFAULTS.history_max))
        print(f"scaling: {r} routes done", file=sys.stderr, flush=True)
    by_window = []
    for w in windows:
        n = min(MAX_EVENTS, max(events, 2 * w * window_routes))
        by_window.append(point(bootstrap, window_routes, n, w))
        print(f"scaling: window {w} done", file=sys.stderr, flush=True)
    return {"by_routes": by_routes, "by_window": by_window}


def render(res: dict[str, Any]) -> str:
    head = (
        "| {what} | events | events/s | RSS idle MiB | RSS peak MiB | RSS end MiB "
        "| of which the loop's process | routes tracked | models |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    out = []
    for key, what, field in (
        ("by_routes", "routes", "routes"),
        ("by_window", "window (SENTINEL_HISTORY_MAX)", "history_max"),
    ):
        if not res.get(key):
            continue
        out += ["", head.format(what=what)]
        for p in res[key]:
            out.append(
                f"| {p[field]:,} | {p['events']:,} | {p['events_per_s']:,} | {p['rss_start_mib']} "
                f"| {p['rss_peak_mib']} "
                f"| {p['rss_end_mib']} | {p['rss_end_main_mib']} | {p['routes_tracked']:,} "
                f"| {p['models']:,} |"
            )
    return "\n".join(out).strip()


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--routes", type=ints, default=ints("10,100,1000,10000,100000"))
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--windows", type=ints, default=ints("250,1000,5000"))
    ap.add_argument("--window-routes", type=int, default=100)
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--history-max", type=int, default=1000, help=argparse.SUPPRESS)
    ap.add_argument("--max-routes", type=int, default=10_000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    todo = (args.routes, args.events, args.windows, args.window_routes)
    if args.bootstrap:
        res = measure(args.bootstrap, *todo)
    else:
        from tests.support.kafka_broker import broker_for_tests

        with broker_for_tests() as bootstrap:
            res = measure(bootstrap, *todo)
    print(json.dumps(res) if args.json else render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
