"""Where a route's threshold goes: the score only ``contamination`` of normal rows exceed.

With a contamination of 0.1 % and a model fit on 2,000 rows, the plain empirical
quantile is the second-highest training score: one unlucky row moves it, and the
false-positive rate it gives on fresh rows swings widely from fit to fit
(``tests/unit/test_threshold.py`` measures the spread). Extreme value theory gives a
steadier estimate (the "peaks over threshold" method; Siffer et al., *Anomaly Detection
in Streams with Extreme Value Theory*, KDD 2017): above a high quantile ``u``, the excesses of any
well-behaved distribution follow a generalised Pareto law, so we fit that law (scipy's
maximum likelihood) to the top ``tail`` share of scores and read the quantile from it.
It uses a few hundred scores, not two.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt
from scipy.stats import genpareto

TAIL = 0.1
"""Share of the scores the tail law is fit to."""
MIN_EXCESSES = 30
"""Below this many scores over ``u``, the fit is not trusted: the empirical quantile."""


def tail_threshold(scores: npt.ArrayLike, contamination: float, tail: float = TAIL) -> float:
    """The ``1 - contamination`` quantile of the distribution ``scores`` come from."""
    s = np.asarray(scores, dtype=np.float64)
    empirical = float(np.quantile(s, 1.0 - contamination))
    if contamination >= tail:
        return empirical
    u = float(np.quantile(s, 1.0 - tail))
    excesses = s[s > u] - u
    if len(excesses) < MIN_EXCESSES or float(excesses.std()) == 0.0:
        return empirical
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            shape, _, scale = genpareto.fit(excesses, floc=0.0)
        # P(score > u + y) = tail * P(excess > y): solve for contamination.
        value = u + float(genpareto.isf(contamination / tail, shape, 0.0, scale))
    except (ValueError, RuntimeError, FloatingPointError):
        return empirical
    return value if math.isfinite(value) else empirical
