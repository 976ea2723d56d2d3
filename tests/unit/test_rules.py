"""Warm-up rules: the obvious is flagged before any model, and mild rises add up."""

from __future__ import annotations

import numpy as np
import pytest

from sentinel_stream.detect.baseline import Baseline
from sentinel_stream.detect.rules import (
    GRADE_SLOPE,
    GRADED_TYPICAL,
    RULE_MIN_HISTORY,
    RULES_THRESHOLD,
    RuleScorer,
    fit_grader,
    generic_rules,
    grading_units,
    neighbour_grade,
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


def test_a_feature_learnt_at_one_value_has_a_silent_rule() -> None:
    # Feature 0 was 0 in every row learnt (a blank pixel): there is no unit to measure
    # its excess in, and its rare values are ordinary, so its rule never fires. Feature 1
    # varied: a value far beyond its largest still fires.
    rng = np.random.default_rng(3)
    history = rng.normal(size=(500, 2)).astype(np.float32)
    history[:, 0] = 0.0
    rules = generic_rules(2)
    baseline = Baseline.of(history)
    reference, scale = rules.reference(baseline), rules.scale(baseline)
    assert np.isinf(scale[0]) and np.isfinite(scale[1])
    rows = np.array([[250.0, 0.0], [0.0, 1e4]], dtype=np.float32)
    fired = rules.fires(rules.score(rows, reference, scale).deviations)
    assert fired.tolist() == [False, True]
    # A feature whose largest value lies above its median keeps its rule, however rare.
    history[:3, 0] = 1.0
    varied = rules.scale(Baseline.of(history))
    assert np.isfinite(varied[0])
    # So does a gauge at its largest value in most rows but spread below it.
    history[:, 0] = np.where(rng.random(500) < 0.6, 100.0, rng.uniform(0.0, 100.0, 500))
    gauge = Baseline.of(history)
    assert gauge.top[0] == gauge.median[0] == 100.0
    assert np.isfinite(rules.scale(gauge)[0])


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
    fitted = fit_grader(history)
    assert fitted is not None
    graded = fitted[0].grade(rows)
    assert graded[0] == GRADED_TYPICAL < graded[2] < graded[1]
    before = rules.graded_scores(rows, history)
    assert before is not None and before[0] < before[2] < before[1]
    # A feature almost always at one value is measured in its range; a constant, in 1.
    rare = np.zeros((100, 3), dtype=np.float32)
    rare[:5, 0] = 4.0
    rare[:, 1] = np.arange(100)
    median, unit = grading_units(rare)
    assert unit.tolist() == [4.0, pytest.approx(79.2), 1.0] and median.tolist() == [0, 49.5, 0]


def test_a_models_neighbour_grade_ranks_the_far_rows_and_holds_its_own_rows_typical() -> None:
    # A model's grade does not saturate: three and ten times a typical row's distance
    # grade apart (the warm-up grade, kept under the rules' threshold, gives both 0.499),
    # rising by GRADE_SLOPE per e-fold from GRADED_TYPICAL.
    # Nearer than a typical row grades as a typical row; the grade is at most 1.
    r = np.array([1.0, 2.0, 3.0, 10.0])
    graded = neighbour_grade(r)
    assert graded[0] == pytest.approx(GRADED_TYPICAL)
    assert graded.tolist() == pytest.approx((GRADED_TYPICAL + GRADE_SLOPE * np.log(r)).tolist())
    assert graded[3] - graded[2] > 0.1
    assert neighbour_grade(np.array([0.0, 0.3, 1e9])).tolist() == pytest.approx(
        [GRADED_TYPICAL, GRADED_TYPICAL, 1.0]
    )
    # fit_grader grades each history row against the others: the median is a typical
    # row's; a history row graded again as a new row (it then counts as its own
    # neighbour) grades no higher than against the others.
    rng = np.random.default_rng(2)
    history = rng.normal(size=(700, 3)).astype(np.float32)
    fitted = fit_grader(history)
    assert fitted is not None
    grader, own = fitted
    assert len(own) == len(history) and np.median(own) == pytest.approx(GRADED_TYPICAL, abs=1e-3)
    again, alone = grader.grade(history[:50]), own[:50]
    assert (again <= alone).all() and (
        again[alone > GRADED_TYPICAL] < alone[alone > GRADED_TYPICAL]
    ).all()
    far = np.full((1, 3), 6.0, dtype=np.float32)
    assert grader.grade(far)[0] > own.max()
    assert fit_grader(history[: RULE_MIN_HISTORY - 1]) is None
