"""The member's state as the HTTP process tells it, when HTTP is served from a process of
its own (``SENTINEL_HTTP_PROCESS``).

``/health``, ``/ready`` and ``/metrics`` describe the member, and the member's Kafka
loop lives in the other process. That process answers those three on a Unix socket (an
internal server that answers nothing else); the HTTP process asks it and answers with
what it says, adding what only it knows:

- ``/ready`` is 503 also while the HTTP process's replica has not yet read the state
  topic to its end (its answers would come from rules where models exist);
- ``/metrics`` is the two processes' expositions merged into one (:func:`merge_expositions`),
  so a scrape sees one member, each family once;
- when the loop's process does not answer, ``/health`` and ``/ready`` answer 503 with
  the reason (that process is restarting, or stuck), and ``/metrics`` serves the HTTP
  process's own families.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from sentinel_stream.http.analyze_flow import json_response

UPSTREAM_TIMEOUT_S = 2.0
"""How long the HTTP process waits for the loop's process to answer a probe or scrape."""

SUMMED_GAUGES = frozenset({"sentinel_memory_mb", "sentinel_llm_queue_depth"})
"""Gauges that are the sum of both processes' values (resident memory, anomalies waiting
for the LLM); every other gauge is the loop's process's (lag, partitions, models)."""


class Upstream:
    """An HTTP client of the loop's process over its Unix socket."""

    def __init__(self, socket_path: str, timeout_s: float = UPSTREAM_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def get(self, path: str) -> tuple[int, bytes] | None:
        """(status, body), or None when the loop's process does not answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path), timeout=self._timeout
            )
        try:
            async with self._session.get(f"http://loop{path}") as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


NOT_ANSWERING = "the Kafka loop's process does not answer"


def probes(
    upstream: Upstream,
    registry: CollectorRegistry,
    not_ready: Callable[[], list[str]],
    on_unhealthy: Callable[[], object],
) -> dict[str, Callable[[web.Request], Any]]:
    """The handlers of ``/health``, ``/ready`` and ``/metrics`` of the HTTP process.

    ``not_ready``: the HTTP process's own reasons not to be ready. ``on_unhealthy``: told
    when ``/health`` answers 503 because the loop's process did not answer (its own 503s
    it counts itself)."""

    async def health(request: web.Request) -> web.Response:
        got = await upstream.get("/health")
        if got is None:
            on_unhealthy()
            return json_response({"status": "unhealthy", "reason": NOT_ANSWERING}, 503)
        status, body = got
        return web.Response(body=body, status=status, content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        got = await upstream.get("/ready")
        own = not_ready()
        if got is None:
            return json_response({"status": "not_ready", "reasons": [NOT_ANSWERING, *own]}, 503)
        status, body = got
        if not own:
            return web.Response(body=body, status=status, content_type="application/json")
        answer = orjson.loads(body)
        reasons = [*answer.get("reasons", []), *own]
        return json_response({"status": "not_ready", "reasons": reasons}, 503)

    async def metrics(request: web.Request) -> web.Response:
        own = generate_latest(registry).decode()
        got = await upstream.get("/metrics")
        text = own if got is None or got[0] != 200 else merge_expositions(got[1].decode(), own)
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return {"/health": health, "/ready": ready, "/metrics": metrics}


def merge_expositions(loop_text: str, http_text: str) -> str:
    """Two processes' Prometheus text as one member's.

    A family in one only is kept as it is. A family in both: counters, histograms and
    summaries are summed sample by sample (same name and labels), their ``_created``
    being the earlier; gauges are the loop's process's, but for :data:`SUMMED_GAUGES`.
    A label set only one process has is kept, whichever it is.
    """
    loop = {f.name: f for f in text_string_to_metric_families(loop_text)}
    merged: dict[str, Metric] = dict(loop)
    for family in text_string_to_metric_families(http_text):
        mine = loop.get(family.name)
        if mine is None:
            merged[family.name] = family
        elif family.type != "gauge" or family.name in SUMMED_GAUGES or _created(family):
            merged[family.name] = _summed(mine, family)
    return generate_latest(_Families(merged.values())).decode()


def _created(family: Metric) -> bool:
    """A counter's or histogram's creation times, which the text format carries as a
    gauge family of their own (``X_created``): merged as the earlier of the two."""
    return family.name.endswith("_created")


def _summed(a: Metric, b: Metric) -> Metric:
    """Both families' samples, those of the same name and labels added (``_created``
    ones: the earlier kept); a label set in one of them only is kept as it is."""
    out = Metric(a.name, a.documentation, a.type, a.unit)
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for s in [*a.samples, *b.samples]:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key not in values:
            values[key] = s.value
        elif s.name.endswith("_created"):
            values[key] = min(values[key], s.value)
        else:
            values[key] += s.value
    out.samples = [
        Sample(name, dict(labels), value)
        for (name, labels), value in values.items()
        if not math.isnan(value)
    ]
    return out


class _Families:
    """Already collected families, as :func:`generate_latest` reads a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families
