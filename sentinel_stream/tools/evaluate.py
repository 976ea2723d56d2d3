"""``sentinel-stream evaluate FILE``: detection quality anyone can check.

A labelled data set is streamed through the detector the service runs, in arrival order,
in small chunks: every row is scored by the model as it stood before that row, then
learnt from (with the same windows, refit policy, warm-up rules, scorer and threshold).
Refits run inline (the service runs them in a worker process), so a run is
deterministic for a given ``--seed``.

Two kinds of input:

- **telemetry** (a CSV with ``latency``, ``input_length``, ``errors`` and optionally
  ``route`` columns): rows are validated as input events and go through the service's
  own :class:`~sentinel_stream.engine.Engine`, route by route;
- **any numeric features** (an ODDS ``.mat`` file with ``X`` and ``y``, or a CSV of
  numeric columns): the :class:`~sentinel_stream.detect.Detector` on one route with
  the features as given, every one two-sided, with the rules for features of unknown
  meaning (:func:`~sentinel_stream.detect.rules.generic_rules`) and no score floor
  (:meth:`~sentinel_stream.detect.params.DetectorParams.for_unknown_features`).

Arrival order: the file's (the default), or ``shuffled`` with a seed (a set with no time
order of its own, met in another order), or ``anomalies-first`` (the labelled anomalies,
in file order, then the rest: a route that begins in trouble). Scores are reported, and
written, in the file's row order whatever the arrival order.

The report: ROC AUC and AUPRC (scikit-learn's), and precision, recall, F1 and false
positive rate at the operating threshold (what the service would have flagged), and
rows per second. Beside them, the false-positive rate at the first catch: that of the
threshold at the best-ranked anomaly's score, the least any threshold pays to flag one
anomaly. Above 1 %, no threshold meets "recall > 0 at FPR <= 1 %"; the score's ranking
is at fault, not where the threshold sits.

A run is one fit seed, and a forest's figures move with it: on a set with a few hundred
anomalies, a batch IsolationForest's AUPRC moves by a fifth from one seed to the next
(the benchmark report's seed spread gives the figures). ``--fit-seeds K`` repeats the
stream and the batch model with K seeds on the same arrival order and reports each
one's mean and sample standard deviation (:func:`over_fit_seeds`, :func:`summarise`),
so that two detectors are compared on what they do, not on one seed's luck.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

from sentinel_stream.config import Settings
from sentinel_stream.detect.detector import Detector
from sentinel_stream.detect.features import FEATURES
from sentinel_stream.detect.params import DetectorParams
from sentinel_stream.detect.refit import InlineRefitter
from sentinel_stream.detect.rules import generic_rules
from sentinel_stream.engine import Engine, Event
from sentinel_stream.records import EVENT_FIELDS

F64 = npt.NDArray[np.float64]
LABEL_COLUMNS = ("label", "is_anomaly", "y", "anomaly", "outlier", "class")
CHUNK = 64
"""Rows scored together: like one poll's share of a route in the service."""


@dataclass(frozen=True)
class Dataset:
    x: F64
    y: npt.NDArray[np.int8]
    columns: list[str]
    routes: list[str] | None

    @property
    def is_telemetry(self) -> bool:
        return all(f in self.columns for f in FEATURES)


def load(path: Path, label: str | None = None) -> Dataset:
    """Read an ODDS ``.mat`` (X, y) or a CSV with a header and a label column."""
    if path.suffix.lower() == ".mat":
        from scipy.io import loadmat

        mat = loadmat(path)
        x = np.asarray(mat["X"], dtype=np.float64)
        y = np.asarray(mat["y"]).ravel().astype(np.int8)
        columns = [f"x{i}" for i in range(x.shape[1])]
        _check_finite(path, x, columns)
        return Dataset(x, y, columns, None)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        label = label or next((c for c in LABEL_COLUMNS if c in header), None)
        if label is None:
            raise ValueError(f"no label column in {path}: name one with --label")
        rows = list(reader)
    numeric = [c for c in header if c not in (label, "route", "kind", "event_id", "timestamp")]
    try:
        x = np.array([[float(r[c]) for c in numeric] for r in rows], dtype=np.float64)
        y = np.array([int(float(r[label])) for r in rows], dtype=np.int8)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric value ({exc})") from None
    routes = [r["route"] for r in rows] if "route" in header else None
    x = x.reshape(len(rows), len(numeric))
    _check_finite(path, x, numeric)
    return Dataset(x, y, numeric, routes)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_finite(path: Path, x: npt.NDArray[np.float64], columns: list[str]) -> None:
    """Refuse a value the detector cannot score: it works in float32, where NaN, an
    infinity or a value beyond float32's range compares as nothing or as everything (a
    rule's excess over an infinite unit would be NaN)."""
    bad = ~(np.abs(x) <= FLOAT32_MAX)  # NaN compares False: it is bad too
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{path}: row {row + 1}, column {columns[col]!r} is {x[row, col]!r}: every value "
            f"must be a finite number within float32's range ({int(bad.sum())} are not)"
        )


Progress = Callable[[int, int], None]
ORDERS = ("file", "shuffled", "anomalies-first")


def arrival_order(data: Dataset, order: str, seed: int = 0) -> npt.NDArray[np.intp]:
    """The row indices in the order they are streamed (see the module doc)."""
    n = len(data.y)
    if order == "file":
        return np.arange(n)
    if order == "shuffled":
        return np.random.default_rng(seed).permutation(n)
    if order == "anomalies-first":
        return np.concatenate((np.flatnonzero(data.y != 0), np.flatnonzero(data.y == 0)))
    raise ValueError(f"unknown order {order!r}: one of {', '.join(ORDERS)}")


def reordered(data: Dataset, rows: npt.NDArray[np.intp]) -> Dataset:
    routes = None if data.routes is None else [data.routes[i] for i in rows]
    return Dataset(data.x[rows], data.y[rows], data.columns, routes)


def score_stream(
    data: Dataset, settings: Settings, progress: Progress | None = None
) -> tuple[F64, npt.NDArray[np.bool_], float]:
    """(scores, flags, seconds) for every row, in input order."""
    n = len(data.y)
    scores = np.empty(n)
    flags = np.zeros(n, dtype=bool)
    started = time.perf_counter()
    if data.is_telemetry:
        engine = Engine(settings, InlineRefitter())
        cols = [data.columns.index(f) for f in FEATURES]
        routes = data.routes or ["/"] * n
        for i in range(0, n, CHUNK * 8):
            block = data.x[i : i + CHUNK * 8]
            events = [
                Event.from_record(
                    EVENT_FIELDS.validate_python(
                        {
                            "route": routes[i + j],
                            "latency": float(r[cols[0]]),
                            "input_length": int(r[cols[1]]),
                            "errors": int(r[cols[2]]),
                        }
                    ),
                    default_id=str(i + j),
                    default_time="",
                )
                for j, r in enumerate(block)
            ]
            for j, v in enumerate(engine.process(events)):
                scores[i + j] = v["score"]
                flags[i + j] = v["is_anomaly"]
            if progress:
                progress(min(i + len(block), n), n)
    else:
        n_features = data.x.shape[1]
        detector = Detector(
            DetectorParams.for_unknown_features(n_features, settings),
            generic_rules(n_features),
            InlineRefitter(),
        )
        rows = data.x.astype(np.float32)
        for i in range(0, n, CHUNK):
            detector.install_completed()
            s = detector.score_and_learn("all", rows[i : i + CHUNK])
            scores[i : i + CHUNK] = s.scores
            flags[i : i + CHUNK] = s.flags
            if progress and (i // CHUNK) % 64 == 0:
                progress(min(i + CHUNK, n), n)
    return scores, flags, time.perf_counter() - started


@dataclass(frozen=True)
class OperatingPoint:
    precision: float
    recall: float
    f1: float
    fpr: float
    tp: int
    fp: int
    fn: int
    tn: int


def operating_point(y: npt.ArrayLike, flagged: npt.ArrayLike) -> OperatingPoint:
    """Precision, recall, F1 and false-positive rate of a set of flags (0 where undefined,
    as scikit-learn's ``zero_division=0``)."""
    yt = np.asarray(y).astype(bool)
    yp = np.asarray(flagged).astype(bool)
    tp = int(np.sum(yt & yp))
    fp = int(np.sum(~yt & yp))
    fn = int(np.sum(yt & ~yp))
    tn = int(np.sum(~yt & ~yp))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return OperatingPoint(precision, recall, f1, fpr, tp, fp, fn, tn)


def report(
    name: str,
    y: npt.ArrayLike,
    scores: npt.ArrayLike,
    flags: npt.ArrayLike,
    seconds: float,
    rows: int | None = None,
    note: str = "",
) -> dict[str, Any]:
    yt = np.asarray(y)
    op = operating_point(yt, flags)
    n = rows if rows is not None else len(yt)
    return {
        "detector": name,
        "rows": n,
        "anomalies": int(yt.sum()),
        "roc_auc": round(float(roc_auc_score(yt, scores)), 4),
        "auprc": round(float(average_precision_score(yt, scores)), 4),
        "precision": round(op.precision, 4),
        "recall": round(op.recall, 4),
        "f1": round(op.f1, 4),
        "fpr": round(op.fpr, 5),
        "fpr_first_catch": round(fpr_at_first_catch(yt, scores), 5),
        "rows_per_s": round(n / seconds) if seconds > 0 else None,
        "note": note,
    }


def fpr_at_first_catch(y: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """The false-positive rate of the threshold at the best-ranked anomaly's score: no
    threshold flags an anomaly for less (ties count against it, as a threshold would)."""
    yt = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not yt.any() or yt.all():
        return 0.0
    return float(np.mean(s[~yt] >= s[yt].max()))


SPREAD = ("roc_auc", "auprc", "recall", "fpr", "fpr_first_catch")
"""The figures whose standard deviation over fit seeds a summary reports."""


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One detector's reports over several fit seeds as one: every figure's mean, and
    the sample standard deviation (ddof 1: the seeds are a sample of the fits one could
    draw) of those in :data:`SPREAD` (``roc_auc_sd``...). A single report is returned
    as it is: one seed has no spread to report."""
    if len(reports) == 1:
        return reports[0]
    first = reports[0]
    out = dict(first)
    for key, value in first.items():
        if isinstance(value, float) or key == "rows_per_s":
            values = [r[key] for r in reports if r[key] is not None]
            digits = 5 if key.startswith("fpr") else 4
            out[key] = round(float(np.mean(values)), digits) if values else None
            if key == "rows_per_s" and out[key] is not None:
                out[key] = round(out[key])
    for key in SPREAD:
        out[f"{key}_sd"] = round(float(np.std([r[key] for r in reports], ddof=1)), 5)
    out["seeds"] = len(reports)
    note = (
        f"mean of {len(reports)} fit seeds (sd ROC AUC {out['roc_auc_sd']:.4f}, "
        f"AUPRC {out['auprc_sd']:.3f})"
    )
    out["note"] = f"{first['note']}; {note}" if first["note"] else note
    return out


def over_fit_seeds(
    data: Dataset,
    settings: Settings,
    seeds: list[int],
    note: str = "",
    progress: Callable[[int], Progress | None] | None = None,
) -> tuple[list[dict[str, Any]], F64, npt.NDArray[np.bool_]]:
    """The stream's report under each fit seed, on one arrival order, and the first
    seed's scores and flags (what ``--scores`` writes). ``progress`` makes each seed's
    progress display (its rate counted from its own start)."""
    reports: list[dict[str, Any]] = []
    first: tuple[F64, npt.NDArray[np.bool_]] | None = None
    for seed in seeds:
        scores, flags, seconds = score_stream(
            data,
            settings.model_copy(update={"seed": seed}),
            progress(seed) if progress else None,
        )
        reports.append(report("sentinel-stream", data.y, scores, flags, seconds, note=note))
        first = first or (scores, flags)
    assert first is not None, "at least one seed"
    return reports, first[0], first[1]


def terminal_progress(label: str) -> Progress | None:
    if not sys.stderr.isatty():
        return None
    started = time.perf_counter()

    def show(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.perf_counter() - started, 1e-9)
        sys.stderr.write(
            f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done:,}/{total:,} {rate:,.0f} rows/s"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


# -- baselines, in the same harness ------------------------------------------------------


Baseline = tuple[dict[str, Any], F64]
"""A baseline's report, and its scores (for ROC curves)."""


def baseline_v1(x: F64, y: npt.NDArray[np.int8], limit: int) -> Baseline:
    """The v1 service's design: one global IsolationForest (contamination 0.1), refit every 50
    events on the last 1,000, one ``score_samples`` call per event. It is slow, so it
    runs on a prefix."""
    from sklearn.ensemble import IsolationForest

    n = min(limit, len(y))
    scores = np.zeros(n)
    flags = np.zeros(n, dtype=bool)
    model: IsolationForest | None = None
    started = time.perf_counter()
    for i in range(n):
        if model is not None:
            row = x[i : i + 1]
            scores[i] = -model.score_samples(row)[0]
            flags[i] = model.predict(row)[0] == -1
        if i >= 49 and (i + 1) % 50 == 0:
            model = IsolationForest(contamination=0.1, random_state=0).fit(
                x[max(0, i - 999) : i + 1]
            )
    seconds = time.perf_counter() - started
    note = f"first {n:,} rows" if n < len(y) else ""
    return report("v1 service", y[:n], scores, flags, seconds, note=note), scores


def baseline_batch(x: F64, y: npt.NDArray[np.int8], seed: int = 0) -> Baseline:
    """IsolationForest fit on the whole set: it sees the future (the offline reference)."""
    from sklearn.ensemble import IsolationForest

    started = time.perf_counter()
    model = IsolationForest(random_state=seed, n_jobs=1).fit(x)
    scores = -model.score_samples(x)
    seconds = time.perf_counter() - started
    note = "fit on all rows: sees the future"
    return report("batch IsolationForest", y, scores, scores >= 0.5, seconds, note=note), scores


def baseline_hst(x: F64, y: npt.NDArray[np.int8], limit: int, seed: int = 42) -> Baseline:
    """River's HalfSpaceTrees (with an online min-max scaler), the usual streaming
    detector; flags at score >= 0.8."""
    try:
        from river import anomaly, compose, preprocessing
    except ImportError:
        return {"detector": "River HalfSpaceTrees", "note": "river not installed"}, np.zeros(0)
    n = min(limit, len(y))
    model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=seed))
    scores = np.zeros(n)
    started = time.perf_counter()
    for i in range(n):
        row = {f"x{j}": float(v) for j, v in enumerate(x[i])}
        scores[i] = model.score_one(row)
        model.learn_one(row)
    seconds = time.perf_counter() - started
    note = f"first {n:,} rows" if n < len(y) else ""
    return report("River HalfSpaceTrees", y[:n], scores, scores >= 0.8, seconds, note=note), scores


def baseline_features(data: Dataset) -> F64:
    """What the baselines see: telemetry in log space (as our detector), else as given."""
    if data.is_telemetry:
        cols = [data.columns.index(f) for f in FEATURES]
        return np.log1p(data.x[:, cols])
    return data.x


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'detector':<24}{'rows':>9}{'ROC AUC':>9}{'AUPRC':>8}{'prec':>7}{'recall':>7}"
        f"{'F1':>7}{'FPR':>8}{'FPR 1st':>8}{'rows/s':>9}  note"
    )
    lines = [head]
    for r in rows:
        if "roc_auc" not in r:
            lines.append(f"{r['detector']:<24}  {r.get('note', '')}")
            continue
        lines.append(
            f"{r['detector']:<24}{r['rows']:>9,}{r['roc_auc']:>9.4f}{r['auprc']:>8.3f}"
            f"{r['precision']:>7.3f}{r['recall']:>7.3f}{r['f1']:>7.3f}{r['fpr']:>8.4f}"
            f"{r['fpr_first_catch']:>8.4f}{(r['rows_per_s'] or 0):>9,}  {r['note']}"
        )
    return "\n".join(lines)
