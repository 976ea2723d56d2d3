"""The tail threshold: the quantile it reads from a generalised Pareto fit is the
distribution's, steadier than the plain empirical quantile, and falls back to it."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
from scipy.stats import genpareto

from sentinel_stream.detect.threshold import gpd_fit, gpd_isf, tail_threshold


def bounded_scores(n: int, seed: int) -> np.ndarray:
    """Scores with a bounded, light upper tail, like isolation scores: 0.4 + GPD(-0.25)."""
    rng = np.random.default_rng(seed)
    return cast(np.ndarray, 0.4 + genpareto.rvs(-0.25, scale=0.05, size=n, random_state=rng))


def test_reads_the_true_quantile_and_varies_less_than_the_empirical_one() -> None:
    true = 0.4 + genpareto.isf(0.001, -0.25, scale=0.05)
    ours = np.array([tail_threshold(bounded_scores(2000, s), 0.001) for s in range(60)])
    plain = np.array([np.quantile(bounded_scores(2000, s), 0.999) for s in range(60)])
    assert abs(float(np.median(ours)) - true) < 0.01
    assert float(np.mean(np.abs(ours - true))) < 0.8 * float(np.mean(np.abs(plain - true)))


def test_falls_back_to_the_empirical_quantile() -> None:
    few = bounded_scores(100, 1)  # 10 scores above the 90th percentile: too few to fit
    assert tail_threshold(few, 0.001) == float(np.quantile(few, 0.999))
    many = bounded_scores(2000, 2)
    assert tail_threshold(many, 0.2) == float(np.quantile(many, 0.8))
    flat = np.full(1000, 0.5)
    assert tail_threshold(flat, 0.001) == 0.5


def test_the_fit_is_scipys_maximum_likelihood() -> None:
    for shape in (-0.3, -0.1, 0.0, 0.1, 0.3):
        y = genpareto.rvs(shape, scale=0.05, size=300, random_state=np.random.default_rng(1))
        ours_shape, ours_scale = gpd_fit(y)
        mle_shape, _, mle_scale = genpareto.fit(y, floc=0.0)
        assert abs(ours_shape - mle_shape) < 0.01, shape
        assert abs(ours_scale / mle_scale - 1) < 0.01, shape
        assert gpd_isf(0.01, ours_shape, ours_scale) == pytest.approx(
            genpareto.isf(0.01, ours_shape, 0.0, ours_scale), rel=1e-9
        )
