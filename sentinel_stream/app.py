"""``sentinel-stream run``: one object wires settings, engine, pipeline and HTTP server.

The Kafka loop runs on its own thread (librdkafka calls block); the HTTP side server runs
on the asyncio loop of the main thread, which also owns the signal handlers. SIGTERM or
SIGINT asks the pipeline to stop; the process waits for it to finish its batch, commit
and leave the group (bounded by ``SENTINEL_SHUTDOWN_TIMEOUT_S``), then closes the server
and exits 0. A pipeline that fails exits the process with status 1 and the reason logged.

With ``SENTINEL_HTTP_PROCESS`` the HTTP side server is a process of its own
(:mod:`sentinel_stream.http_process`), which this one starts, watches and stops last;
this one then answers only that process's probes, on a Unix socket.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from typing import Any

import structlog
from aiohttp import web

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine
from sentinel_stream.explain.llm import ExplainRequest
from sentinel_stream.http.analyze_flow import Owner
from sentinel_stream.http.server import make_app, make_status_app
from sentinel_stream.http_process import HttpProcess, HttpProcessFailed
from sentinel_stream.metrics import Metrics
from sentinel_stream.process import (
    SWITCH_INTERVAL_S,
    Upkeep,
    limit_malloc_arenas,
    make_explainer,
    settle_heap,
)
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
        self.explainer = (
            make_explainer(settings, self.side, self.metrics) if settings.llm_configured else None
        )
        self.status = LoopStatus()
        self.pipeline: Pipeline | None = None
        """Made at start, once the topics' size limits are known."""
        self.error: str | None = None
        self._done = threading.Event()
        self.http_process: HttpProcess | None = None
        """With ``SENTINEL_HTTP_PROCESS``: the HTTP door's process."""
        self._socket_dir: str | None = None
        self._signalled: signal.Signals | None = None
        """A stop asked for before the pipeline was made (the HTTP process starting)."""

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
        owners: RouteOwners | None = None
        runner, url = await self._open_http(
            lambda route: owners.url_for(route) if owners is not None else None
        )
        thread: threading.Thread | None = None
        # From here on every way out stops what was started (the HTTP process above all).
        try:
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
            if self._signalled is not None:  # asked to stop while starting
                self._on_signal(self._signalled)
            upkeep = Upkeep(self.side)
            while not self._done.is_set():
                await asyncio.sleep(0.1)
                upkeep.tick()
                if self.http_process is not None and not pipeline.stopping:
                    self.http_process.watch()
        finally:
            if owners is not None:
                owners.close()
            if self.http_process is not None:
                self.http_process.stop()
            await runner.cleanup()
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            if self.explainer is not None:
                await self.explainer.close()
            self.side.close()
            self.engine.close()
        if thread is not None:
            thread.join(timeout=5)
        if self.error:
            return 1
        log.info("service_stopped")
        return 0

    async def _open_http(self, owner: Owner) -> tuple[web.AppRunner, str]:
        """Serve HTTP: here (the default), or from a process of its own
        (``SENTINEL_HTTP_PROCESS``, :mod:`sentinel_stream.http_process`), this process then
        answering that one's probes on a Unix socket. (runner, advertised URL)."""
        s = self.settings
        if s.http_process:
            self._socket_dir = tempfile.mkdtemp(prefix="sentinel-stream-")
            socket_path = os.path.join(self._socket_dir, "loop.sock")
            runner = web.AppRunner(make_status_app(self.engine, self.status, self.metrics))
            await runner.setup()
            await web.UnixSite(runner, socket_path).start()
            self.http_process = HttpProcess(s, socket_path, self.metrics.http_process_restarts.inc)
            self.http_process.start()
            try:
                await self.http_process.serving()
            except HttpProcessFailed:
                await runner.cleanup()
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                raise
            return runner, advertised_url(s, [(s.host, s.port)])
        side, topic = self.side, s.input_topic
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
            owner=owner,
            owner_timeout_s=s.http_owner_timeout_s,
            instance=s.instance_id,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, s.host, s.port).start()
        return runner, advertised_url(s, runner.addresses)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.pipeline is None:
            self._signalled = sig  # acted on once the pipeline runs
            return
        if self.pipeline.stopping:
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


def run(settings: Settings) -> int:
    limit_malloc_arenas()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return asyncio.run(Service(settings).serve())
