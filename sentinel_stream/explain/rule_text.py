"""Rule explanations: which features moved, how far, in words and per feature.

Deterministic and short, built from the route's baseline (median and p99 of its window),
so the same event on the same route always reads the same. Only anomalies get one; a
normal verdict carries :data:`NORMAL_EXPLANATION`.

Weights: each feature's distance from the route's median in the detector's log space,
divided by the route's typical spread for that feature (p90 - p10), normalised to sum to
1. A feature that did not move gets weight 0.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from sentinel_stream.detect.baseline import Baseline
from sentinel_stream.detect.features import FEATURES
from sentinel_stream.records import AttributionRecord, ExplanationBody

NORMAL_EXPLANATION: ExplanationBody = {
    "source": "rules",
    "text": "within this route's usual range",
    "attributions": [],
}

_UNITS = {"latency": " ms", "input_length": "", "errors": ""}
_MOVED = 1.0
"""A feature counts as moved when it is this many typical spreads from the median."""
_DOMINANT = 0.6
"""With several features moved and none carrying this share, the reason is the combination."""
_CATEGORY = {
    # The v1 service's reasons, named by the feature that carries the anomaly.
    "latency": "high latency",
    "errors": "high error rate",
    "input_length": "excessive input size",
}


def _fmt(value: float) -> str:
    if value >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def attributions(
    raw: npt.NDArray[np.float64],
    transformed: npt.NDArray[np.float32],
    baseline: Baseline | None,
    cold_reference: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64] | None = None,
) -> list[AttributionRecord]:
    """Per-feature attributions for one event (value, typical, direction, weight).

    ``weights`` come from :meth:`Detector.attribute` (how much the score drops when the
    feature is set to typical); without them, each feature's distance from the median
    in typical spreads is used.
    """
    if baseline is not None:
        median, spread = baseline.median, baseline.spread
    else:
        median, spread = cold_reference, np.ones_like(cold_reference)
    z = (transformed.astype(np.float64) - median) / spread
    mag = np.abs(z)
    if weights is None:
        total = float(mag.sum())
        weights = mag / total if total > 0 else np.zeros_like(mag)
    out: list[AttributionRecord] = []
    for f, name in enumerate(FEATURES):
        direction = "typical" if mag[f] < _MOVED else ("high" if z[f] > 0 else "low")
        out.append(
            {
                "feature": name,
                "value": float(raw[f]),
                "typical": round(math.expm1(float(median[f])), 3) if baseline is not None else None,
                "direction": direction,
                "weight": round(float(weights[f]), 4),
            }
        )
    return out


def rule_text(
    attrs: list[AttributionRecord],
    baseline: Baseline | None,
    detector: str,
    score: float,
    threshold: float,
) -> str:
    """One short sentence naming what moved and how far from the route's typical value."""
    if baseline is None:
        parts = [
            f"{a['feature']} {_fmt(a['value'])}{_UNITS[a['feature']]}"
            for a in attrs
            if a["direction"] == "high"
        ]
        moved = ", ".join(parts) or "this event"
        verb = "exceed" if len(parts) > 1 else "exceeds"
        return f"{moved} {verb} the cold-start limits; this route has no history yet"
    parts = []
    ranked = sorted(range(len(attrs)), key=lambda f: -attrs[f]["weight"])
    for f in ranked:
        a = attrs[f]
        if a["direction"] == "typical":
            continue
        # With a baseline every feature has a typical value.
        name, value, typical = a["feature"], a["value"], a["typical"] or 0.0
        unit = _UNITS[name]
        p99 = math.expm1(float(baseline.p99[f]))
        if name == "errors":
            parts.append(f"errors {_fmt(value)} vs typically {_fmt(typical)} (p99 {_fmt(p99)})")
            continue
        if a["direction"] == "high" and typical > 0:
            ratio = value / typical
            how = f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"
            parts.append(
                f"{name} {_fmt(value)}{unit} is {how} this route's median "
                f"({_fmt(typical)}{unit}; p99 {_fmt(p99)}{unit})"
            )
        else:
            side = "above" if a["direction"] == "high" else "below"
            parts.append(
                f"{name} {_fmt(value)}{unit} is {side} this route's median ({_fmt(typical)}{unit})"
            )
    if not parts:
        return (
            f"unusual combination of otherwise typical values "
            f"(score {score:.2f} >= threshold {threshold:.2f}, {detector})"
        )
    top = attrs[ranked[0]]
    if len(parts) > 1 and top["weight"] < _DOMINANT:
        category = "unusual combination"
    elif top["direction"] == "low":
        category = f"unusually low {top['feature'].replace('_', ' ')}"
    else:
        category = _CATEGORY[top["feature"]]
    return f"{category}: " + "; ".join(parts)


def explain(
    raw: npt.NDArray[np.float64],
    transformed: npt.NDArray[np.float32],
    baseline: Baseline | None,
    cold_reference: npt.NDArray[np.float64],
    detector: str,
    score: float,
    threshold: float,
    weights: npt.NDArray[np.float64] | None = None,
) -> ExplanationBody:
    """The ``explanation`` object of an anomaly verdict."""
    attrs = attributions(raw, transformed, baseline, cold_reference, weights)
    return {
        "source": "rules",
        "text": rule_text(attrs, baseline, detector, score, threshold),
        "attributions": attrs,
    }
