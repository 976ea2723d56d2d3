"""The HTTP door in a process of its own (``SENTINEL_HTTP_PROCESS=true``).

In one process, the HTTP door and the Kafka loop take turns on one interpreter lock:
every event ``/analyze-flow`` forwards comes back to the loop to be scored, learnt and
published, on that same lock, and the two threads wake each other on one core. Served
from a process of its own, the door has a core's worth of interpreter to itself. It
answers from a replica of every route's state (:mod:`sentinel_stream.stream.replica`,
the state topic followed), forwards each event to the input topic with its own side
producer (the loop learns it there, as before), and asks the loop's process over a Unix
socket for ``/health``, ``/ready`` and ``/metrics`` (:mod:`sentinel_stream.http.upstream`).

The loop's process starts it, and starts it again when it exits (with backoff, counted
in ``sentinel_http_process_restarts_total``); it stops it last when the member stops.
The HTTP process exits with the loop's: the kernel sends it SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), and it also checks its parent every tenth of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType

import structlog
from aiohttp import web

from sentinel_stream.config import Settings
from sentinel_stream.detect.refit import make_refitter
from sentinel_stream.engine import Engine
from sentinel_stream.http.server import make_app
from sentinel_stream.http.upstream import Upstream, probes
from sentinel_stream.logs import configure_logging
from sentinel_stream.metrics import Metrics
from sentinel_stream.process import (
    SWITCH_INTERVAL_S,
    Upkeep,
    libc,
    limit_malloc_arenas,
    make_explainer,
    settle_heap,
)
from sentinel_stream.status import LoopStatus
from sentinel_stream.stream.errors import Backoff
from sentinel_stream.stream.replica import StateReplica
from sentinel_stream.stream.side_producer import SideProducer

log = structlog.get_logger("sentinel_stream.http_process")

FLUSH_S = 5.0
"""How long the HTTP process, stopping, waits for its forwarded events' acknowledgements."""
STOP_TIMEOUT_S = 15.0
"""How long the loop's process waits for the HTTP process to stop before killing it:
above the HTTP process's own bounds (its flush, its replica's close)."""
START_TIMEOUT_S = 60.0
"""How long the member waits at start for the HTTP process to listen."""
STEADY_S = 30.0
"""An HTTP process up this long resets the restart backoff."""
_PR_SET_PDEATHSIG = 1


class HttpProcessFailed(RuntimeError):
    """The HTTP process could not start serving."""


class HttpProcess:
    """The loop's process's handle on the HTTP process: start, watch, stop."""

    def __init__(
        self,
        settings: Settings,
        socket_path: str,
        on_restart: Callable[[], object] | None = None,
    ) -> None:
        self._settings = settings
        self._socket_path = socket_path
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._serving: EventType | None = None
        self._started = 0.0
        self._backoff = Backoff(0.5, 10.0)
        self._on_restart = on_restart
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._serving = self._ctx.Event()
        self._proc = self._ctx.Process(
            target=main,
            args=(self._settings, self._socket_path, os.getpid(), self._serving),
            name="sentinel-http",
            # Daemonic: if this process leaves by an unexpected path, multiprocessing
            # terminates the HTTP process at exit rather than waiting for it forever.
            daemon=True,
        )
        self._proc.start()
        self._started = time.monotonic()
        log.info("http_process_started", pid=self._proc.pid)

    async def serving(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the HTTP process listens; raises :class:`HttpProcessFailed` if it
        exits first or takes longer than ``timeout`` (the port is taken, say: the member
        stops, as it would if it could not listen itself)."""
        deadline = time.monotonic() + timeout
        proc, serving = self._proc, self._serving
        assert proc is not None and serving is not None
        while not serving.is_set():
            if proc.exitcode is not None:
                raise HttpProcessFailed(
                    f"the HTTP process exited with {proc.exitcode} before it listened on "
                    f"{self._settings.host}:{self._settings.port} (its log says why)"
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise HttpProcessFailed(f"the HTTP process did not listen within {timeout:.0f} s")
            await asyncio.sleep(0.05)

    def watch(self) -> bool:
        """Start the HTTP process again if it exited (once its backoff allows); True when
        it is running."""
        proc = self._proc
        if proc is None or self._stopping:
            return False
        if proc.is_alive():
            if time.monotonic() - self._started >= STEADY_S:
                self._backoff.succeeded()
            return True
        if self._backoff.ready():
            log.error("http_process_exited", pid=proc.pid, exit_code=proc.exitcode)
            self._backoff.failed()
            if self._on_restart is not None:
                self._on_restart()
            self.start()
        return False

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the HTTP process (SIGTERM: it closes its producer, bounded by
        :data:`FLUSH_S`), killing it if it has not exited within ``timeout``."""
        self._stopping = True
        proc = self._proc
        if proc is None or proc.exitcode is not None:
            return
        proc.terminate()
        proc.join(timeout)
        if proc.exitcode is None:
            log.warning("http_process_killed", pid=proc.pid)
            proc.kill()
            proc.join(5)


def main(settings: Settings, socket_path: str, parent: int, serving: EventType) -> None:
    """The HTTP process (spawned by :class:`HttpProcess`)."""
    prctl = libc("prctl")
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above
        return
    # Ctrl-C reaches the whole process group: the loop's process drains first, then
    # stops this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_format)
    limit_malloc_arenas()
    # Its replica's thread installs the state records it reads: the event loop waits for
    # one install at most, not for Python's 5 ms default.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    sys.exit(asyncio.run(_serve(settings, socket_path, parent, serving)))


async def _serve(settings: Settings, socket_path: str, parent: int, serving: EventType) -> int:
    s = settings
    metrics = Metrics(anomaly_rate_window_s=s.anomaly_rate_window_s)
    # It never learns (the loop learns forwarded events), so it never fits.
    engine = Engine(s, make_refitter(0, s.refit_nice))
    side = SideProducer(s, metrics)
    explainer = make_explainer(s, side, metrics) if s.llm_configured else None
    replica = StateReplica(s, engine, metrics)
    upstream = Upstream(socket_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    replica.start()
    if explainer is not None:
        await explainer.start()
    topic = s.input_topic
    app = make_app(
        engine,
        LoopStatus(),
        metrics,
        s.http_body_max,
        (lambda route, value: side.send(topic, route, value, "forward"))
        if s.http_forward
        else None,
        explainer,
        s.llm_http_budget_s,
        owner=None,  # the replica holds every route's model: no member needs asking
        instance=s.instance_id,
        probes=probes(
            upstream,
            metrics.registry,
            lambda: [] if replica.caught_up else ["the HTTP process is reading the state topic"],
            metrics.health_check_fails.inc,
        ),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, s.host, s.port).start()
        serving.set()
        log.info("http_process_serving", host=s.host, port=s.port)
        settle_heap()
        upkeep = Upkeep(side)
        while not stop.is_set() and os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
            upkeep.tick()
    finally:
        await runner.cleanup()
        await upstream.close()
        if explainer is not None:
            await explainer.close()
        replica.close()
        side.close(FLUSH_S)
        engine.close()
    log.info("http_process_stopped")
    return 0
