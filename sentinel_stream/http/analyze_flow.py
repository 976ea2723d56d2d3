"""``POST /analyze-flow``: the v1 API (CodeFlow Sentinel's), answered by the same engine.

The request is the input event's fields; the answer keeps the v1 shape
(``{"status": "OK"}`` or ``THREAT_DETECTED`` with ``action``, ``reason``,
``prediction_score``, ``confidence``) and adds the verdict's fields. Errors are JSON and
name the field: 400 for a body that is not JSON, 413 over ``SENTINEL_HTTP_BODY_MAX``,
415 for a content type other than JSON, 422 for a body that breaks the input contract.

Scoring runs on the event loop: the engine scores one event with the compiled forest
(not sklearn's ``score_samples``, whose fixed cost per call is milliseconds) and holds
its lock per route, so the loop never waits for a whole Kafka batch.

``confidence`` says how far past the threshold the score is: 0.5 at the threshold,
rising linearly to 1.0 at a score of 1.

Answers are written as Python's ``json.dumps`` writes by default (``", "`` and ``": "``),
as the v1 service's were: its smoke script greps the body for ``"status": "OK"``. orjson
writes compact JSON, and no cheap rewrite of it is byte-equal (strings that hold ``":"``,
non-ASCII text, float spelling), so the standard library writes the answers.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from pydantic import ValidationError

from sentinel_stream.clock import now_iso
from sentinel_stream.engine import Engine, Event
from sentinel_stream.explain.llm import Explainer, ExplainRequest
from sentinel_stream.http.coalesce import Coalescer
from sentinel_stream.records import (
    EVENT_FIELDS,
    VerdictRecord,
    describe_validation,
    field_errors,
)

JSON_TYPES = ("application/json",)


def json_response(body: object, status: int = 200) -> web.Response:
    """``body`` as ``json.dumps`` writes it by default: the v1 service's spacing."""
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


def error_response(
    status: int, error: str, message: str, fields: list[dict[str, str]] | None = None
) -> web.Response:
    return json_response({"error": error, "message": message, "fields": fields or []}, status)


def confidence(score: float, threshold: float) -> float:
    if threshold >= 1.0:
        return 1.0
    return round(min(1.0, 0.5 + 0.5 * max(0.0, score - threshold) / (1.0 - threshold)), 4)


def to_response(verdict: VerdictRecord) -> dict[str, Any]:
    """The v1 API's shape, then the additive verdict fields."""
    body: dict[str, Any] = {"status": verdict["status"]}
    if verdict["is_anomaly"]:
        body.update(
            action="freeze",
            reason=verdict["explanation"]["text"],
            prediction_score=round(verdict["score"], 4),
            confidence=confidence(verdict["score"], verdict["threshold"]),
        )
    body.update(
        event_id=verdict["event_id"],
        score=verdict["score"],
        threshold=verdict["threshold"],
        detector=verdict["detector"],
        warming_up=verdict["warming_up"],
        model_version=verdict["model_version"],
        explanation=verdict["explanation"],
    )
    return body


def canonical_event(ev: Event, user_id: object) -> bytes:
    """The event as the input topic carries it, with the id and time this member gave
    it: what is forwarded, and what the route's owner is asked about (made only for
    those: a member that does neither answers without it)."""
    fields: dict[str, Any] = {
        "latency": ev.latency,
        "input_length": ev.input_length,
        "errors": ev.errors,
        "route": ev.route,
        "event_id": ev.event_id,
        "timestamp": ev.event_time,
    }
    if user_id is not None:
        fields["user_id"] = user_id
    return orjson.dumps(fields)


Forward = Callable[[str, bytes], bool]
"""Sends an event (route, JSON bytes) to the input topic; False when it could not (the
side producer's queue is full: counted)."""

OnVerdict = Callable[[bool], object]
"""Told of each verdict (is it an anomaly): the metrics."""


Owner = Callable[[str], str | None]
"""The HTTP address of the member that owns a route, or None when this one does (or no
owner is known)."""
HOP_HEADER = "X-Sentinel-Hop"
"""Marks a request one member passed to the route's owner: answered there, never passed
on again nor forwarded to the input topic a second time."""


class AnalyzeFlow:
    """The handler, with what it needs: the engine, a body limit, and optionally a way to
    forward events to the input topic, an LLM explainer with a time budget, and a way to
    find the member that owns a route (whose model answers for it)."""

    def __init__(
        self,
        engine: Engine,
        body_max: int,
        forward: Forward | None = None,
        explainer: Explainer | None = None,
        llm_budget_s: float = 1.0,
        on_verdict: OnVerdict | None = None,
        owner: Owner | None = None,
        owner_timeout_s: float = 0.25,
        on_owner: Callable[[str], object] | None = None,
        instance: str | None = None,
    ) -> None:
        self.engine = engine
        self.body_max = body_max
        self.forward = forward
        self.explainer = explainer
        self.llm_budget_s = llm_budget_s
        self.on_verdict = on_verdict
        self.owner = owner
        self._owner_timeout = aiohttp.ClientTimeout(total=owner_timeout_s)
        self._on_owner = on_owner
        """Told how each request was answered: ``self``, ``owner`` or ``owner_failed``."""
        self.instance = instance
        self._session: aiohttp.ClientSession | None = None
        self._coalescer = Coalescer(lambda events: engine.process(events, learn=False))
        self._id_prefix = f"http-{uuid.uuid4().hex[:12]}-"
        self._ids = itertools.count(1)

    def _next_id(self) -> str:
        """Unique per process start and request, without a uuid4 per request."""
        return f"{self._id_prefix}{next(self._ids)}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, request: web.Request) -> web.Response:
        if request.content_type not in JSON_TYPES:
            return error_response(
                415,
                "unsupported_media_type",
                f"send application/json, not {request.content_type!r}",
            )
        if request.content_length is not None and request.content_length > self.body_max:
            return self._too_large()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        if len(body) > self.body_max:
            return self._too_large()
        try:
            event = EVENT_FIELDS.validate_json(body)
        except ValidationError as exc:
            code, detail = describe_validation(exc)
            if code == "invalid_json":
                return error_response(400, "invalid_json", "the body is not a JSON document")
            return error_response(422, "invalid_event", detail, field_errors(exc, "(body)"))
        ev = Event.from_record(event, default_id=self._next_id(), default_time=now_iso())
        hop = HOP_HEADER in request.headers
        answer = None
        canonical: bytes | None = None  # made once, for the owner or the input topic
        if not hop and self.owner is not None:
            url = self.owner(ev.route)
            if url is not None:
                canonical = canonical_event(ev, event.get("user_id"))
                answer = await self._ask_owner(url, canonical)
        if answer is None:
            if not hop and self.owner is not None:
                self._owner_outcome("self")
            answer = await self._answer(ev)
        if self.forward is not None and not hop:
            # Forwarded once, by the member the caller asked: the Kafka loop learns it.
            # Said out loud when it could not be: such an event trains nothing.
            if canonical is None:
                canonical = canonical_event(ev, event.get("user_id"))
            answer["forwarded"] = self.forward(ev.route, canonical)
        return json_response(answer)

    async def _answer(self, ev: Event) -> dict[str, Any]:
        """This member's verdict. Never learnt here: with forwarding on, the Kafka loop
        learns the event once."""
        verdict = await self._coalescer.verdict(ev)
        if self.on_verdict is not None:
            self.on_verdict(verdict["is_anomaly"])
        answer = to_response(verdict)
        if self.instance is not None:
            answer["answered_by"] = self.instance
        if verdict["is_anomaly"] and self.explainer is not None and self.llm_budget_s > 0:
            text = await self.explainer.explain_now(
                ExplainRequest.from_verdict(verdict), self.llm_budget_s
            )
            if text is not None:
                answer["reason"] = text
                answer["reason_source"] = "llm"
        return answer

    async def _ask_owner(self, url: str, canonical: bytes) -> dict[str, Any] | None:
        """The owner's answer for the event, or None (it did not answer in time: this
        member answers itself, with what it knows)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._owner_timeout)
        try:
            async with self._session.post(
                url.rstrip("/") + "/analyze-flow",
                data=canonical,
                headers={"Content-Type": "application/json", HOP_HEADER: "1"},
            ) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, resp.history, status=resp.status
                    )
                answer: dict[str, Any] = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self._owner_outcome("owner_failed")
            return None
        answer.pop("forwarded", None)
        self._owner_outcome("owner")
        return answer

    def _owner_outcome(self, outcome: str) -> None:
        if self._on_owner is not None:
            self._on_owner(outcome)

    def _too_large(self) -> web.Response:
        return error_response(413, "too_large", f"the body is larger than {self.body_max} bytes")
