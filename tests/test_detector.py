"""The detector's policy: bounds, warm-up rules, refits, flagged rows kept out of training."""

from __future__ import annotations

import math

import numpy as np

from sentinel_stream.config import Settings
from sentinel_stream.decode import Event
from sentinel_stream.detector import Detector, DetectorParams, onto_threshold
from sentinel_stream.engine import Engine
from sentinel_stream.refit import InlineRefitter, ProcessRefitter
from sentinel_stream.rules import telemetry_rules
from sentinel_stream.window import RouteTable, Window


def ev(
    route: str, latency: float = 100.0, input_length: int = 500, errors: int = 0, i: int = 0
) -> Event:
    return Event(route, latency, input_length, errors, f"e{i}", "2026-01-01T00:00:00.000Z", None)


def normal(route: str, n: int, seed: int = 0, start: int = 0) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [
        ev(
            route,
            float(rng.lognormal(math.log(100), 0.2)),
            int(rng.lognormal(math.log(500), 0.2)),
            int(rng.random() < 0.01),
            start + i,
        )
        for i in range(n)
    ]


def engine(**kw: object) -> Engine:
    return Engine(Settings(refit_workers=0, seed=1, **kw))  # type: ignore[arg-type]


def run(e: Engine, events: list[Event], batch: int = 50) -> list[dict[str, object]]:
    """Process in poll-sized batches, as the pipeline does (models install between them)."""
    out: list[dict[str, object]] = []
    for i in range(0, len(events), batch):
        out += e.process(events[i : i + batch])
    return out


def test_window_keeps_last_rows_in_order() -> None:
    w = Window(5, 1)
    for chunk in ([1, 2], [3], [4, 5, 6, 7], [8]):
        w.extend(np.array(chunk, dtype=np.float32).reshape(-1, 1))
    assert w.snapshot().ravel().tolist() == [4, 5, 6, 7, 8]
    assert len(w) == 5 and w.total == 8
    w.extend(np.arange(20, 32, dtype=np.float32).reshape(-1, 1))
    assert w.snapshot().ravel().tolist() == [27, 28, 29, 30, 31]


def test_route_table_evicts_least_recently_seen() -> None:
    evicted: list[str] = []
    t: RouteTable[int] = RouteTable(2, lambda r: 0, lambda r, v: evicted.append(r))
    t.touch("a"), t.touch("b"), t.touch("a"), t.touch("c")
    assert evicted == ["b"] and "a" in t and "c" in t and len(t) == 2 and t.evicted == 1


def test_cold_service_flags_the_older_smoke_test() -> None:
    v = engine().process([ev("/fresh", 25000, 50000, 15)])[0]
    assert v["status"] == "THREAT_DETECTED" and v["detector"] == "rules" and v["warming_up"]
    assert v["model_version"] is None
    text = v["explanation"]["text"]
    assert "latency 25,000 ms" in text and "no history" in text


def test_warm_up_rules_catch_the_obvious() -> None:
    e = engine(min_history=500)
    e.process(normal("/r", 100))
    base = dict(latency=100.0, input_length=500, errors=0)
    cases = {
        "latency": dict(base, latency=2500.0),
        "input_length": dict(base, input_length=12000),
        "errors": dict(base, errors=6),
    }
    for feature, fields in cases.items():
        v = e.process([ev("/r", **fields)])[0]  # type: ignore[arg-type]
        assert v["is_anomaly"] and v["detector"] == "rules", feature
        top = max(v["explanation"]["attributions"], key=lambda a: a["weight"])
        assert top["feature"] == feature and top["direction"] == "high"
    ok = e.process([ev("/r", 130.0, 600, 0)])[0]
    assert not ok["is_anomaly"]


def test_model_takes_over_with_versions_and_flags_spikes() -> None:
    e = engine()
    out = run(e, normal("/m", 300, seed=2))
    assert out[0]["warming_up"] and not out[-1]["warming_up"]
    first_model = next(v for v in out if not v["warming_up"])
    assert first_model["detector"] == "isolation_forest" and first_model["model_version"] == 1
    more = run(e, normal("/m", 300, seed=3, start=300))
    assert more[-1]["model_version"] == 2
    spike = e.process([ev("/m", 100.0 * 30, 500, 0)])[0]
    assert spike["is_anomaly"]
    assert spike["explanation"]["attributions"][0]["feature"] == "latency"
    assert "latency 3,000 ms is" in spike["explanation"]["text"]


def test_false_alarms_on_normal_traffic_are_rare() -> None:
    e = engine()
    out = run(e, normal("/n", 6000, seed=4), 200)
    scored = [v for v in out if not v["warming_up"]]
    rate = sum(v["is_anomaly"] for v in scored) / len(scored)
    assert rate < 0.01


def test_flagged_rows_do_not_enter_the_window() -> None:
    e = engine(min_history=500)
    e.process(normal("/f", 100))
    state = e.detector.route_state("/f")
    assert state is not None
    before = len(state.window)
    e.process([ev("/f", 90000, 500, 0)] * 5)
    assert len(state.window) == before
    e.process(normal("/f", 5, seed=9))
    assert len(state.window) == before + 5


def test_sustained_shift_is_learnt_eventually() -> None:
    e = engine(history_max=200, min_history=100, refit_every=50)
    run(e, normal("/d", 300))
    shifted = [ev("/d", 100.0 * 40, 500, 0, i) for i in range(1500)]
    flags = [v["is_anomaly"] for v in run(e, shifted, 20)]
    # A burst three windows long is still flagged throughout: it is not learnt as normal...
    assert all(flags[:600])
    # ...but a shift that lasts (five windows of mostly-flagged traffic) becomes normal.
    assert not flags[-1]


def test_window_and_route_bounds_hold() -> None:
    e = engine(history_max=50, min_history=20, max_routes=3, max_models=2, refit_every=10)
    for r in range(6):
        run(e, normal(f"/b{r}", 120, seed=r), 30)
    d = e.detector
    assert d.routes_tracked == 3 and d.stats.routes_evicted == 3
    assert d.models_trained <= 2 and d.stats.models_dropped >= 1
    for r in range(3, 6):
        state = d.route_state(f"/b{r}")
        assert state is not None and len(state.window) == 50


def test_onto_threshold_is_monotone_and_fixes_the_threshold() -> None:
    s = np.linspace(0, 1, 101)
    m = onto_threshold(s, 0.5, 0.7)
    assert np.all(np.diff(m) > 0)
    assert onto_threshold(np.array([0.5]), 0.5, 0.7)[0] == 0.7
    assert onto_threshold(np.array([1.0]), 0.5, 0.7)[0] == 1.0


def test_background_refits_swap_in_models() -> None:
    refitter = ProcessRefitter(1)
    try:
        d = Detector(
            DetectorParams(n_features=3, min_history=50, model_features=(0, 1)),
            telemetry_rules(20, 5),
            refitter,
        )
        raw = np.random.default_rng(0).lognormal(3, 0.2, size=(60, 3))
        raw[:, 2] = 0
        rows = np.log1p(raw).astype(np.float32)
        d.score_and_learn("/bg", rows)
        assert refitter.running + refitter.queued == 1
        assert refitter.wait_idle(60)
        assert d.install_completed() == 1
        s = d.score_and_learn("/bg", rows[:3])
        assert s.detector == "isolation_forest" and s.model_version == 1
    finally:
        refitter.close()


def test_inline_refitter_is_deterministic_with_a_seed() -> None:
    a, b = engine(), engine()
    ev_ = normal("/s", 400, seed=5)
    assert [v["score"] for v in run(a, ev_)] == [v["score"] for v in run(b, ev_)]
    assert isinstance(a.refitter, InlineRefitter)


def test_rows_flagged_by_a_small_margin_still_teach() -> None:
    # Keeping every flagged row out would cut the tail of normal traffic off the training
    # data; only rows clearly above the threshold (by learn_margin) stay out.
    e = engine(min_history=200, learn_margin=0.1)
    run(e, normal("/t", 400, seed=3), 100)
    d = e.detector
    state = d.route_state("/t")
    assert state is not None and state.model is not None
    thr = state.model.threshold
    factors = np.linspace(1.0, 60.0, 600)
    probe = np.log1p(np.array([[100.0 * f, 500.0, 0.0] for f in factors])).astype(np.float32)
    scores = d.score_and_learn("/t", probe, learn=False).scores
    marginal = probe[(scores >= thr) & (scores < thr + 0.1)][:1]
    clear = probe[scores >= thr + 0.1][:1]
    assert len(marginal) == 1 and len(clear) == 1
    before = state.window.total
    assert d.score_and_learn("/t", marginal).flags.all()
    assert state.window.total == before + 1
    assert d.score_and_learn("/t", clear).flags.all()
    assert state.window.total == before + 1
    # With no margin, every flagged row stays out (the stricter policy). Same traffic and
    # seed, so the same model: the marginal row is flagged there too.
    strict = engine(min_history=200, learn_margin=0.0)
    run(strict, normal("/t", 400, seed=3), 100)
    s_state = strict.detector.route_state("/t")
    assert s_state is not None
    s_before = s_state.window.total
    assert strict.detector.score_and_learn("/t", marginal).flags.all()
    assert s_state.window.total == s_before


def test_mild_rises_on_every_axis_add_up_to_an_anomaly() -> None:
    rules = telemetry_rules(20, 5)
    reference = np.log1p(np.array([100.0, 500.0, 0.0]))
    joint = np.log1p(np.array([[400.0, 2000.0, 3.0]])).astype(np.float32)
    one_axis = np.log1p(np.array([[400.0, 500.0, 0.0]])).astype(np.float32)
    assert rules.sum_excess
    assert rules.score(joint, reference).scores[0] >= 0.5
    assert rules.score(one_axis, reference).scores[0] < 0.25
    # Judged one feature at a time, the same event is not anomalous.
    from sentinel_stream.rules import RuleScorer

    assert RuleScorer(rules.specs).score(joint, reference).scores[0] < 0.5


def test_the_window_hands_what_leaves_it_to_the_long_memory() -> None:
    w = Window(5, 1)
    rows = np.arange(12, dtype=np.float32).reshape(-1, 1)
    assert len(w.extend(rows[:3])) == 0
    assert w.extend(rows[3:7]).ravel().tolist() == [0, 1]
    assert w.extend(rows[7:8]).ravel().tolist() == [2]
    # More rows than the window holds: the old rows, then those that pass straight through.
    assert w.extend(rows[8:12]).ravel().tolist() == [3, 4, 5, 6]
    assert w.snapshot().ravel().tolist() == [7, 8, 9, 10, 11]
    big = Window(3, 1)
    big.extend(rows[:2])
    assert big.extend(rows[2:8]).ravel().tolist() == [0, 1, 2, 3, 4]


def test_long_memory_holds_only_rows_older_than_the_window() -> None:
    e = engine(history_max=100, min_history=50)
    run(e, normal("/mem", 100, seed=1), 25)
    state = e.detector.route_state("/mem")
    assert state is not None and state.memory is not None
    assert len(state.memory) == 0  # nothing has left the window yet: no memory used
    later = normal("/mem", 300, seed=2, start=100)
    run(e, later, 25)
    window = {tuple(r) for r in state.window.snapshot().tolist()}
    older = {tuple(r) for r in state.memory.snapshot().tolist()}
    assert len(older) == 100 and not (window & older)
