"""The report's PNG charts, drawn from the results of one run (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_curve(stream: dict[str, Any], out: Path) -> str | None:
    """p50 and p99 produce-to-verdict latency against the offered rate, per case."""
    rows = [r for r in stream.get("rows", []) if len(r.get("latency", [])) > 1]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"pass-through": "#888", "pipeline": "#2a7", "exactly-once": "#27a"}
    for r in rows:
        pts = [p for p in r["latency"] if p["p50_ms"] is not None]
        x = [p["rate_per_s"] for p in pts]
        c = colors.get(r["case"], "#c44")
        ax.plot(x, [p["p50_ms"] for p in pts], "o-", color=c, label=f"{r['case']} p50")
        ax.plot(x, [p["p99_ms"] for p in pts], "s--", color=c, label=f"{r['case']} p99")
    ax.axhline(10, color="#bbb", lw=0.8, ls=":")
    ax.axhline(50, color="#bbb", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (events/s)")
    ax.set_ylabel("produce -> verdict latency (ms)")
    ax.set_title("latency against offered rate (targets 10 / 50 ms dotted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_curve.png", dpi=110)
    plt.close(fig)
    return "latency_curve.png"


def throughput(stream: dict[str, Any], http: dict[str, Any], out: Path) -> str | None:
    srows = stream.get("rows", [])
    hrows = http.get("rows", [])
    if not srows and not hrows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].bar([r["case"] for r in srows], [r["events_per_s"] for r in srows], color="#2a7")
    ax[0].set_title("stream throughput (events/s)")
    ax[0].tick_params(axis="x", labelsize=8)
    ax[1].bar([r["case"] for r in hrows], [r["requests_per_s"] for r in hrows], color="#27a")
    ax[1].set_title("POST /analyze-flow (requests/s, c=32)")
    ax[1].tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    return "throughput.png"


def scaling(res: dict[str, Any], out: Path) -> str | None:
    by_r, by_w = res.get("by_routes", []), res.get("by_window", [])
    if not by_r and not by_w:
        return None
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for a, pts, field, label in (
        (ax[0], by_r, "routes", "routes"),
        (ax[1], by_w, "history_max", "window (SENTINEL_HISTORY_MAX)"),
    ):
        if not pts:
            continue
        x = [p[field] for p in pts]
        a.plot(x, [p["events_per_s"] for p in pts], "o-", color="#2a7", label="events/s")
        a.set_xscale("log")
        a.set_xticks(x, [f"{v:,}" for v in x])
        a.tick_params(axis="x", which="minor", labelbottom=False)
        a.set_xlabel(label)
        a.set_ylabel("events/s", color="#2a7")
        a.set_ylim(bottom=0)
        b = a.twinx()
        # The loop's process: where routes live (the refit worker's memory is the same
        # whatever the routes, and there only once a fit has run).
        main = [p.get("rss_end_main_mib", p["rss_end_mib"]) for p in pts]
        b.plot(x, main, "s--", color="#c44", label="RSS MiB")
        b.set_ylabel("RSS MiB (the loop's process)", color="#c44")
        b.set_ylim(bottom=0)
        a.set_title(f"events/s and RSS against {label.split(' ')[0]}")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    return "scaling.png"


def profile(res: dict[str, Any], out: Path) -> str | None:
    if "cpu" not in res:
        return None
    plt = _plt()
    names = list(
        dict.fromkeys(s["stage"] for kind in ("wall", "cpu") for s in res[kind]["stages"])
    )[::-1]
    share = {k: {s["stage"]: 100 * s["share"] for s in res[k]["stages"]} for k in ("wall", "cpu")}
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(y + 0.2, [share["wall"].get(n, 0) for n in names], 0.4, label="waits included")
    ax.barh(y - 0.2, [share["cpu"].get(n, 0) for n in names], 0.4, label="on the CPU")
    ax.set_yticks(y, names)
    ax.set_xlabel("% of the Kafka loop thread's samples")
    ax.set_title("where the Kafka loop's time goes (py-spy)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "profile.png", dpi=110)
    plt.close(fig)
    return "profile.png"


def roc(q: dict[str, Any], key: str, out: Path) -> str | None:
    curves = q.get("curves")
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=name)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, {q['set']} (ours: AUC {q['ours']['roc_auc']})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    name = f"roc_{key}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def draw(res: dict[str, Any], out: Path) -> list[str]:
    """Every chart the results allow; the file names written."""
    made = [
        latency_curve(res.get("stream") or {}, out),
        throughput(res.get("stream") or {}, res.get("http") or {}, out),
        scaling(res.get("scaling") or {}, out),
        profile(res.get("profile") or {}, out),
    ]
    for q in (res.get("quality") or {}).get("telemetry", []):
        made.append(roc(q, "kdd" if q["set"] == "http" else q["set"], out))
    return [m for m in made if m is not None]
