"""``POST /analyze-flow`` under load, next to a plain handler and the v1 design.

Not a test: it prints figures. Three servers, each its own process on 127.0.0.1, get the
same load from ``wrk`` (Debian's; ``scripts/system-deps.sh`` installs it): concurrency 32,
bodies cycling over warmed routes.

- ``plain``: an aiohttp handler that parses the JSON body and answers ``{"status": "OK"}``
  (the ceiling of aiohttp on this machine);
- ``v1``: the v1 service's design: one IsolationForest, one sklearn
  ``score_samples`` call per request;
- ``sentinel``: ``sentinel-stream run`` on a real broker, HTTP events forwarded to Kafka
  as in production (the Kafka loop learns them meanwhile), routes warmed until they have
  models;
- ``no-forward``: the same with ``SENTINEL_HTTP_FORWARD=false``, its routes warmed through
  Kafka: what forwarding costs the HTTP side;
- ``http-process``: ``sentinel`` with ``SENTINEL_HTTP_PROCESS=true``: HTTP served from a
  process of its own (answering from its replica of the state topic), events forwarded,
  the Kafka loop learning them in the other process.

With ``--owner``, the cost of asking the owner: two members of one group on a two-partition
input topic, routes whose partition member ``a`` owns, warmed until both members answer
them from ``a``'s models; ``wrk`` against ``a`` (``owner``), then against ``b``
(``non-owner``: each request passed to ``a`` over HTTP), same routes, same run.

    python bench/http_load.py --seconds 10 --owner
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench, tests.support

from bench.common import bench_env, topic_env, wait_until

ROUTES = [f"/bench/r{i}" for i in range(10)]


def body(i: int, route: str | None = None) -> dict[str, Any]:
    """The ``i``-th request's body: values that vary a little, as one route's traffic does."""
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


def wrk(
    port: int, seconds: float, connections: int, tmp: Path, routes: list[str] | None = None
) -> dict[str, Any]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is missing: bash scripts/system-deps.sh")
    routes = routes or ROUTES
    bodies = ", ".join(json.dumps(json.dumps(body(i, routes[i % len(routes)]))) for i in range(200))
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


def thread_cpu(pid: int, http_pid: int | None = None) -> dict[str, float]:
    """CPU seconds so far of the server's threads, by kind: ``http`` (the main thread of
    the process serving HTTP, where its event loop runs), ``librdkafka`` (``rdk:``
    threads) and ``python`` (every other thread: the Kafka loop, and small helpers).
    ``http_pid``: the HTTP process, when it is not ``pid`` (``SENTINEL_HTTP_PROCESS``);
    both processes' threads are counted."""
    out = {"http": 0.0, "python": 0.0, "librdkafka": 0.0}
    hz = os.sysconf("SC_CLK_TCK")
    server = http_pid or pid
    for proc in {pid, server}:
        for tid in os.listdir(f"/proc/{proc}/task"):
            try:
                stat = Path(f"/proc/{proc}/task/{tid}/stat").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds = (int(fields[11]) + int(fields[12])) / hz  # utime + stime
            kind = (
                "http"
                if int(tid) == server
                else "librdkafka"
                if comm.startswith("rdk:")
                else "python"
            )
            out[kind] += seconds
    return out


def http_child(pid: int, timeout: float = 30.0) -> int:
    """The HTTP process ``sentinel-stream run`` started (``SENTINEL_HTTP_PROCESS``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                return int(child)
        time.sleep(0.1)
    raise SystemExit("the HTTP process did not start")


def wrk_measured(
    pid: int, port: int, seconds: float, connections: int, tmp: Path, http_pid: int | None = None
) -> dict[str, Any]:
    """:func:`wrk`, and the CPU the server's threads spent per request meanwhile (in
    microseconds, by kind: :func:`thread_cpu`): where a request's time goes, which a
    requests/s figure alone does not say (two threads of one interpreter share its lock)."""
    before = thread_cpu(pid, http_pid)
    row = wrk(port, seconds, connections, tmp)
    after = thread_cpu(pid, http_pid)
    requests = max(1.0, row["requests_per_s"] * seconds)
    row["cpu_us_per_request"] = {
        k: round((after[k] - before[k]) / requests * 1e6, 1) for k in before if after[k] > before[k]
    }
    return row


def run_baseline(kind: str, seconds: float, connections: int, tmp: Path) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        return {"case": kind, **wrk_measured(proc.pid, port, seconds, connections, tmp)}
    finally:
        proc.terminate()
        proc.wait(20)


def warm(port: int, routes: list[str], timeout: float = 180.0) -> None:
    """POST to each route until its answer comes from a trained model."""
    deadline = time.monotonic() + timeout
    trained: set[str] = set()
    i = 0
    while len(trained) < len(routes) and time.monotonic() < deadline:
        for r in routes:
            if r not in trained and post(port, body(i, r))["detector"] == "isolation_forest":
                trained.add(r)
            i += 1
    if len(trained) < len(routes):
        raise SystemExit(f"routes did not get models in {timeout:.0f} s")


def feed_kafka(bootstrap: str, topic: str, routes: list[str], per_route: int) -> None:
    """Each route's traffic straight into the input topic (the warm-up of a member that
    does not forward its HTTP events)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(per_route * len(routes)):
        b = body(i)
        p.produce(topic, json.dumps(b).encode(), str(b["route"]).encode())
        if i % 1000 == 0:
            p.poll(0)
    if p.flush(60) != 0:
        raise SystemExit("could not feed the input topic")


def run_sentinel(
    bootstrap: str,
    seconds: float,
    connections: int,
    tmp: Path,
    forward: bool = True,
    http_process: bool = False,
) -> dict[str, Any]:
    """``sentinel-stream run`` under wrk; without ``forward``, its routes learn from
    events fed to Kafka directly and the HTTP events go nowhere but their answers (what
    forwarding costs the HTTP side, on a machine where wrk, the broker and the member
    share the cores: each forwarded request is two more records for librdkafka and the
    broker, and an event the Kafka loop scores on the same interpreter)."""
    port = free_port()
    prefix = f"bench-http-{port}"
    env = {
        **bench_env(),
        "SENTINEL_KAFKA_BOOTSTRAP": bootstrap,
        "SENTINEL_GROUP_ID": f"{prefix}-g",
        **topic_env(prefix),
        "SENTINEL_INSTANCE_ID": prefix,
        "SENTINEL_CREATE_TOPICS": "true",
        "SENTINEL_PORT": str(port),
        "SENTINEL_LOG_LEVEL": "warning",
        "SENTINEL_HTTP_FORWARD": "true" if forward else "false",
        "SENTINEL_HTTP_PROCESS": "true" if http_process else "false",
    }
    log = (tmp / "sentinel.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel_stream", "run"], env=env, stdout=log, stderr=log
    )
    try:
        wait_port(port)
        if not forward:
            feed_kafka(bootstrap, env["SENTINEL_INPUT_TOPIC"], ROUTES, 600)
        warm(port, ROUTES)
        case = "http-process" if http_process else "sentinel" if forward else "no-forward"
        http_pid = http_child(proc.pid) if http_process else None
        return {"case": case, **wrk_measured(proc.pid, port, seconds, connections, tmp, http_pid)}
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def run_owner(bootstrap: str, seconds: float, connections: int, tmp: Path) -> list[dict[str, Any]]:
    """wrk against the owner of the routes, then against the member that asks it."""
    from bench.common import create_topics
    from sentinel_stream.stream.owners import partition_of
    from tests.support.service import ready, scrape, start

    prefix = f"bench-owner-{free_port()}"
    topics = topic_env(prefix)
    create_topics(bootstrap, list(topics.values()), 2)
    ports = {"a": free_port(), "b": free_port()}
    procs = {}
    try:
        for m in ("a", "b"):
            env = bench_env(
                SENTINEL_KAFKA_BOOTSTRAP=bootstrap,
                SENTINEL_GROUP_ID=f"{prefix}-g",
                SENTINEL_INSTANCE_ID=m,
                SENTINEL_HOST="127.0.0.1",
                SENTINEL_PORT=str(ports[m]),
                SENTINEL_LOG_LEVEL="warning",
                **topics,
            )
            procs[m] = start(env, tmp, f"owner-{m}")
            if not wait_until(lambda m=m: ready(procs[m], ports[m]), 120):  # type: ignore[misc]
                raise SystemExit(f"member {m} not ready in 120 s")
        # The routes of one partition; which member owns it, the answers say.
        candidates = [f"/bench/owned/{i}" for i in range(200)]
        by_partition: dict[int, list[str]] = {0: [], 1: []}
        for r in candidates:
            by_partition[partition_of(r.encode(), 2, "murmur2_random")].append(r)
        owner_of: dict[int, str] = {}

        def owners_known() -> bool:
            for p, routes in by_partition.items():
                seen = {post(ports[m], body(0, routes[0])).get("answered_by") for m in "ab"}
                if len(seen) != 1 or None in seen:
                    return False
                owner_of[p] = str(seen.pop())
            return set(owner_of.values()) == {"a", "b"}

        if not wait_until(owners_known, 60, 0.5):
            raise SystemExit(f"the members did not agree on owners: {owner_of}")
        owned = next(rs for p, rs in by_partition.items() if owner_of[p] == "a")[:10]
        warm(ports["a"], owned)
        if not wait_until(
            lambda: all(
                post(ports["b"], body(0, r))["detector"] == "isolation_forest" for r in owned
            ),
            60,
            0.5,
        ):
            raise SystemExit("b did not answer from a's models")
        rows = [
            {"case": "owner", **wrk(ports["a"], seconds, connections, tmp, owned)},
            {"case": "non-owner", **wrk(ports["b"], seconds, connections, tmp, owned)},
        ]
        outcomes = re.findall(
            r'^sentinel_http_owner_answers_total\{outcome="(\w+)"\} ([0-9.e+]+)$',
            scrape(ports["b"]),
            re.M,
        )
        rows[1]["owner_answers"] = {k: int(float(v)) for k, v in outcomes}
        rows[1]["ratio_to_owner"] = (
            round(rows[1]["requests_per_s"] / rows[0]["requests_per_s"], 3)
            if rows[0]["requests_per_s"]
            else None
        )
        return rows
    finally:
        for proc in procs.values():
            if proc.popen.poll() is None:
                proc.popen.terminate()
                try:
                    proc.popen.wait(60)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument("--owner", action="store_true", help="also the cost of asking the owner")
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

        def with_broker(bootstrap: str) -> None:
            rows.append(run_sentinel(bootstrap, args.seconds, args.connections, tmp))
            rows.append(run_sentinel(bootstrap, args.seconds, args.connections, tmp, False))
            rows.append(
                run_sentinel(bootstrap, args.seconds, args.connections, tmp, http_process=True)
            )
            if args.owner:
                rows.extend(run_owner(bootstrap, args.seconds, args.connections, tmp))

        if args.bootstrap:
            with_broker(args.bootstrap)
        else:
            from tests.support.kafka_broker import broker_for_tests

            with broker_for_tests() as bootstrap:
                with_broker(bootstrap)
        rows.append(run_baseline("v1", args.seconds, args.connections, tmp))
    plain = rows[0]["requests_per_s"]
    for r in rows:
        r["ratio_to_plain"] = round(r["requests_per_s"] / plain, 3) if plain else None
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"POST /analyze-flow, concurrency {args.connections}, {args.seconds:.0f} s each (wrk)")
    print(
        f"{'case':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs plain':>10}{'non-2xx':>9}"
        "  server CPU per request, by thread"
    )
    for r in rows:
        cpu = r.get("cpu_us_per_request") or {}
        print(
            f"{r['case']:<12}{r['requests_per_s']:>10,}{r['p50_ms']:>9}{r['p99_ms']:>9}"
            f"{r['ratio_to_plain']:>10}{r['non_2xx']:>9}  "
            + ", ".join(f"{k} {v} us" for k, v in cpu.items())
        )
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
