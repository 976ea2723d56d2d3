"""The HTTP side server: the v1 API, liveness, readiness, metrics, OpenAPI.

Liveness (``/health``) answers 200 while the process can serve and the consumer loop is
not stuck: a loop whose heartbeat is older than ``STUCK_AFTER_S`` seconds, or that
failed, answers 503, so an orchestrator restarts it. A loop that waits (for traffic, for
a broker that is down, for room in the producer's queue) keeps beating: it is healthy,
and restarting it would not help. Readiness (``/ready``) is judged at every request
from the loop's state now: 200 only while a broker answers, the producer's records are
acknowledged, partitions are assigned (and restored), and no drain has begun.

Every answer is JSON (but ``/metrics``), errors included, spaced as ``json.dumps``
writes it (the v1 service's spacing): unknown paths and methods answer 404 and 405 in
the same error shape as the API's own, and every route counts its requests by endpoint
(one of the server's routes, else ``other``) and status, and under the v1 names by
endpoint and method, with the time ``/analyze-flow`` took (:func:`served`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sentinel_stream import __version__
from sentinel_stream.engine import Engine
from sentinel_stream.explain.llm import Explainer
from sentinel_stream.http.analyze_flow import (
    AnalyzeFlow,
    Forward,
    Owner,
    error_response,
    json_response,
)
from sentinel_stream.http.openapi import openapi_document
from sentinel_stream.metrics import Metrics
from sentinel_stream.status import LoopStatus

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
STATUS: web.AppKey[LoopStatus] = web.AppKey("status", LoopStatus)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi", bytes)

log = structlog.get_logger("sentinel_stream.http")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def health(request: web.Request) -> web.Response:
    engine, status = request.app[ENGINE], request.app[STATUS]
    d = engine.detector
    now = time.monotonic()
    state = status.state(now)
    healthy = state not in ("failed", "stuck")
    since = now - status.heartbeat if status.heartbeat else None
    with engine.lock:  # the Kafka thread changes the route table as it scores
        history_size = d.rows_in_windows()
        routes, models = d.routes_tracked, d.models_trained
    body: dict[str, Any] = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": datetime.now(UTC).isoformat(),
        "version": __version__,
        "history_size": history_size,
        "detector_trained": models > 0,
        "components": {
            "consumer": {
                "state": state,
                "waiting_for": status.waiting_for,
                "assigned_partitions": sorted(status.assigned),
                "consumer_lag": status.consumer_lag,
                "seconds_since_heartbeat": None if since is None else round(since, 3),
                "error": status.error,
            },
            "broker": {"state": "up" if status.broker_up else "down"},
            "producer": {"state": "up" if status.producer_ok else "waiting"},
            "detector": {
                "routes_tracked": routes,
                "models_trained": models,
                "refits_pending": engine.refitter.queued + engine.refitter.running,
            },
        },
    }
    if not healthy:
        request.app[METRICS].health_check_fails.inc()
    return json_response(body, 200 if healthy else 503)


async def ready(request: web.Request) -> web.Response:
    status = request.app[STATUS]
    reasons = status.not_ready()
    if reasons:
        return json_response({"status": "not_ready", "reasons": reasons}, 503)
    return json_response({"status": "ready", "partitions": sorted(status.assigned)})


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def served(endpoint: str, handler: Handler, metrics_: Metrics) -> Handler:
    """``handler``, answering what it raises as JSON errors (an unexpected exception is a
    JSON 500, logged and counted) and counting every request by ``endpoint`` and status,
    under the v1 names by endpoint and method, with the time ``/analyze-flow`` took.

    A wrapper per route rather than an aiohttp middleware: with any middleware, aiohttp
    runs every request through two more coroutines (ours, and one that sets the request's
    current app), which cost ``/analyze-flow`` about a tenth of its requests/s."""
    timed = endpoint == "/analyze-flow"

    async def serve(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(413, "too_large", "the body is too large")
        except web.HTTPException as exc:
            response = error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        except Exception as exc:  # a bug, never the body's fault: a JSON 500, counted
            log.exception("http_unexpected_error", endpoint=endpoint, error=type(exc).__name__)
            metrics_.http_unexpected_errors.inc()
            response = error_response(500, "internal", "the service failed on this request")
        metrics_.count_request(
            endpoint,
            response.status,
            request.method,
            time.perf_counter() - started if timed else None,
        )
        return response

    return serve


def method_not_allowed(allowed: list[str]) -> Handler:
    """The JSON 405 of a known path asked with another method."""
    allow = ",".join(sorted(allowed))

    async def refuse(request: web.Request) -> web.Response:
        response = error_response(
            405, "method_not_allowed", f"{request.method} is not allowed here"
        )
        response.headers["Allow"] = allow
        return response

    return refuse


async def not_found(request: web.Request) -> web.Response:
    return error_response(404, "not_found", "Not Found")


def make_app(
    engine: Engine,
    status: LoopStatus,
    metrics_: Metrics,
    body_max: int = 64 * 1024,
    forward: Forward | None = None,
    explainer: Explainer | None = None,
    llm_budget_s: float = 1.0,
    owner: Owner | None = None,
    owner_timeout_s: float = 0.25,
    instance: str | None = None,
    probes: dict[str, Handler] | None = None,
) -> web.Application:
    """The public server. ``probes``: handlers of ``/health``, ``/ready`` and ``/metrics``
    in place of this process's own (the HTTP process asks the loop's,
    :mod:`.upstream`)."""
    # client_max_size a little above the API's limit so the handler answers 413 itself.
    app = web.Application(client_max_size=body_max + 1024)
    app[ENGINE] = engine
    app[STATUS] = status
    app[METRICS] = metrics_
    app[OPENAPI] = orjson.dumps(openapi_document())
    forwarded = forward is not None
    analyze = AnalyzeFlow(
        engine,
        body_max,
        forward,
        explainer,
        llm_budget_s,
        on_verdict=lambda flagged: metrics_.count_http_verdict(flagged, forwarded),
        owner=owner if owner_timeout_s > 0 else None,
        owner_timeout_s=owner_timeout_s,
        on_owner=lambda outcome: metrics_.http_owner.labels(outcome).inc(),
        instance=instance,
    )

    async def close_analyze(_: web.Application) -> None:
        await analyze.close()

    app.on_cleanup.append(close_analyze)
    gets = {
        "/health": health,
        "/ready": ready,
        "/metrics": metrics,
        **(probes or {}),
        "/openapi.json": openapi,
    }
    routes: dict[str, tuple[str, Handler]] = {"/analyze-flow": ("POST", analyze.__call__)}
    routes.update((path, ("GET", handler)) for path, handler in gets.items())
    for path, (method, handler) in routes.items():
        if method == "GET":  # and HEAD, as aiohttp's add_get does
            app.router.add_get(path, served(path, handler, metrics_))
        else:
            app.router.add_route(method, path, served(path, handler, metrics_))
        allowed = ["GET", "HEAD"] if method == "GET" else [method]
        app.router.add_route("*", path, served(path, method_not_allowed(allowed), metrics_))
    app.router.add_route("*", "/{path:.*}", served("other", not_found, metrics_))
    return app


def make_status_app(engine: Engine, status: LoopStatus, metrics_: Metrics) -> web.Application:
    """``/health``, ``/ready`` and ``/metrics`` of the loop's process, for the HTTP process
    to ask over a Unix socket (``SENTINEL_HTTP_PROCESS``). Not counted as requests: the
    HTTP process counts the ones it answers."""
    app = web.Application()
    app[ENGINE] = engine
    app[STATUS] = status
    app[METRICS] = metrics_
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
