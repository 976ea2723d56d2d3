"""A route's state survives bytes: restored, it scores as before; bad bytes are refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sentinel_stream.detect.snapshot import (
    MAGIC,
    VERSION,
    Part,
    SnapshotError,
    decode,
    encode,
    restore_route,
    snapshot_route,
)
from tests.support.detector import new_regime, stream, unknown_features_detector
from tests.support.telemetry import engine, ev, normal, run


def test_parts_round_trip() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    parts: dict[str, Part] = {
        "a": a,
        "b": np.array([1, 2], dtype=np.uint16),
        "n": 7,
        "x": 0.25,
        "inf": float("-inf"),
        "none": None,
    }
    back = decode(encode(parts))
    back_a, back_b = back["a"], back["b"]
    assert isinstance(back_a, np.ndarray) and isinstance(back_b, np.ndarray)
    assert back_a.tolist() == a.tolist() and back_a.dtype == np.float32
    assert back_b.dtype == np.uint16
    assert back["n"] == 7 and back["x"] == 0.25 and back["inf"] == float("-inf")
    assert back["none"] is None


def test_a_restored_route_scores_with_its_model_as_before() -> None:
    first = engine(min_history=100, history_max=300)
    run(first, normal("/s", 900, seed=3), 50)
    state = first.detector.route_state("/s")
    assert state is not None and state.model is not None
    data = snapshot_route(first.detector, "/s")
    assert data is not None

    second = engine(min_history=100, history_max=300)
    restored = restore_route(second.detector, "/s", data)
    assert restored.model is not None and restored.model.version == state.model.version
    assert restored.window.snapshot().tolist() == state.window.snapshot().tolist()
    assert restored.memory is not None and state.memory is not None
    assert restored.memory.snapshot().tolist() == state.memory.snapshot().tolist()
    probe = [ev("/s", latency) for latency in (100.0, 180.0, 900.0, 30000.0)]
    a = first.process(probe, learn=False)
    b = second.process(probe, learn=False)
    assert [v["score"] for v in a] == [v["score"] for v in b]
    assert {v["model_version"] for v in b} == {state.model.version}
    assert not b[0]["warming_up"]


def test_a_distrusted_model_stays_distrusted_across_a_restore() -> None:
    # A young model that disagreed with most of its traffic scores nothing until a model
    # fit after the distrust is installed (the detector's point 3); a member that takes
    # the route over from the changelog must not trust it again, and weighs the same
    # shift. A disagreement on its way there is carried over too.
    rows = new_regime(3)
    first = unknown_features_detector(6)
    stream(first, rows[:425], 25)
    state = first.route_state("r")
    assert state is not None and not state.distrusted and state.disagreement > 0.0
    data = snapshot_route(first, "r")
    assert data is not None
    assert restore_route(unknown_features_detector(6), "r", data).disagreement == (
        state.disagreement
    )

    stream(first, rows[425:525], 25)
    assert state.distrusted and state.shift_rows is not None
    data = snapshot_route(first, "r")
    assert data is not None
    second = unknown_features_detector(6)
    restored = restore_route(second, "r", data)
    assert restored.distrusted and restored.shift_rows == state.shift_rows
    assert restored.distrusted_at == state.distrusted_at
    probe = rows[525:550].astype(np.float32)
    assert second.score_and_learn("r", probe, learn=False).detector == "rules"

    # A snapshot from before the distrust existed restores a trusted model, no shift.
    parts = decode(data)
    for name in ("disagreement", "distrusted", "distrusted_at", "shift_rows"):
        del parts[name]
    older = restore_route(unknown_features_detector(6), "r", encode(parts))
    assert not older.distrusted and older.shift_rows is None and older.disagreement == 0.0
    assert older.model is not None


def test_a_route_without_a_model_restores_its_window() -> None:
    first = engine(min_history=500)
    run(first, normal("/w", 40), 20)
    data = snapshot_route(first.detector, "/w")
    assert data is not None
    second = engine(min_history=500)
    restored = restore_route(second.detector, "/w", data)
    assert restored.model is None and len(restored.window) == 40
    assert restored.baseline is not None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage that is not a snapshot",
        struct.pack("<3sHI", MAGIC, VERSION + 1, 2) + b"{}",
        struct.pack("<3sHI", MAGIC, VERSION, 5) + b"{nope",
        struct.pack("<3sHI", MAGIC, VERSION, 2) + b"{}",
    ],
)
def test_bad_bytes_are_refused_not_crashed_on(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        restore_route(engine().detector, "/bad", data)
    assert engine().detector.route_state("/bad") is None


def test_a_version_1_snapshot_restores_its_model_with_the_same_scores() -> None:
    # What the previous release wrote: the forest in the complete layout.
    from sentinel_stream.detect import snapshot
    from sentinel_stream.detect.fit import fit_forest
    from tests.support.complete_forest import CompleteForest

    first = engine(min_history=100, history_max=300)
    run(first, normal("/v1", 900, seed=3), 50)
    state = first.detector.route_state("/v1")
    assert state is not None and state.model is not None
    rows = state.window.snapshot()[:, :2]
    forest, model = fit_forest(rows, 30, 128, seed=4, one_sided=(0, 1))
    complete = CompleteForest.from_sklearn(model, rows, forest.floor)
    parts = decode(snapshot_route(first.detector, "/v1") or b"")
    parts = {k: v for k, v in parts.items() if not k.startswith("forest.")}
    parts.update({f"forest.{k}": v for k, v in complete.parts().items()})
    body = encode(parts)
    old = struct.pack("<3sHI", MAGIC, 1, 0)[:5] + body[5:]  # the same bytes, version 1
    assert snapshot.READABLE == (1, 2) and VERSION == 2

    second = engine(min_history=100, history_max=300)
    restored = restore_route(second.detector, "/v1", old)
    assert restored.model is not None
    probe = np.log1p(np.array([[100.0, 500.0], [180.0, 700.0], [30000.0, 500.0]], np.float32))
    np.testing.assert_array_equal(restored.model.forest.score(probe), complete.score(probe))
    assert restored.model.forest.nbytes < complete.nbytes / 2


@pytest.mark.parametrize(
    "garble",
    [
        lambda p: p.__setitem__("forest.nodes", p["forest.nodes"][:-1]),
        lambda p: p["forest.nodes"].__setitem__((0, 1), 30000),
        lambda p: p["forest.nodes"].__setitem__((0, 2), 0),
        lambda p: p["forest.nodes"].__setitem__((0, 0), 7),
        lambda p: p["forest.tree_start"].__setitem__(1, 10_000),
        lambda p: p.__setitem__("forest.split", p["forest.split"].astype(np.float64)),
    ],
)
def test_a_garbled_forest_is_refused_before_it_reaches_the_kernel(garble: object) -> None:
    first = engine(min_history=100, history_max=300)
    run(first, normal("/g", 400, seed=3), 50)
    parts = decode(snapshot_route(first.detector, "/g") or b"")
    garble(parts)  # type: ignore[operator]
    with pytest.raises(SnapshotError):
        restore_route(engine().detector, "/g", encode(parts))
