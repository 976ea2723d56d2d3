"""Detectors and streams the detector's tests share (and the snapshot's)."""

from __future__ import annotations

import numpy as np

from sentinel_stream.config import Settings
from sentinel_stream.detect.detector import Detector
from sentinel_stream.detect.params import DetectorParams
from sentinel_stream.detect.refit import InlineRefitter
from sentinel_stream.detect.rules import generic_rules


def unknown_features_detector(n_features: int, **settings: object) -> Detector:
    """The detector ``evaluate`` runs on a labelled set: every column two-sided, the
    rules for features of unknown meaning, inline fits."""
    s = Settings(refit_workers=0, seed=1, **settings)  # type: ignore[arg-type]
    return Detector(
        DetectorParams.for_unknown_features(n_features, s),
        generic_rules(n_features),
        InlineRefitter(),
    )


def stream(d: Detector, rows: np.ndarray, chunk: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(scores, flags) of ``rows`` streamed in chunks, fits installed between them."""
    scores, flags = [], []
    for i in range(0, len(rows), chunk):
        d.install_completed()
        s = d.score_and_learn("r", np.asarray(rows[i : i + chunk], dtype=np.float32))
        scores.append(s.scores)
        flags.append(s.flags)
    return np.concatenate(scores), np.concatenate(flags)


def new_regime(seed: int) -> np.ndarray:
    """400 rows of one regime, then 1,200 of another: every feature moved by two
    standard deviations (up on three, down on three), short of the rules' bar."""
    rng = np.random.default_rng(seed)
    moved = rng.normal(size=(1200, 6))
    moved[:, :3] += 2.0
    moved[:, 3:] -= 2.0
    return np.concatenate((rng.normal(size=(400, 6)), moved))


def sparse_rows(rng: np.random.Generator, n: int, n_features: int) -> np.ndarray:
    """Rows of mostly blank features (a pixel, a rare count): two thirds of the columns
    are 0 but in one row in 200, where they take a value between 50 and 250 (about one
    row in nine holds such a value somewhere); the rest are normal."""
    rows = rng.normal(size=(n, n_features))
    k = 2 * n_features // 3
    on = rng.random((n, k)) < 0.005
    rows[:, :k] = np.where(on, rng.uniform(50.0, 250.0, size=(n, k)), 0.0)
    return rows
