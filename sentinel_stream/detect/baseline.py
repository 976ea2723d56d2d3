"""What is typical for a route: the numbers explanations and warm-up rules compare with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


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
        q = np.quantile(rows.astype(np.float64), [0.1, 0.5, 0.9, 0.99, 1.0], axis=0)
        spread = np.maximum(q[2] - q[0], 0.05)
        return cls(median=q[1], p90=q[2], p99=q[3], top=q[4], spread=spread, count=len(rows))
