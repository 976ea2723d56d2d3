"""``POST /analyze-flow`` under load, next to a plain handler and the v1 design.

Not a test: it prints figures. Three servers, each its own process on 127.0.0.1, get the
same load from ``wrk`` (Debian's; ``scripts/system-deps.sh`` installs it): concurrency 32,
bodies cycling over warmed routes.

- ``plain``: an aiohttp handler that parses the JSON body and answers ``{"status": "OK"}``
  (the ceiling of aiohttp on this machine);
- ``v1``: the v1 service's design: one IsolationForest, one sklearn
  ``score_samples`` call per request;
- ``sentinel``: ``sentinel-stream run`` on a real broker, HTTP events forwarded to Kafka
  as in production, routes warmed until they have models.

    python bench/http_load.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support (the broker helpers)

ROUTES = [f"/bench/r{i}" for i in range(10)]


def body(i: int, route: str | None = None) -> dict[str, Any]:
    return {
        "latency": 100.0 + (i * 37) % 50,
        "input_length": 400 + (i * 13) % 100,
        "errors": 0,
        "route": route or ROUTES[i % len(ROUTES)],
    }


# -- the two baseline servers ------------------------------------------------------------


def serve_plain(port: int) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"status": "OK"})

    app = web.Application()
    app.router.add_post("/analyze-flow", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_v1(port: int) -> None:
    import numpy as np
    from aiohttp import web
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    model = IsolationForest(contamination=0.1, random_state=0).fit(rng.lognormal(size=(1000, 3)))

    async def handler(request: web.Request) -> web.Response:
        d = await request.json()
        x = np.array([[d["latency"], d["input_length"], d["errors"]]])
        score = float(-model.score_samples(x)[0])
        if model.predict(x)[0] == -1:
            return web.json_response({"status": "THREAT_DETECTED", "prediction_score": score})
        return web.json_response({"status": "OK"})

    app = web.Application()
    app.router.add_post("/analyze-flow", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- load ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def post(port: int, obj: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/analyze-flow",
        data=json.dumps(obj).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            post(port, body(0))
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on {port} did not answer within {timeout:.0f} s")


LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {BODIES}
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, "/analyze-flow", nil, bodies[(i % #bodies) + 1])
end
"""


def wrk(port: int, seconds: float, connections: int, tmp: Path) -> dict[str, Any]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is missing: bash scripts/system-deps.sh")
    bodies = ", ".join(json.dumps(json.dumps(body(i))) for i in range(200))
    script = tmp / "post.lua"
    script.write_text(LUA.replace("{BODIES}", "{" + bodies + "}"))
    out = subprocess.run(
        [
            binary,
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds:.0f}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return round(float(m.group(1)) * scale, 3)

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": round(rps),
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def run_baseline(kind: str, seconds: float, connections: int, tmp: Path) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        return {"case": kind, **wrk(port, seconds, connections, tmp)}
    finally:
        proc.terminate()
        proc.wait(20)


def run_sentinel(bootstrap: str, seconds: float, connections: int, tmp: Path) -> dict[str, Any]:
    port = free_port()
    prefix = f"bench-http-{port}"
    env = {
        **os.environ,
        "SENTINEL_KAFKA_BOOTSTRAP": bootstrap,
        "SENTINEL_GROUP_ID": f"{prefix}-g",
        "SENTINEL_INPUT_TOPIC": f"{prefix}.in",
        "SENTINEL_OUTPUT_TOPIC": f"{prefix}.out",
        "SENTINEL_DLQ_TOPIC": f"{prefix}.dlq",
        "SENTINEL_STATE_TOPIC": f"{prefix}.state",
        "SENTINEL_MEMBERS_TOPIC": f"{prefix}.members",
        "SENTINEL_INSTANCE_ID": prefix,
        "SENTINEL_CREATE_TOPICS": "true",
        "SENTINEL_PORT": str(port),
        "SENTINEL_LOG_LEVEL": "warning",
    }
    log = (tmp / "sentinel.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel_stream", "run"], env=env, stdout=log, stderr=log
    )
    try:
        wait_port(port)
        # Warm every route over HTTP until its answers come from a trained model.
        deadline = time.monotonic() + 180
        trained: set[str] = set()
        i = 0
        while len(trained) < len(ROUTES) and time.monotonic() < deadline:
            for r in ROUTES:
                if post(port, body(i, r))["detector"] == "isolation_forest":
                    trained.add(r)
                i += 1
        if len(trained) < len(ROUTES):
            raise SystemExit("routes did not get models in time")
        return {"case": "sentinel", **wrk(port, seconds, connections, tmp)}
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", choices=["plain", "v1"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        (serve_plain if args.serve == "plain" else serve_v1)(args.port)
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [run_baseline("plain", args.seconds, args.connections, tmp)]
        if args.bootstrap:
            rows.append(run_sentinel(args.bootstrap, args.seconds, args.connections, tmp))
        else:
            from tests.support.kafka_broker import broker_for_tests

            with broker_for_tests() as bootstrap:
                rows.append(run_sentinel(bootstrap, args.seconds, args.connections, tmp))
        rows.append(run_baseline("v1", args.seconds, args.connections, tmp))
    plain = rows[0]["requests_per_s"]
    for r in rows:
        r["ratio_to_plain"] = round(r["requests_per_s"] / plain, 3) if plain else None
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"POST /analyze-flow, concurrency {args.connections}, {args.seconds:.0f} s each (wrk)")
    print(f"{'case':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs plain':>10}{'non-2xx':>9}")
    for r in rows:
        print(
            f"{r['case']:<10}{r['requests_per_s']:>10,}{r['p50_ms']:>9}{r['p99_ms']:>9}"
            f"{r['ratio_to_plain']:>10}{r['non_2xx']:>9}"
        )
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
