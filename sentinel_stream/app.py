"""``sentinel-stream run``: one object wires settings, engine, pipeline and HTTP server.

The Kafka loop runs on its own thread (librdkafka calls block); the HTTP side server runs
on the asyncio loop of the main thread, which also owns the signal handlers. SIGTERM or
SIGINT asks the pipeline to stop; the process waits for it to finish its batch, commit
and leave the group (bounded by ``SENTINEL_SHUTDOWN_TIMEOUT_S``), then closes the server
and exits 0. A pipeline that fails exits the process with status 1 and the reason logged.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import orjson
import structlog
from aiohttp import web

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine
from sentinel_stream.explain.llm import Breaker, ChatBackend, Explainer, ExplainRequest
from sentinel_stream.http.server import make_app
from sentinel_stream.metrics import Metrics
from sentinel_stream.status import LoopStatus
from sentinel_stream.stream.kafka.clients import make_admin
from sentinel_stream.stream.kafka.topics import TopicLimits, ensure_topics, read_limits
from sentinel_stream.stream.owners import RouteOwners
from sentinel_stream.stream.pipeline import Pipeline, PipelineError, describe_settings
from sentinel_stream.stream.side_producer import SideProducer

log = structlog.get_logger("sentinel_stream.app")


class Service:
    """The consumer group member and its side server, with their lifecycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(anomaly_rate_window_s=settings.anomaly_rate_window_s)
        self.engine = Engine(settings)
        refitter = self.engine.refitter
        self.metrics.watch_detector(
            self.engine.detector, lambda: refitter.queued + refitter.running, self.engine.lock
        )
        self.side = SideProducer(settings, self.metrics)
        self.explainer = self._make_explainer(settings) if settings.llm_configured else None
        self.status = LoopStatus()
        self.pipeline: Pipeline | None = None
        """Made at start, once the topics' size limits are known."""
        self.error: str | None = None
        self._done = threading.Event()

    def _make_explainer(self, s: Settings) -> Explainer:
        assert s.ollama_host and s.ollama_model
        backend = ChatBackend(
            s.llm_api,
            s.ollama_host,
            s.ollama_model,
            s.llm_api_key.get_secret_value() if s.llm_api_key else None,
            s.llm_max_tokens,
        )
        out = s.output_topic
        side = self.side
        explainer = Explainer(
            backend,
            lambda record: side.send(out, record["route"], orjson.dumps(record), "explanation"),
            timeout_s=s.llm_timeout_s,
            concurrency=s.llm_concurrency,
            queue_max=s.llm_queue_max,
            cache_max=s.llm_cache_max,
            breaker=Breaker(s.llm_breaker_failures, s.llm_breaker_reset_s),
            observe_seconds=self.metrics.llm_seconds.observe,
        )
        self.metrics.watch_explainer(explainer)
        return explainer

    def _make_pipeline(self, limits: TopicLimits) -> Pipeline:
        explainer = self.explainer
        return Pipeline(
            self.settings,
            self.engine,
            self.metrics,
            on_anomaly=(
                (lambda v: explainer.submit_threadsafe(ExplainRequest.from_verdict(v)))
                if explainer is not None
                else None
            ),
            limits=limits,
            status=self.status,
        )

    def _run_pipeline(self, pipeline: Pipeline) -> None:
        try:
            pipeline.run()
        except PipelineError as exc:
            self.error = str(exc)
            log.error("pipeline_failed", error=str(exc))
        except Exception as exc:  # never die silently
            self.error = repr(exc)
            log.exception("pipeline_crashed")
        finally:
            self._done.set()

    async def serve(self) -> int:
        s = self.settings
        admin = make_admin(s)
        created = ensure_topics(admin, s)
        if created:
            log.info("topics_created", topics=created, partitions=s.topic_partitions)
        limits = read_limits(admin, s)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self.explainer is not None:
            await self.explainer.start()
        side, topic = self.side, s.input_topic
        owners: RouteOwners | None = None
        app = make_app(
            self.engine,
            self.status,
            self.metrics,
            s.http_body_max,
            (lambda route, value: side.send(topic, route, value, "forward"))
            if s.http_forward
            else None,
            self.explainer,
            s.llm_http_budget_s,
            owner=lambda route: owners.url_for(route) if owners is not None else None,
            owner_timeout_s=s.http_owner_timeout_s,
            instance=s.instance_id,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, s.host, s.port)
        await site.start()
        url = advertised_url(s, runner.addresses)
        self.pipeline = pipeline = self._make_pipeline(limits)
        # Advertise where this member answers and what it owns; learn the others'.
        status = self.status
        owners = RouteOwners(
            s, s.instance_id, url, lambda: status.assigned, limits.input_partitions
        )
        owners.start()
        log.info("service_started", http=url, **describe_settings(s))
        settle_heap()
        thread = threading.Thread(
            target=self._run_pipeline, args=(pipeline,), name="pipeline", daemon=True
        )
        thread.start()
        next_trim = time.monotonic() + TRIM_EVERY_S
        try:
            while not self._done.is_set():
                await asyncio.sleep(0.1)
                self.side.poll()
                if time.monotonic() >= next_trim:
                    trim_heap()
                    next_trim = time.monotonic() + TRIM_EVERY_S
        finally:
            owners.close()
            await runner.cleanup()
            if self.explainer is not None:
                await self.explainer.close()
            self.side.close()
            self.engine.close()
        thread.join(timeout=5)
        if self.error:
            return 1
        log.info("service_stopped")
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.pipeline is None or self.pipeline.stopping:
            return
        log.info("shutdown_requested", signal=sig.name)
        self.pipeline.stop()
        timer = threading.Timer(self.settings.shutdown_timeout_s + 5, self._give_up)
        timer.daemon = True
        timer.start()

    def _give_up(self) -> None:
        if not self._done.is_set():
            self.error = "graceful shutdown timed out"
            log.error("shutdown_timeout", seconds=self.settings.shutdown_timeout_s)
            self._done.set()


def advertised_url(settings: Settings, addresses: list[Any]) -> str:
    """Where other members reach this one: SENTINEL_ADVERTISED_URL, else the bound
    address (the host name when bound to every interface)."""
    if settings.advertised_url:
        return settings.advertised_url
    host, port = addresses[0][0], addresses[0][1]
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{port}"


SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms).

The HTTP event loop and the Kafka loop share one interpreter; with the default, an HTTP
request arriving while the Kafka thread scores a batch can wait 5 ms for the GIL, more
than once per request."""


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two young-generation collections (Python's default is 700)."""


def settle_heap() -> None:
    """Move what start-up built (modules, the compiled kernels' objects, schemas, the
    engine) out of the garbage collector's sight, and collect the young generation less
    often.

    The hot paths allocate a few objects per event (the decoded fields, the event, its
    verdict's parts), nearly all dead within the batch. With Python's defaults the
    collector runs every 700 allocations and, every hundred of those, walks every object
    the process holds, hundreds of thousands of them from start-up alone, in pauses that
    land on whichever batch is decoding (the benchmark report has what it cost).
    Frozen, start-up's objects are never walked again."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


MALLOC_ARENAS = 2
"""glibc malloc arenas for the process, unless ``MALLOC_ARENA_MAX`` says otherwise."""
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before the first thread starts; True if capped.

    glibc gives each new thread an arena of its own, up to eight per core, and memory a
    thread frees stays in its arena: librdkafka's threads, the HTTP side and the loop
    each kept the high-water mark of what they ever held. Two arenas on these threads
    hold ~30 MiB less after a 1,000 x 1,000 load (the README's *Memory*), at no
    measured cost in speed (the benchmark report). Does nothing where the operator set
    ``MALLOC_ARENA_MAX`` (glibc reads it itself) or off glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _libc("mallopt")
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, arenas))


def _libc(name: str) -> Any:
    """The C library's function ``name`` (glibc's malloc tuning), or None off glibc."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


TRIM_EVERY_S = 30.0
"""How often the service gives the heap's free pages back (:func:`trim_heap`)."""


def trim_heap() -> bool:
    """Give the pages malloc holds free back to the kernel; True if any were.

    glibc returns freed memory to the kernel only from the top of its heaps: a window,
    a model or a fetch buffer freed below a live block stays resident. Evictions (the
    memory budget, floods of one-off routes) and backlogs leave such holes;
    ``malloc_trim`` releases the free pages inside them too. The service calls it every
    ``TRIM_EVERY_S`` seconds from the HTTP side's thread (the call leaves the GIL
    free; it takes the allocator's locks only while it walks). Off glibc, nothing."""
    trim = _libc("malloc_trim")
    return trim is not None and bool(trim(0))


def run(settings: Settings) -> int:
    limit_malloc_arenas()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return asyncio.run(Service(settings).serve())
