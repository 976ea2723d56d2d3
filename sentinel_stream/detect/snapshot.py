"""A route's learnt state as bytes, and back: what the state changelog carries.

What a route knows is its recent window, its long-memory sample, its model (the compiled
forest, its threshold and version) and a few counters; everything else (baseline, rule
reference) is derived from those and recomputed on restore. Writing the model itself,
not only the rows it was fit on, is what lets a restored route score with its model at
its first event: refitting thousands of routes at start would take minutes.

The format is versioned: a magic, a schema version, a JSON header naming each part
(a scalar, or an array's dtype, shape and place), then the arrays' raw bytes. Arrays of
a compiled forest are written field by field by name, so the forest's layout can change
without touching this module; a change that makes old snapshots unreadable bumps
:data:`VERSION`, and a record of a version this service cannot read is refused
(:class:`SnapshotError`): the route warms up again, nothing crashes.

Version 2 holds the compact forest layout (:mod:`.forest`); version 1 held the complete
one, and is still read: its forest is converted on restore, so a service upgraded from
version 1 keeps every route's model.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import time
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from sentinel_stream.detect.baseline import Baseline
from sentinel_stream.detect.detector import Detector, RouteModel, RouteState
from sentinel_stream.detect.forest import CompiledForest, from_complete_layout

MAGIC = b"SSN"
VERSION = 2
READABLE = (1, 2)
"""Versions this service restores (1: the complete forest layout, converted)."""
_HEAD = struct.Struct("<3sHI")
"""magic, schema version, header length."""

Part = npt.NDArray[Any] | int | float | str | bool | None


class SnapshotError(ValueError):
    """Bytes that are not a snapshot this version can read."""


def encode(parts: dict[str, Part]) -> bytes:
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, value in parts.items():
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            header[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "at": offset}
            blobs.append(a.tobytes())
            offset += a.nbytes
        elif isinstance(value, float) and not np.isfinite(value):
            header[name] = {"float": repr(value)}  # JSON has no inf or NaN
        else:
            header[name] = {"value": value}
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, VERSION, len(head)) + head + b"".join(blobs)


def decode(data: bytes) -> dict[str, Part]:
    if len(data) < _HEAD.size:
        raise SnapshotError("too short for a snapshot")
    magic, version, head_len = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a snapshot")
    if version not in READABLE:
        raise SnapshotError(f"snapshot schema version {version}, this service reads {READABLE}")
    start = _HEAD.size + head_len
    try:
        header = json.loads(data[_HEAD.size : start])
        body = memoryview(data)[start:]
        out: dict[str, Part] = {}
        for name, desc in header.items():
            if "dtype" in desc:
                dtype = np.dtype(desc["dtype"])
                count = int(np.prod(desc["shape"])) if desc["shape"] else 1
                a = np.frombuffer(body, dtype=dtype, count=count, offset=int(desc["at"]))
                out[name] = a.reshape(desc["shape"]).copy()
            elif "float" in desc:
                out[name] = float(desc["float"])
            else:
                out[name] = desc["value"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"corrupt snapshot: {exc}") from None
    return out


T = TypeVar("T")


def _dataclass_parts(prefix: str, obj: Any) -> dict[str, Part]:
    """A dataclass of arrays and scalars, field by field under ``prefix``."""
    return {f"{prefix}.{f.name}": getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def _dataclass_from(prefix: str, cls: type[T], parts: dict[str, Part]) -> T:
    kwargs: dict[str, Any] = {
        f.name: parts[f"{prefix}.{f.name}"]
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init
    }
    return cls(**kwargs)


def _forest_from(parts: dict[str, Part], version: int) -> CompiledForest:
    """The snapshot's forest, checked (a garbled one must not reach the kernel)."""
    if version == 1:
        names = ("feature", "threshold", "leaf_code", "low", "high", "floor")
        arrays = {n: parts[f"forest.{n}"] for n in names}
        scalars = {n: parts[f"forest.{n}"] for n in ("depth", "denominator", "n_features")}
        forest = from_complete_layout(**arrays, **scalars)  # type: ignore[arg-type]
    else:
        forest = _dataclass_from("forest", CompiledForest, parts)
    forest.check()
    return forest


def snapshot_route(detector: Detector, route: str) -> bytes | None:
    """The route's state as bytes; None when the detector does not hold the route."""
    state = detector.route_state(route)
    if state is None:
        return None
    parts: dict[str, Part] = {
        "window": state.window.snapshot(),
        "window.total": state.window.total,
        "versions": state.versions,
        "flag_rate": float(state.flag_rate),
        "admitted_since_fit": state.admitted_since_fit,
        "admitted_since_baseline": state.admitted_since_baseline,
        "tail_hits": state.tail_hits,
        "scored_since_fit": state.scored_since_fit,
        "refit_backoff": state.refit_backoff,
        "disagreement": float(state.disagreement),
        "distrusted": int(state.distrusted),
        "distrusted_at": state.distrusted_at,
        "shift_rows": -1 if state.shift_rows is None else state.shift_rows,
    }
    if state.baseline is not None:
        # Derived, but kept: recomputed now, it would differ from the one the route
        # scored with (it is refreshed on a cadence), and so would the scores.
        parts.update(_dataclass_parts("baseline", state.baseline))
    if state.memory is not None:
        parts["memory"] = state.memory.snapshot()
        parts["memory.seen"] = state.memory.seen
    model = state.model
    if model is not None:
        parts.update(
            {
                "model.threshold": float(model.threshold),
                "model.version": model.version,
                "model.trained_on": model.trained_on,
                "model.tail_score": float(model.tail_score),
                **_dataclass_parts("forest", model.forest),
            }
        )
    return encode(parts)


def restore_route(detector: Detector, route: str, data: bytes) -> RouteState:
    """Install ``route``'s state from ``data`` (replacing what the detector held).

    Raises :class:`SnapshotError` when the bytes cannot be read or do not fit this
    detector (another feature count): the caller counts it, and the route warms up.
    """
    parts = decode(data)
    version = _HEAD.unpack_from(data)[1]
    state = detector.new_state(route)
    try:
        window = parts["window"]
        if not isinstance(window, np.ndarray) or window.ndim != 2:
            raise SnapshotError("no window rows")
        if window.shape[1] != detector.params.n_features:
            raise SnapshotError(
                f"rows of {window.shape[1]} features, the detector has {detector.params.n_features}"
            )
        state.window.extend(window.astype(np.float32, copy=False))
        state.window.total = int(parts["window.total"])  # type: ignore[arg-type]
        memory = parts.get("memory")
        if state.memory is not None and isinstance(memory, np.ndarray) and len(memory):
            state.memory.load(memory.astype(np.float32, copy=False), int(parts["memory.seen"]))  # type: ignore[arg-type]
        state.versions = int(parts["versions"])  # type: ignore[arg-type]
        state.flag_rate = float(parts["flag_rate"])  # type: ignore[arg-type]
        state.admitted_since_fit = int(parts["admitted_since_fit"])  # type: ignore[arg-type]
        state.admitted_since_baseline = int(parts["admitted_since_baseline"])  # type: ignore[arg-type]
        # Counters that pace refits (newer than the first snapshots: absent means 0).
        state.tail_hits = int(parts.get("tail_hits", 0))  # type: ignore[arg-type]
        state.scored_since_fit = int(parts.get("scored_since_fit", 0))  # type: ignore[arg-type]
        state.refit_backoff = int(parts.get("refit_backoff", 0))  # type: ignore[arg-type]
        # Whether the model is trusted (newer still: absent means trusted, no shift).
        state.disagreement = float(parts.get("disagreement", 0.0))  # type: ignore[arg-type]
        state.distrusted = bool(parts.get("distrusted", 0))
        state.distrusted_at = int(parts.get("distrusted_at", 0))  # type: ignore[arg-type]
        shift_rows = int(parts.get("shift_rows", -1))  # type: ignore[arg-type]
        state.shift_rows = None if shift_rows < 0 else shift_rows
        if "baseline.count" in parts:
            state.baseline = _dataclass_from("baseline", Baseline, parts)
        if "model.version" in parts:
            state.model = RouteModel(
                forest=_forest_from(parts, version),
                threshold=float(parts["model.threshold"]),  # type: ignore[arg-type]
                version=int(parts["model.version"]),  # type: ignore[arg-type]
                trained_on=int(parts["model.trained_on"]),  # type: ignore[arg-type]
                fitted_at=time.monotonic(),
                tail_score=float(parts.get("model.tail_score", 1.0)),  # type: ignore[arg-type]
            )
            state.versions = max(state.versions, state.model.version)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"snapshot lacks or garbles a part: {exc}") from None
    detector.adopt(route, state)
    return state
