"""An online reference that learns every row at once: could any causal novelty score pass?

    python bench/online_reference.py ../shared/datasets/odds/vowels.mat
    python bench/online_reference.py SET.mat --order shuffled --seed 1

Each row is scored by its distance to its ``k``-th nearest of the rows before it (the
last ``memory`` of them, flagged or not, in each feature's p10-p90 spread over those
rows), then learnt. Nothing is kept out of what it learns, so a new regime is learnt as
fast as a neighbour distance can learn it, and a burst of anomalies is learnt just as
fast: the most adaptive novelty score there is, and one the service must not be (a
burst of attacks would teach it). Printed beside ``sentinel-stream evaluate``'s own
figures for the same order, the false-positive rate at the first catch (the least any
threshold pays to flag one anomaly: above 1 %, no threshold meets "recall > 0 at FPR <=
1 %"), over the rows after a warm-up of ``--warmup`` rows, where every detector is
still learning. If this reference cannot flag an anomaly for less than 1 %, the ranking
a causal detector has to work from cannot either: the order, not the detector, is what
the bar asks too much of.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

F64 = npt.NDArray[np.float64]


def online_neighbour_scores(x: F64, k: int = 5, memory: int = 2000) -> F64:
    """Each row's distance to its ``k``-th nearest of the ``memory`` rows before it, in
    those rows' p10-p90 spread per feature (1 where that is 0); 0 for the first ``k``
    rows, which have no ``k``-th neighbour."""
    n = len(x)
    scores = np.zeros(n)
    for i in range(k, n):
        past = x[max(0, i - memory) : i]
        spread = np.quantile(past, 0.9, axis=0) - np.quantile(past, 0.1, axis=0)
        spread[spread == 0] = 1.0
        d = np.sqrt((((past - x[i]) / spread) ** 2).sum(axis=1))
        scores[i] = np.partition(d, k - 1)[k - 1]
    return scores


def after_warmup(y: npt.NDArray[np.bool_], scores: F64, warmup: int) -> dict[str, float]:
    """ROC AUC, AUPRC and the FPR at the first catch over the rows after ``warmup``."""
    from sentinel_stream.tools.evaluate import fpr_at_first_catch

    yt, st = y[warmup:], scores[warmup:]
    return {
        "roc_auc": float(roc_auc_score(yt, st)),
        "auprc": float(average_precision_score(yt, st)),
        "fpr_first_catch": fpr_at_first_catch(yt, st),
    }


def main() -> int:
    from sentinel_stream.config import load_settings
    from sentinel_stream.tools import evaluate as ev

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--order", choices=ev.ORDERS, default="file")
    ap.add_argument("--seed", type=int, default=1, help="the order's and the stream's fit seed")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--memory", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=128)
    args = ap.parse_args()
    data = ev.load(args.file)
    stream = ev.reordered(data, ev.arrival_order(data, args.order, args.seed))
    y = stream.y.astype(bool)
    ours, _, _ = ev.score_stream(stream, load_settings(refit_workers=0, seed=args.seed))
    reference = online_neighbour_scores(stream.x.astype(np.float64), args.k, args.memory)
    print(f"{args.file.name}, {args.order} order, rows after the first {args.warmup}:")
    for name, scores in (
        ("sentinel-stream", ours),
        (f"online {args.k}-NN, learns every row", reference),
    ):
        r = after_warmup(y, scores, args.warmup)
        print(
            f"  {name:<34} ROC AUC {r['roc_auc']:.4f}  AUPRC {r['auprc']:.3f}  "
            f"FPR at the first catch {100 * r['fpr_first_catch']:.2f} %"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
