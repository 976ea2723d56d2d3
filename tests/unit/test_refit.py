"""Where fits run: worker processes or inline, within a budget, first fits first."""

from __future__ import annotations

import numpy as np

from sentinel_stream.detect.detector import Detector
from sentinel_stream.detect.params import DetectorParams
from sentinel_stream.detect.refit import FitRequest, InlineRefitter, ProcessRefitter
from sentinel_stream.detect.rules import telemetry_rules
from tests.support.telemetry import engine, normal, run


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


def _request(route: str, token: int, rows: int = 64, seed: int = 0) -> FitRequest:
    data = np.random.default_rng(seed).lognormal(3, 0.2, size=(rows, 2)).astype(np.float32)
    return FitRequest(route, token, np.log1p(data), 10, 32, 0.01, 0.5, seed)


def test_first_fits_go_before_refits() -> None:
    refitter = ProcessRefitter(1)
    try:
        refitter.submit("/busy", False, lambda: _request("/busy", 1))  # takes the worker
        refitter.submit("/again", False, lambda: _request("/again", 1))
        refitter.submit("/new", True, lambda: _request("/new", 1))
        assert refitter.running == 1 and refitter.queued == 2
        assert refitter.wait_idle(120)
        order = [r.route for r in refitter.collect()]
        assert order == ["/busy", "/new", "/again"]
    finally:
        refitter.close()


def test_a_request_whose_route_is_gone_is_skipped() -> None:
    refitter = InlineRefitter()
    refitter.submit("/gone", True, lambda: None)
    assert refitter.collect() == []


def test_a_failed_fit_is_reported_and_the_route_asks_again() -> None:
    # scikit-learn refuses a forest of no trees: every fit of this detector fails.
    params = DetectorParams(min_history=20, refit_min_interval_s=0.0, n_estimators=0)
    refitter = InlineRefitter()
    d = Detector(params, telemetry_rules(20, 5), refitter)
    raw = np.random.default_rng(0).lognormal(3, 0.2, size=(30, 3))
    raw[:, 2] = 0  # no errors
    rows = np.log1p(raw).astype(np.float32)
    d.score_and_learn("/bad", rows)
    assert d.install_completed() == 0 and d.stats.fits_discarded == 1 and refitter.failures == 1
    state = d.route_state("/bad")
    assert state is not None and not state.fit_pending and state.model is None
    s = d.score_and_learn("/bad", rows[:5])  # still scored, by the rules
    assert s.detector == "rules" and refitter.failures == 2
