"""JSON Schemas of the records, generated from the models and published under schemas/.

``tests/unit/test_schemas.py`` fails when the files in the repository differ from what the
models generate, so the published schemas cannot drift from the code.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from sentinel_stream.records import ExplanationRecord, TelemetryEvent, Verdict

SCHEMAS: dict[str, type[BaseModel]] = {
    "telemetry-event.schema.json": TelemetryEvent,
    "verdict.schema.json": Verdict,
    "explanation.schema.json": ExplanationRecord,
}


def render(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(
        mode="validation" if model is TelemetryEvent else "serialization"
    )
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in SCHEMAS.items():
        path = out / name
        path.write_text(render(model), encoding="utf-8")
        paths.append(path)
    return paths
