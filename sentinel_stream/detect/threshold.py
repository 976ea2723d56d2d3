"""Where a route's threshold goes: the score only ``contamination`` of normal rows exceed.

With a contamination of 0.1 % and a model fit on 2,000 rows, the plain empirical
quantile is the second-highest training score: one unlucky row moves it, and the
false-positive rate it gives on fresh rows swings widely from fit to fit
(``tests/unit/test_threshold.py`` measures the spread). Extreme value theory gives a
steadier estimate (the "peaks over threshold" method; Siffer et al., *Anomaly Detection
in Streams with Extreme Value Theory*, KDD 2017): above a high quantile ``u``, the excesses of any
well-behaved distribution follow a generalised Pareto law, so we fit that law to the top
``tail`` share of scores and read the quantile from it. It uses a few hundred scores, not
two.

The fit is maximum likelihood by Grimshaw's reduction (*Computing maximum likelihood
estimates for the generalized Pareto distribution*, Technometrics 1993) to one
parameter, ``theta = shape / scale``, whose profile likelihood is evaluated on a grid
over its whole domain and then on a finer one around the best point: vectorised, about
a millisecond, where scipy's general optimiser takes tens (the test checks that the two
agree).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

TAIL = 0.1
"""Share of the scores the tail law is fit to."""
MIN_EXCESSES = 30
"""Below this many scores over ``u``, the fit is not trusted: the empirical quantile."""
THRESHOLD_TAIL = 0.05
"""Share of a model's training scores its threshold's tail law is fit to, when that holds
``MIN_EXCESSES`` scores (:func:`threshold_tail`)."""


def threshold_tail(n: int) -> float:
    """The tail share a threshold is read from, for ``n`` training scores: the top 5 %
    where that holds ``MIN_EXCESSES`` scores, else as many as do, up to ``TAIL``.

    Anomalies that taught (flagged by less than the learn margin, or not at all) sit at
    the top of the training scores; the narrower the tail the law is fit to, the closer
    to the normal rows' own tail its shape is (on KDD99 http, where bursts of attacks
    teach, and on thyroid, 7.4 % anomalies, the threshold comes down to where normal
    traffic's 0.1 % lies; the README's *Detection quality* gives the figures). A young
    model's few scores keep the wider tail: 5 % of 300 is too few to fit.
    """
    return min(TAIL, max(THRESHOLD_TAIL, MIN_EXCESSES / max(n, 1)))


_GRID = np.concatenate(
    (-(1.0 - np.geomspace(1e-6, 1.0, 160, endpoint=False)), np.geomspace(1e-5, 1e3, 160))
)
"""``theta * max(excess)`` over (-1, 1000]: the profile likelihood's domain."""


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
    shape, scale = gpd_fit(excesses)
    # P(score > u + y) = tail * P(excess > y): solve for contamination.
    value = u + gpd_isf(contamination / tail, shape, scale)
    return value if math.isfinite(value) and scale > 0 else empirical


def _profile(theta: F64, y: F64) -> tuple[F64, F64]:
    """(log-likelihood, shape) at each ``theta``, each maximised over the scale."""
    shape: F64 = np.log1p(np.outer(theta, y)).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = -len(y) * (np.log(shape / theta) + shape + 1.0)
    return np.where(np.isfinite(ll), ll, -np.inf), shape


def gpd_fit(excesses: npt.ArrayLike) -> tuple[float, float]:
    """(shape, scale) of the generalised Pareto law of positive ``excesses`` (location 0),
    by maximum likelihood, in scipy's ``genpareto`` parameterisation."""
    y = np.asarray(excesses, dtype=np.float64)
    top = float(y.max())
    mean = float(y.mean())
    best_ll = -len(y) * (math.log(mean) + 1.0)  # the shape -> 0 limit: exponential
    best = (0.0, mean)
    theta = _GRID / top
    for _ in range(2):
        ll, shape = _profile(theta, y)
        i = int(np.argmax(ll))
        if ll[i] > best_ll:
            best_ll, best = float(ll[i]), (float(shape[i]), float(shape[i] / theta[i]))
        # Then a finer grid between the best point's neighbours.
        fine = np.linspace(theta[max(i - 1, 0)], theta[min(i + 1, len(theta) - 1)], 41)
        theta = fine[(fine != 0.0) & (fine * top > -1.0)]
    return best


def gpd_isf(p: float, shape: float, scale: float) -> float:
    """The excess exceeded with probability ``p`` (scipy's ``genpareto.isf``)."""
    if abs(shape) < 1e-9:
        return -scale * math.log(p)
    return float(scale / shape * (p ** (-shape) - 1.0))
