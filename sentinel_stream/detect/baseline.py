"""What is typical for a route: the numbers explanations and warm-up rules compare with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

QUANTILES = np.array([0.1, 0.5, 0.9, 0.99, 1.0])


def quantiles(
    rows: npt.NDArray[np.float64], qs: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``np.quantile(rows, qs, axis=0)`` (its default, linear method), bit for bit, from one
    sort: a route refreshes its baseline often while it warms up, and numpy's general
    quantile machinery costs many times the sort (``tests/unit/test_baseline.py`` proves
    the two equal)."""
    s = np.sort(rows, axis=0)
    n = len(s)
    virtual = qs * (n - 1)
    below = np.floor(virtual).astype(np.intp)
    above = np.minimum(below + 1, n - 1)
    gamma = (virtual - below)[:, None]
    a, b = s[below], s[above]
    # numpy's _lerp: a + (b - a) * t, but b - (b - a) * (1 - t) from t = 0.5 on.
    diff = b - a
    out: npt.NDArray[np.float64] = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    return out


SPREAD_FLOOR = 0.05
"""The least ``spread``: in telemetry's log space, a route whose values barely vary
still has a unit of deviation (a twentieth of an e-fold)."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """Per-feature quantiles of a route's window, in the detector's (transformed) space."""

    median: npt.NDArray[np.float64]
    p90: npt.NDArray[np.float64]
    p99: npt.NDArray[np.float64]
    top: npt.NDArray[np.float64]
    """The largest value seen per feature."""
    spread: npt.NDArray[np.float64]
    """p90 - p10 (at least a small floor): the scale of a typical deviation."""
    count: int

    @classmethod
    def of(cls, rows: npt.NDArray[np.float32]) -> Baseline:
        q = quantiles(rows.astype(np.float64), QUANTILES)
        spread = np.maximum(q[2] - q[0], SPREAD_FLOOR)
        return cls(median=q[1], p90=q[2], p99=q[3], top=q[4], spread=spread, count=len(rows))
