"""What the detector sees of a telemetry event: three columns, in log space.

Latency, input length and errors are all heavy-tailed; in ``log1p`` space "20 times the
median" is a fixed distance, so one rule factor and one forest fit every route whatever
its scale. The columns are named here once; everything else refers to them by name.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FEATURES: tuple[str, ...] = ("latency", "input_length", "errors")
"""The telemetry features, in column order."""
LATENCY, INPUT_LENGTH, ERRORS = range(len(FEATURES))


def to_rows(raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Raw (latency, input_length, errors) rows into the detector's space."""
    rows: npt.NDArray[np.float32] = np.log1p(np.asarray(raw, dtype=np.float64)).astype(np.float32)
    return rows
