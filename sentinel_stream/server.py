"""The HTTP side server: liveness, readiness and metrics, in the consumer's process.

Liveness (``/health``) answers 200 while the process can serve and the consumer loop is
not stuck: a loop that has not polled for ``STUCK_AFTER_S`` seconds while running is
reported as ``stuck`` with 503, so an orchestrator restarts it. A loop that polls and
finds nothing is healthy: an idle consumer is waiting for traffic, not stuck.
Readiness (``/ready``) is 200 only when partitions are assigned and the producer works.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sentinel_stream import __version__
from sentinel_stream.engine import Engine
from sentinel_stream.metrics import Metrics
from sentinel_stream.pipeline import PipelineStatus

STUCK_AFTER_S = 60.0

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
STATUS: web.AppKey[PipelineStatus] = web.AppKey("status", PipelineStatus)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


def _consumer_state(status: PipelineStatus, now: float) -> tuple[str, float | None]:
    since = now - status.last_poll if status.last_poll else None
    if status.error:
        return "failed", since
    if not status.running:
        return "stopped", since
    if since is not None and since > STUCK_AFTER_S:
        return "stuck", since
    return "running", since


async def health(request: web.Request) -> web.Response:
    engine, status = request.app[ENGINE], request.app[STATUS]
    d = engine.detector
    state, since = _consumer_state(status, time.monotonic())
    healthy = state in ("running", "stopped") and not status.error
    body: dict[str, Any] = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": datetime.now(UTC).isoformat(),
        "version": __version__,
        "history_size": sum(len(s.window) for _, s in d._routes.oldest_first()),
        "detector_trained": d.models_trained > 0,
        "components": {
            "consumer": {
                "state": state,
                "assigned_partitions": sorted(status.assigned),
                "consumer_lag": status.consumer_lag,
                "seconds_since_poll": None if since is None else round(since, 3),
                "error": status.error,
            },
            "producer": {"state": "up" if status.producer_ok else "down"},
            "detector": {
                "routes_tracked": d.routes_tracked,
                "models_trained": d.models_trained,
                "refits_pending": engine.refitter.queued + engine.refitter.running,
            },
        },
    }
    return web.json_response(body, status=200 if healthy else 503)


async def ready(request: web.Request) -> web.Response:
    status = request.app[STATUS]
    reasons = []
    if not status.running:
        reasons.append("consumer not running")
    if not status.assigned:
        reasons.append("no partitions assigned")
    if not status.producer_ok:
        reasons.append("producer not working")
    if reasons:
        return web.json_response({"status": "not_ready", "reasons": reasons}, status=503)
    return web.json_response({"status": "ready", "partitions": sorted(status.assigned)})


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(engine: Engine, status: PipelineStatus, metrics_: Metrics) -> web.Application:
    app = web.Application()
    app[ENGINE] = engine
    app[STATUS] = status
    app[METRICS] = metrics_
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
