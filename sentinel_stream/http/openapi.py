"""The OpenAPI document of the side server, generated from the models the handlers use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sentinel_stream import __version__
from sentinel_stream.records import AnalyzeFlowResponse, ErrorResponse, TelemetryEvent

_REF = "#/components/schemas/{model}"


def _schemas(*models: tuple[type[BaseModel], str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model, mode in models:
        schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _any_json(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


def openapi_document() -> dict[str, Any]:
    errors = {
        "400": _json("ErrorResponse", "the body is not JSON"),
        "413": _json("ErrorResponse", "the body is larger than SENTINEL_HTTP_BODY_MAX"),
        "415": _json("ErrorResponse", "the content type is not application/json"),
        "422": _json(
            "ErrorResponse", "the body breaks the input contract; each bad field is named"
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sentinel-stream side server",
            "version": __version__,
            "description": "Per-request anomaly verdicts (CodeFlow Sentinel compatible).",
        },
        "paths": {
            "/analyze-flow": {
                "post": {
                    "operationId": "analyzeFlow",
                    "summary": "Score one request's telemetry",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/TelemetryEvent"}
                            }
                        },
                    },
                    "responses": {"200": _json("AnalyzeFlowResponse", "the verdict"), **errors},
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: 200 unless the consumer loop is stuck or failed",
                    "responses": {"200": _any_json("alive"), "503": _any_json("stuck or failed")},
                }
            },
            "/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: partitions assigned and the producer working",
                    "responses": {
                        "200": _any_json("ready"),
                        "503": _any_json("not ready, with reasons"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus text exposition",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _any_json("the OpenAPI document")},
                }
            },
        },
        "components": {
            "schemas": _schemas(
                (TelemetryEvent, "validation"),
                (AnalyzeFlowResponse, "serialization"),
                (ErrorResponse, "serialization"),
            )
        },
    }
