"""The baseline's quantiles are numpy's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from sentinel_stream.detect.baseline import QUANTILES, Baseline, quantiles


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 128, 999, 2000])
@pytest.mark.parametrize("seed", range(4))
def test_quantiles_equal_numpys(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = np.log1p(rng.lognormal(3, 1.5, size=(n, 3))).astype(np.float32).astype(np.float64)
    rows[: n // 3, 2] = 0.0  # ties, as error counts have
    qs = np.concatenate([QUANTILES, rng.random(20)])
    assert np.array_equal(quantiles(rows, qs), np.quantile(rows, qs, axis=0))


def test_baseline_fields() -> None:
    rows = np.arange(30, dtype=np.float32).reshape(10, 3)
    b = Baseline.of(rows)
    assert b.count == 10 and b.top.tolist() == [27, 28, 29]
    assert np.array_equal(b.median, np.median(rows.astype(np.float64), axis=0))
