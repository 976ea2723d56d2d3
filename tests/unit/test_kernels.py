"""The compiled route scorer returns what the readable NumPy path returns."""

from __future__ import annotations

import numpy as np
import pytest

from sentinel_stream.detect.baseline import Baseline
from sentinel_stream.detect.forest import fit_forest
from sentinel_stream.detect.kernels import onto_threshold, score_route
from sentinel_stream.detect.rules import (
    RULES_THRESHOLD,
    RuleScorer,
    generic_rules,
    telemetry_rules,
)


@pytest.mark.parametrize("kind", ["sum", "max", "unknown"])
@pytest.mark.parametrize("with_model", [True, False])
@pytest.mark.parametrize("n", [1, 3, 500])
def test_kernel_equals_numpy_path(with_model: bool, n: int, kind: str) -> None:
    rng = np.random.default_rng(n)
    raw = rng.lognormal([4.6, 6.0, -3.0], [0.3, 0.3, 1.0], size=(1000, 3))
    rows = np.log1p(np.round(raw)).astype(np.float32)
    sum_excess = kind == "sum"
    if kind == "unknown":  # relative rules: a unit of deviation per feature and route
        rules = generic_rules(3, 0.5)
    else:
        rules = RuleScorer(telemetry_rules(20.0, 5).specs, sum_excess=sum_excess)
    baseline = Baseline.of(rows)
    reference, scale = rules.reference(baseline), rules.scale(baseline)
    cols = np.array([0, 1], dtype=np.intp)
    forest, _ = fit_forest(rows[:, cols], 100, 256, seed=2, one_sided=(0, 1))
    queries = np.vstack([rows[:n], rows[:n] + rng.normal(0, 2, size=(n, 3)).astype(np.float32)])
    threshold = 0.66
    scores, deviations = score_route(
        queries,
        reference,
        scale,
        forest if with_model else None,
        cols,
        threshold,
        RULES_THRESHOLD,
        sum_excess,
    )
    rule = rules.score(queries, reference, scale)
    np.testing.assert_allclose(deviations, rule.deviations, rtol=0, atol=1e-12)
    if with_model:
        expected = np.maximum(
            forest.score(queries[:, cols]), onto_threshold(rule.scores, RULES_THRESHOLD, threshold)
        )
    else:
        expected = rule.scores
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)


def test_onto_threshold_is_monotone_and_fixes_the_threshold() -> None:
    s = np.linspace(0, 1, 101)
    m = onto_threshold(s, 0.5, 0.7)
    assert np.all(np.diff(m) > 0)
    assert onto_threshold(np.array([0.5]), 0.5, 0.7)[0] == 0.7
    assert onto_threshold(np.array([1.0]), 0.5, 0.7)[0] == 1.0
