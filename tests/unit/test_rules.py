"""Warm-up rules: the obvious is flagged before any model, and mild rises add up."""

from __future__ import annotations

import numpy as np
import pytest

from sentinel_stream.detect.baseline import Baseline
from sentinel_stream.detect.rules import (
    GRADED_TYPICAL,
    RULES_THRESHOLD,
    RuleScorer,
    generic_rules,
    grading_units,
    telemetry_rules,
)
from tests.support.telemetry import engine, ev, normal


def test_cold_service_flags_the_v1_smoke_test() -> None:
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


def test_mild_rises_on_every_axis_add_up_to_an_anomaly() -> None:
    rules = telemetry_rules(20, 5)
    reference = np.log1p(np.array([100.0, 500.0, 0.0]))
    joint = np.log1p(np.array([[400.0, 2000.0, 3.0]])).astype(np.float32)
    one_axis = np.log1p(np.array([[400.0, 500.0, 0.0]])).astype(np.float32)
    assert rules.sum_excess
    assert rules.score(joint, reference).scores[0] >= 0.5
    assert rules.score(one_axis, reference).scores[0] < 0.25
    # Judged one feature at a time, the same event is not anomalous.
    assert RuleScorer(rules.specs).score(joint, reference).scores[0] < 0.5


def test_rules_for_unknown_features_leave_ordinary_rows_alone_and_flag_the_far() -> None:
    # 36 heavy-tailed features: a row exceeds the largest learnt value on some feature
    # far more often than the contamination, but not by three spans.
    rng = np.random.default_rng(2)
    rules = generic_rules(36)
    baseline = Baseline.of(rng.lognormal(size=(2000, 36)).astype(np.float32))
    reference, scale = rules.reference(baseline), rules.scale(baseline)
    fresh = rng.lognormal(size=(50000, 36)).astype(np.float32)
    beyond_max = (fresh > baseline.top).any(axis=1).mean()
    fired = rules.fires(rules.score(fresh, reference, scale).deviations).mean()
    assert beyond_max > 0.005 and fired < 0.0005, (beyond_max, fired)
    far = fresh[:1].copy()
    far[0, 7] = baseline.top[7] + 1.1 * scale[7]
    assert scale[7] > 3 * (baseline.top[7] - baseline.median[7])  # far beyond the tail
    result = rules.score(far, reference, scale)
    assert rules.fires(result.deviations)[0] and int(np.argmax(result.deviations[0])) == 7
    # With no history there is nothing to compare with: nothing is flagged.
    cold = rules.score(far, rules.reference(None), rules.scale(None))
    assert not rules.fires(cold.deviations)[0]


def test_rows_the_rules_do_not_flag_are_graded_by_how_far_from_their_neighbours() -> None:
    rng = np.random.default_rng(3)
    rules = generic_rules(6)
    history = rng.normal(size=(500, 6)).astype(np.float32)
    history[:, 1] = history[:, 0] + 0.1 * history[:, 1]  # two features that move together
    rows = np.zeros((5, 6), dtype=np.float32)
    rows[:, 2] = [0.0, 2.0, 4.0, -6.0, 0.0]  # further and further, either side of the median
    rows[4, :2] = [1.5, -1.5]  # each value ordinary, the two together not
    graded = rules.graded_scores(rows, history)
    assert graded is not None
    # The row at the median is nearer its neighbours than a typical row; the others
    # further and further.
    assert graded[0] < GRADED_TYPICAL and graded[0] < graded[1] < graded[2] < graded[3]
    assert graded[3] < RULES_THRESHOLD  # graded, never flagged by it
    along = rows[4:].copy()
    along[0, :2] = [1.5, 1.5]
    graded_along = rules.graded_scores(along, history)
    assert graded_along is not None and graded[4] > GRADED_TYPICAL > graded_along[0]
    # The first batch, before any history, is graded against itself.
    first = rules.graded_scores(np.vstack((history[:60], rows[3:4])), history[:0])
    assert first is not None and int(np.argmax(first)) == 60
    # On the forest's scale: a typical row is graded what a forest gives its ordinary
    # rows, so an anomaly graded before the first model does not rank under them.
    assert np.median(first) == pytest.approx(GRADED_TYPICAL, abs=0.01)
    assert rules.graded_scores(rows[:2], history[:0]) is None  # too few rows to say
    # Telemetry's rules have a reference of their own: not graded.
    assert rules.graded and not telemetry_rules(20.0, 5).graded


def test_grades_measure_each_feature_in_its_own_units_however_small() -> None:
    # A feature that spans a few hundredths (thyroid's hormone levels) beside one that
    # spans units: a row far out on the small one alone is far from its neighbours.
    rng = np.random.default_rng(5)
    rules = generic_rules(2)
    history = np.column_stack((rng.normal(0.01, 0.002, 800), rng.normal(5.0, 1.0, 800))).astype(
        np.float32
    )
    # The median row; one ten spreads out on the small feature; one a spread and a half
    # out on the large one: the first of the two is the further from its neighbours.
    rows = np.array([[0.01, 5.0], [0.03, 5.0], [0.01, 8.8]], dtype=np.float32)
    grader = rules.grader(history)
    assert grader is not None
    graded = grader.grade(rows)
    assert graded[0] < GRADED_TYPICAL < graded[2] < graded[1] < RULES_THRESHOLD
    before = rules.graded_scores(rows, history)
    assert before is not None and before[0] < before[2] < before[1]
    # A feature almost always at one value is measured in its range; a constant, in 1.
    rare = np.zeros((100, 3), dtype=np.float32)
    rare[:5, 0] = 4.0
    rare[:, 1] = np.arange(100)
    median, unit = grading_units(rare)
    assert unit.tolist() == [4.0, pytest.approx(79.2), 1.0] and median.tolist() == [0, 49.5, 0]
