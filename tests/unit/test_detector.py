"""The detector's policy: bounds, warm-up rules, refits, flagged rows kept out of training."""

from __future__ import annotations

import numpy as np

from tests.support.telemetry import engine, ev, normal, run


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
