"""Kubernetes manifests checked against their kinds' schemas, without a cluster.

The schemas come from generated models installed from PyPI (cloudcoil's
``cloudcoil-models-kubernetes``, ``-keda`` and ``-prometheus-operator``: pydantic models
generated from the Kubernetes OpenAPI document and the KEDA and Prometheus-operator
CRDs). Each kind's model gives its JSON Schema, which we make strict the way
``kubectl --validate=strict`` is (an object's unknown field is an error, not dropped)
and check documents against with ``jsonschema``: a misspelt ``readinesProbe``, a string
where a port number goes, or a missing required field all fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

NOT_RESOURCES = frozenset({"Kustomization"})
"""Kinds of files that sit beside manifests but are no API objects."""


class UnknownKind(LookupError):
    pass


def documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is not None:
            yield doc


def _strict(node: Any) -> None:
    """Forbid unknown fields in every object schema that lists its fields, drop the
    ``null`` branch of optional fields, and spell Go's ``^(?i)...`` patterns as Python's
    ``re`` needs them (flags first)."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        # Optional fields are `X or null` in the generated schema: plain X reads better
        # in an error ("not of type integer" at the field, not "no branch matched" above).
        any_of = node.get("anyOf")
        if isinstance(any_of, list):
            rest = [branch for branch in any_of if branch != {"type": "null"}]
            if len(rest) == 1 and len(rest) < len(any_of):
                del node["anyOf"]
                node.update(rest[0])
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            node["pattern"] = "(?i)^" + pattern[5:]
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)


@cache
def validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    # Imported here: the models take seconds to import, and only these tests need them.
    import cloudcoil.models.keda
    import cloudcoil.models.kubernetes
    import cloudcoil.models.prometheus_operator  # noqa: F401  (registers the kinds)
    from cloudcoil.resources import get_model

    try:
        model = get_model(kind, api_version=api_version)
    except Exception as exc:
        raise UnknownKind(f"no schema for {api_version} {kind}") from exc
    schema = model.model_json_schema(by_alias=True, mode="validation")
    _strict(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def errors(doc: dict[str, Any]) -> list[str]:
    """What is wrong with ``doc`` against its kind's schema (empty: valid)."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind are required strings"]
    v = validator(api_version, kind)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
