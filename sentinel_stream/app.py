"""``sentinel-stream run``: one object wires settings, engine, pipeline and HTTP server.

The Kafka loop runs on its own thread (librdkafka calls block); the HTTP side server runs
on the asyncio loop of the main thread, which also owns the signal handlers. SIGTERM or
SIGINT asks the pipeline to stop; the process waits for it to finish its batch, commit
and leave the group (bounded by ``SENTINEL_SHUTDOWN_TIMEOUT_S``), then closes the server
and exits 0. A pipeline that fails exits the process with status 1 and the reason logged.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

import structlog
from aiohttp import web

from sentinel_stream.config import Settings
from sentinel_stream.engine import Engine
from sentinel_stream.forest import warm_up_kernel
from sentinel_stream.forward import TelemetryForwarder
from sentinel_stream.kafka.clients import make_admin
from sentinel_stream.kafka.topics import ensure_topics
from sentinel_stream.metrics import Metrics
from sentinel_stream.pipeline import Pipeline, PipelineError, describe
from sentinel_stream.server import make_app

log = structlog.get_logger("sentinel_stream.app")


class Service:
    """The consumer group member and its side server, with their lifecycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engine = Engine(settings)
        refitter = self.engine.refitter
        self.metrics.watch_detector(
            self.engine.detector, lambda: refitter.queued + refitter.running
        )
        self.pipeline = Pipeline(settings, self.engine, self.metrics)
        self.error: str | None = None
        self.forwarder: TelemetryForwarder | None = None
        self._done = threading.Event()

    def _run_pipeline(self) -> None:
        try:
            self.pipeline.run()
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
        created = ensure_topics(make_admin(s), s)
        if created:
            log.info("topics_created", topics=created, partitions=s.topic_partitions)
        warm_up_kernel()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.forwarder = TelemetryForwarder(s) if s.http_forward else None
        app = make_app(
            self.engine, self.pipeline.status, self.metrics, s.http_body_max, self.forwarder
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, s.host, s.port)
        await site.start()
        log.info("service_started", http=f"{s.host}:{s.port}", **describe(s))
        thread = threading.Thread(target=self._run_pipeline, name="pipeline", daemon=True)
        thread.start()
        try:
            while not self._done.is_set():
                await asyncio.sleep(0.1)
                if self.forwarder is not None:
                    self.forwarder.poll()
        finally:
            await runner.cleanup()
            if self.forwarder is not None:
                self.forwarder.close()
            self.engine.close()
        thread.join(timeout=5)
        if self.error:
            return 1
        log.info("service_stopped")
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
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


SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms).

The HTTP event loop and the Kafka loop share one interpreter; with the default, an HTTP
request arriving while the Kafka thread scores a batch can wait 5 ms for the GIL, more
than once per request."""


def run(settings: Settings) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return asyncio.run(Service(settings).serve())
