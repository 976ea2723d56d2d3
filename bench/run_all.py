"""Every benchmark in one command, written up as a report with charts.

    python bench/run_all.py            # ~20 minutes on a 2-core machine
    python bench/run_all.py --quick    # smaller sizes, for a smoke run

Each figure is printed next to its baseline from the same run (these machines are
noisy: compare ratios). Results go to ``bench/results/``: ``report.md``, ``results.json``
and PNG charts. The sections:

1. stream throughput and latency vs a pass-through consumer-producer (and with a
   hanging LLM configured);
2. ``POST /analyze-flow`` vs a plain aiohttp handler and the v1 design;
3. memory vs number of routes (up to 100,000), and a compiled model's size vs sklearn's;
4. refit cost, and what refitting does to scoring latency (worker process vs inline);
5. detection quality: ``evaluate`` on KDD Cup 99 http and on the synthetic set, with the
   baselines (batch IsolationForest, River's HalfSpaceTrees, the v1 design).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support (the broker helpers)
OUT = ROOT / "bench" / "results"
KDD = ROOT.parent / "shared" / "datasets" / "kdd99-http" / "http.mat"
PY = sys.executable


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run_json(cmd: list[str], timeout: float) -> Any:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- 3. memory -----------------------------------------------------------------------------


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def memory_vs_routes(sizes: list[int], events_per_route: int) -> dict[str, Any]:
    from sentinel_stream.detect.detector import Detector, DetectorParams
    from sentinel_stream.detect.fit import fit_forest
    from sentinel_stream.detect.refit import InlineRefitter
    from sentinel_stream.detect.rules import telemetry_rules

    rows_out = []
    rng = np.random.default_rng(0)
    for n_routes in sizes:
        gc.collect()
        before = rss_bytes()
        d = Detector(
            DetectorParams(max_routes=n_routes, min_history=1000, model_features=(0, 1)),
            telemetry_rules(20, 5),
            InlineRefitter(),
        )
        rows = np.log1p(rng.lognormal(4, 0.3, size=(events_per_route, 3))).astype(np.float32)
        rows[:, 2] = 0
        for r in range(n_routes):
            d.score_and_learn(f"/r{r}", rows)
        gc.collect()
        after = rss_bytes()
        rows_out.append(
            {
                "routes": n_routes,
                "rss_mib": round(after / 2**20, 1),
                "added_mib": round((after - before) / 2**20, 1),
                "bytes_per_route": round((after - before) / n_routes),
            }
        )
        del d
    x = np.log1p(rng.lognormal(4, 0.3, size=(1000, 2))).astype(np.float32)
    compiled, sk = fit_forest(x, 100, 256, 0)
    return {
        "events_per_route": events_per_route,
        "rows": rows_out,
        "model_bytes_compiled": compiled.nbytes,
        "model_bytes_sklearn_pickle": len(pickle.dumps(sk)),
    }


# -- 4. refit ------------------------------------------------------------------------------


def refit_cost(fits: int) -> dict[str, Any]:
    from sentinel_stream.config import Settings
    from sentinel_stream.detect.fit import fit_forest
    from sentinel_stream.engine import Engine, Event

    rng = np.random.default_rng(1)
    x = np.log1p(rng.lognormal(4, 0.3, size=(2000, 2))).astype(np.float32)
    durations = []
    for i in range(fits):
        t = time.perf_counter()
        fit_forest(x, 100, 256, i)
        durations.append(time.perf_counter() - t)

    def batch_latencies(workers: int) -> list[float]:
        engine = Engine(
            Settings(refit_workers=workers, refit_every=200, refit_min_interval_s=0, seed=1)
        )
        out = []
        try:
            for b in range(150):
                evs = [
                    Event(
                        f"/r{(b * 7 + i) % 20}",
                        float(rng.lognormal(4.6, 0.2)),
                        int(rng.lognormal(6, 0.2)),
                        0,
                        f"{b}-{i}",
                        "t",
                        None,
                    )
                    for i in range(200)
                ]
                t = time.perf_counter()
                engine.process(evs)
                out.append(time.perf_counter() - t)
        finally:
            engine.close()
        return out[20:]

    def pct(v: list[float], p: float) -> float:
        return round(float(np.percentile(v, p)) * 1000, 2)

    bg = batch_latencies(1)
    inline = batch_latencies(0)
    return {
        "fit_ms_median": round(statistics.median(durations) * 1000, 1),
        "fit_ms_p90": pct(durations, 90),
        "batch200_ms": {
            "refit_in_worker": {"p50": pct(bg, 50), "p99": pct(bg, 99), "max": pct(bg, 100)},
            "refit_inline": {
                "p50": pct(inline, 50),
                "p99": pct(inline, 99),
                "max": pct(inline, 100),
            },
        },
    }


# -- 5. quality ----------------------------------------------------------------------------


def quality(
    path: Path, v1_rows: int, hst_rows: int, v1_slice: tuple[int, int] | None = None
) -> dict[str, Any]:
    from sentinel_stream.config import Settings
    from sentinel_stream.tools import evaluate as ev

    data = ev.load(path)
    scores, flags, seconds = ev.score_stream(data, Settings(refit_workers=0, seed=1))
    results = [ev.report("sentinel-stream", data.y, scores, flags, seconds, note="streaming")]
    curves = {"sentinel-stream": roc(data.y, scores)}
    x = ev.baseline_features(data)
    for rep, base_scores in (
        ev.baseline_batch(x, data.y),
        ev.baseline_hst(x, data.y, hst_rows),
        v1(ev, x, data.y, v1_rows, v1_slice),
    ):
        results.append(rep)
        if "roc_auc" in rep:
            a, b = rep.get("slice", [0, rep["rows"]])
            curves[rep["detector"]] = roc(data.y[a:b], base_scores)
    return {"file": str(path.name), "rows": len(data.y), "results": results, "curves": curves}


def v1(
    ev: Any, x: np.ndarray, y: np.ndarray, rows: int, where: tuple[int, int] | None
) -> tuple[dict[str, Any], np.ndarray]:
    """The v1 design on a prefix, or on a stated slice where a prefix holds no anomaly
    (it scores ~30 rows/s: a whole set would take hours)."""
    if where is None:
        result: tuple[dict[str, Any], np.ndarray] = ev.baseline_v1(x, y, rows)
        return result
    a, b = where
    rep, scores = ev.baseline_v1(x[a:b], y[a:b], b - a)
    rep["note"] = f"rows {a:,}-{b:,} only (no attack before row 201,669)"
    rep["slice"] = [a, b]
    return rep, scores


def roc(y: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, 400).astype(int))
    return {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}


# -- report --------------------------------------------------------------------------------


def charts(res: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    stream = res["stream"]["rows"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].bar(
        [r["case"] for r in stream],
        [r["events_per_s"] for r in stream],
        color=["#999", "#2a7", "#7a2"][: len(stream)],
    )
    ax[0].set_title("stream throughput (events/s)")
    http = res["http"]
    ax[1].bar(
        [r["case"] for r in http],
        [r["requests_per_s"] for r in http],
        color=["#999", "#2a7", "#c44"][: len(http)],
    )
    ax[1].set_title("POST /analyze-flow (requests/s, c=32)")
    fig.tight_layout()
    fig.savefig(OUT / "throughput.png", dpi=110)
    made.append("throughput.png")
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r["case"] for r in stream]
    w = 0.38
    idx = np.arange(len(names))
    ax[0].bar(idx - w / 2, [r["p50_ms"] or 0 for r in stream], w, label="p50")
    ax[0].bar(idx + w / 2, [r["p99_ms"] or 0 for r in stream], w, label="p99")
    ax[0].set_xticks(idx, names)
    ax[0].set_title("produce-to-verdict latency (ms)")
    ax[0].legend()
    names = [r["case"] for r in http if r["case"] != "v1"]
    sel = [r for r in http if r["case"] != "v1"]
    idx = np.arange(len(sel))
    ax[1].bar(idx - w / 2, [r["p50_ms"] for r in sel], w, label="p50")
    ax[1].bar(idx + w / 2, [r["p99_ms"] for r in sel], w, label="p99")
    ax[1].set_xticks(idx, names)
    ax[1].set_title("HTTP latency (ms; v1 design off scale)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(OUT / "latency.png", dpi=110)
    made.append("latency.png")
    plt.close(fig)

    for key in ("kdd", "synthetic"):
        q = res["quality"].get(key)
        if not q:
            continue
        fig, ax = plt.subplots(figsize=(5, 4.2))
        for name, c in q["curves"].items():
            ax.plot(c["fpr"], c["tpr"], label=name)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        auc = {r["detector"]: r.get("roc_auc") for r in q["results"]}
        ax.set_title(f"ROC, {q['file']} (ours: AUC {auc['sentinel-stream']})")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(OUT / f"roc_{key}.png", dpi=110)
        made.append(f"roc_{key}.png")
        plt.close(fig)
    return made


def quality_table(q: dict[str, Any]) -> str:
    lines = [
        "| detector | rows | ROC AUC | AUPRC | precision | recall | F1 | FPR | rows/s | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in q["results"]:
        lines.append(
            f"| {r['detector']} | {r['rows']:,} | {r['roc_auc']:.4f} | {r['auprc']:.3f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['fpr']:.4f} | "
            f"{r['rows_per_s']:,} | {r['note']} |"
        )
    return "\n".join(lines)


def write_report(res: dict[str, Any], images: list[str]) -> None:
    m = res["machine"]
    s = res["stream"]
    st = {r["case"]: r for r in s["rows"]}
    h = {r["case"]: r for r in res["http"]}
    mem = res["memory"]
    rf = res["refit"]
    lines = [
        "# sentinel-stream benchmark report",
        "",
        f"Generated by `python bench/run_all.py` on {m['date']}: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Python {m['python']}. Broker, load generators and service share "
        "the machine. Every figure sits next to its baseline from the same run.",
        "",
        "## Stream (bench/stream_throughput.py)",
        "",
        "| case | events/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in s["rows"]:
        lines.append(f"| {r['case']} | {r['events_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} |")
    lines += [
        "",
        f"Pipeline / pass-through: **{s['ratio_to_pass_through']}**. With an LLM configured that "
        "never answers / without: "
        f"**{round(s.get('llm_hanging_ratio_to_pipeline') or 0, 3)}**. Latency measured "
        f"at {st['pipeline']['latency_rate_per_s']:,.0f} events/s into warmed routes.",
        "",
        "## HTTP (bench/http_load.py, wrk, concurrency 32)",
        "",
        "| case | requests/s | p50 ms | p99 ms | vs plain |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in res["http"]:
        lines.append(
            f"| {r['case']} | {r['requests_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['ratio_to_plain']} |"
        )
    lines += [
        "",
        f"`sentinel` is the full service (scoring, forwarding each event to Kafka, the Kafka "
        f"loop learning it); `plain` parses JSON and answers; `v1` calls sklearn's "
        f"`score_samples` per request ({h['v1']['requests_per_s']} requests/s).",
        "",
        "## Memory",
        "",
        f"Per route, {mem['events_per_route']} events each (window and long-memory reservoir "
        "pages are touched as they fill):",
        "",
        "| routes | process RSS MiB | added MiB | bytes per route |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in mem["rows"]:
        lines.append(
            f"| {r['routes']:,} | {r['rss_mib']} | {r['added_mib']} | {r['bytes_per_route']:,} |"
        )
    lines += [
        "",
        f"One model of 100 trees: compiled {mem['model_bytes_compiled']:,} bytes vs sklearn's "
        f"pickled IsolationForest {mem['model_bytes_sklearn_pickle']:,} bytes.",
        "",
        "## Refit",
        "",
        f"Fit of 100 trees: median {rf['fit_ms_median']} ms (p90 {rf['fit_ms_p90']} ms). Scoring "
        "a batch of 200 events over 20 routes while routes refit:",
        "",
        "| refits run | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k, v in rf["batch200_ms"].items():
        lines.append(f"| {k.replace('_', ' ')} | {v['p50']} | {v['p99']} | {v['max']} |")
    for key, title in (
        ("kdd", "KDD Cup 99 http (567,498 rows, 0.39 % attacks)"),
        ("synthetic", "synthetic telemetry"),
    ):
        q = res["quality"].get(key)
        if q:
            lines += ["", f"## Detection quality: {title}", "", quality_table(q)]
    lines += ["", "## Charts", ""] + [f"![{i}]({i})" for i in images]
    (OUT / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    res: dict[str, Any] = {"machine": machine()}

    def with_broker(bootstrap: str) -> None:
        print("1/5 stream throughput", flush=True)
        res["stream"] = run_json(
            [
                PY,
                "bench/stream_throughput.py",
                "--json",
                "--llm-hang",
                "--bootstrap",
                bootstrap,
                "--events",
                "40000" if quick else "200000",
            ],
            1800,
        )
        print("2/5 HTTP", flush=True)
        res["http"] = run_json(
            [
                PY,
                "bench/http_load.py",
                "--json",
                "--bootstrap",
                bootstrap,
                "--seconds",
                "3" if quick else "8",
            ],
            900,
        )

    if args.bootstrap:
        with_broker(args.bootstrap)
    else:
        from tests.support.kafka_broker import broker_for_tests

        with broker_for_tests() as bootstrap:
            with_broker(bootstrap)
    print("3/5 memory", flush=True)
    res["memory"] = memory_vs_routes([1000, 10000] if quick else [1000, 10000, 100000], 20)
    print("4/5 refit", flush=True)
    res["refit"] = refit_cost(5 if quick else 20)
    print("5/5 detection quality", flush=True)
    res["quality"] = {}
    synth = OUT / "tmp" / "synthetic.csv"
    synth.parent.mkdir(exist_ok=True)
    subprocess.run(
        [
            PY,
            "-m",
            "sentinel_stream",
            "synth",
            str(synth),
            "--events",
            "20000" if quick else "100000",
        ],
        check=True,
        capture_output=True,
    )
    res["quality"]["synthetic"] = quality(synth, 300 if quick else 5000, 10**9)
    if KDD.exists() and not quick:
        res["quality"]["kdd"] = quality(KDD, 0, 10**9, v1_slice=(308_000, 318_000))
    images = charts(res)
    (OUT / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_report(res, images)
    print((OUT / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
