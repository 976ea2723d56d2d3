"""Real HTTP servers on 127.0.0.1 that play an LLM server's failure modes (and a good one).

They are stand-ins for an outside service only: each speaks both chat APIs (Ollama's
/api/chat and OpenAI's /v1/chat/completions) and misbehaves as told.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web


class StandIn:
    """An aiohttp server on its own thread whose behaviour can be switched at run time."""

    def __init__(self, mode: str = "ok", delay_s: float = 0.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.calls = 0
        self.last_request: dict[str, Any] | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.last_request = await request.json()
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.mode == "error":
            return web.json_response({"error": "boom"}, status=500)
        if self.mode == "garbage":
            return web.Response(body=b"\x00\xffnot json{{", content_type="application/json")
        text = "Latency is far above this route's usual values.\x07 Check the upstream.\n"
        if request.path.endswith("/api/chat"):
            return web.json_response({"message": {"role": "assistant", "content": text}})
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": text}}]})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/api/chat", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        # Hanging handlers are cancelled first, so that cleanup does not wait for them.
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.wait_for(runner.cleanup(), 5))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StandIn:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("stand-in server did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextmanager
def stand_in(mode: str = "ok", delay_s: float = 0.0) -> Iterator[StandIn]:
    server = StandIn(mode, delay_s).start()
    try:
        yield server
    finally:
        server.stop()
