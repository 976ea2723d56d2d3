"""Where fits run: worker processes or inline, within a budget, first fits first."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from sentinel_stream.detect.detector import Detector
from sentinel_stream.detect.fit import fit_scored
from sentinel_stream.detect.params import DetectorParams
from sentinel_stream.detect.refit import FitRequest, InlineRefitter, ProcessRefitter, fit_route
from sentinel_stream.detect.rules import fit_grader, telemetry_rules
from sentinel_stream.detect.threshold import TAIL, tail_threshold, threshold_tail
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


def test_first_fits_and_refits_take_turns() -> None:
    # A flood of new routes must not starve the refits of routes already served (nor the
    # other way round): with both queues waiting, each gets every other worker.
    refitter = ProcessRefitter(1)
    try:
        refitter.submit("/busy", False, lambda: _request("/busy", 1))  # takes the worker
        for r in ("/again1", "/again2"):
            refitter.submit(r, False, lambda r=r: _request(r, 1))  # type: ignore[misc]
        for r in ("/new1", "/new2", "/new3"):
            refitter.submit(r, True, lambda r=r: _request(r, 1))  # type: ignore[misc]
        assert refitter.running == 1 and refitter.queued == 5
        assert refitter.wait_idle(180)
        order = [r.route for r in refitter.collect()]
        assert order == ["/busy", "/new1", "/again1", "/new2", "/again2", "/new3"]
        assert (refitter.dispatched_first, refitter.dispatched_again) == (3, 3)
    finally:
        refitter.close()


def test_a_request_whose_route_is_gone_is_skipped() -> None:
    refitter = InlineRefitter()
    refitter.submit("/gone", True, lambda: None)
    assert refitter.collect() == []


def test_a_failed_fit_is_reported_and_the_route_asks_again_later() -> None:
    # scikit-learn refuses a forest of no trees: every fit of this detector fails. The
    # route asks again after refit_every admitted rows, not on every batch, and waits
    # longer after each further failure.
    params = DetectorParams(
        min_history=20, refit_every=10, refit_min_interval_s=0.0, n_estimators=0
    )
    refitter = InlineRefitter()
    d = Detector(params, telemetry_rules(20, 5), refitter)
    raw = np.random.default_rng(0).lognormal(3, 0.2, size=(400, 3))
    raw[:, 2] = 0  # no errors
    rows = np.log1p(raw).astype(np.float32)
    d.score_and_learn("/bad", rows[:30])
    assert d.install_completed() == 0 and d.stats.fits_discarded == 1 and refitter.failures == 1
    state = d.route_state("/bad")
    assert state is not None and not state.fit_pending and state.model is None
    attempts = []
    for i in range(30, 400, 5):
        s = d.score_and_learn("/bad", rows[i : i + 5])  # still scored, by the rules
        assert s.detector == "rules"
        d.install_completed()
        attempts.append(refitter.failures)
    # 370 rows: retries after 10, 10, 20, 40, 80, 80, 80 ... admitted rows, not 74.
    assert d.stats.fits_failed == refitter.failures
    assert 6 <= refitter.failures <= 9, refitter.failures
    assert d.stats.fits_requested_first == 1


def inline_detector(**params: Any) -> Detector:
    """Telemetry's rules, latency and input size as model features, fits inline, a refit
    due every 50 admitted rows with no minimum interval."""
    base: dict[str, Any] = {
        "refit_every": 50,
        "refit_min_interval_s": 0.0,
        "model_features": (0, 1),
        "seed": 1,
    }
    return Detector(DetectorParams(**(base | params)), telemetry_rules(20, 5), InlineRefitter())


def test_a_model_dropped_by_the_cap_is_refit_on_the_refit_cadence() -> None:
    # Two routes, room for one model. A route whose model was dropped used to ask for a
    # first fit at once, on every batch: each batch installed one model and dropped the
    # other. Now it asks as a refit, after refit_every admitted rows.
    d = inline_detector(min_history=20, max_models=1)
    raw = np.random.default_rng(1).lognormal(3, 0.2, size=(400, 3))
    raw[:, 2] = 0
    rows = np.log1p(raw).astype(np.float32)
    for i in range(0, 400, 10):
        for route in ("/a", "/b"):
            d.install_completed()
            d.score_and_learn(route, rows[i : i + 10])
    assert d.stats.fits_requested_first == 2
    # 380 rows after each first fit: at most 380 / 50 refits each, not one per batch.
    assert d.stats.fits_requested_again <= 2 * (380 // 50)
    assert d.stats.models_dropped >= 1 and d.models_trained == 1


def test_refits_of_a_route_whose_traffic_stays_put_back_off_and_come_back_when_it_moves() -> None:
    d = inline_detector(history_max=200, min_history=50)
    rng = np.random.default_rng(2)

    def rows(n: int, latency: float) -> np.ndarray:
        raw = rng.lognormal([np.log(latency), np.log(500), 0], [0.2, 0.2, 0], size=(n, 3))
        raw[:, 2] = 0
        return np.log1p(raw).astype(np.float32)

    def feed(x: np.ndarray) -> int:
        before = d.stats.models_installed
        for i in range(0, len(x), 10):
            d.install_completed()
            d.score_and_learn("/s", x[i : i + 10])
        d.install_completed()
        return d.stats.models_installed - before

    feed(rows(1000, 100.0))
    # Stable: 4,000 rows would be 80 refits at refit_every; spacing doubles up to 4 windows.
    stable = feed(rows(4000, 100.0))
    assert stable <= 8, stable
    state = d.route_state("/s")
    assert state is not None and state.refit_backoff >= 3
    # Latency doubles (not flagged, but a tail full of it): refits come back at once.
    moved = feed(rows(300, 200.0))
    assert moved >= 3, moved


def test_a_threshold_is_read_from_the_top_5_percent_of_a_full_windows_scores() -> None:
    # A model fit on 2,000 rows reads its threshold from a tail law fit to its top 5 %
    # of out-of-bag scores (anomalies that taught sit at the top: the narrower the tail,
    # the closer to the normal rows' own), a young model's from as many as make 30.
    assert threshold_tail(2000) == 0.05 and threshold_tail(128) == TAIL
    assert threshold_tail(450) == pytest.approx(30 / 450)
    rng = np.random.default_rng(4)
    rows = np.concatenate((rng.normal(size=(1900, 3)), rng.normal(2.5, 0.3, size=(100, 3)))).astype(
        np.float32
    )
    result = fit_route(FitRequest("/t", 1, rows, 100, 256, 0.001, 0.0, 3))
    _, _, oob = fit_scored(rows, 100, 256, 3)
    assert oob is not None
    assert result.threshold == tail_threshold(oob, 0.001, 0.05)
    assert result.threshold != tail_threshold(oob, 0.001, TAIL)


def test_a_graded_fit_reads_its_threshold_from_the_forest_and_the_neighbours_together() -> None:
    # With ``graded`` (features of unknown meaning) a fit also makes the neighbour
    # grader of its rows, and reads a second threshold, as the first, from the mean of
    # each training row's out-of-bag score and its grade against the other rows: on
    # fresh rows of the same traffic that mean exceeds it about ``contamination`` of
    # the time.
    rng = np.random.default_rng(8)
    rows = rng.normal(size=(2000, 4)).astype(np.float32)
    plain = fit_route(FitRequest("/t", 1, rows, 100, 256, 0.01, 0.0, 3))
    assert plain.grader is None
    result = fit_route(FitRequest("/t", 1, rows, 100, 256, 0.01, 0.0, 3, graded=True))
    assert result.grader is not None and result.forest is not None
    assert result.threshold == plain.threshold  # the forest's own is unchanged
    _, _, oob = fit_scored(rows, 100, 256, 3)
    fitted = fit_grader(rows)
    assert oob is not None and fitted is not None
    assert result.graded_threshold == tail_threshold(0.5 * (oob + fitted[1]), 0.01, 0.05)
    fresh = rng.normal(size=(20_000, 4)).astype(np.float32)
    blended = 0.5 * (result.forest.score(fresh) + result.grader.grade(fresh))
    assert 0.003 < float(np.mean(blended >= result.graded_threshold)) < 0.03


def test_refit_workers_run_at_a_lower_cpu_priority() -> None:
    # A fit must not take the core the consumer loop needs: the worker process is
    # `nice`r than the service by the setting.
    import psutil

    base = psutil.Process().nice()
    refitter = ProcessRefitter(1, nice=7)
    try:
        refitter.submit("/n", True, lambda: _request("/n", 1))
        assert refitter.wait_idle(120)
        (result,) = refitter.collect()
        assert result.error is None
        # The pool's worker, beside multiprocessing's own helpers (at the service's nice).
        nices = {p.nice() for p in psutil.Process().children()}
        assert min(base + 7, 19) in nices
    finally:
        refitter.close()


def test_the_command_lines_module_loads_nothing_of_the_service() -> None:
    """A refit worker (spawn) imports the parent's main module, ``sentinel_stream.cli``
    under the console script: importing it must not load the service's libraries,
    which would cost every worker their megabytes (the README's *Memory*)."""
    heavy = ("pydantic", "structlog", "aiohttp", "confluent_kafka", "numpy", "sklearn")
    code = f"import sys, sentinel_stream.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
