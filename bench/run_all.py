"""Every benchmark in one command, written up as a report with charts.

    python bench/run_all.py --quick    # a smoke run of every section: ~5 minutes
    python bench/run_all.py            # the full run: ~30 minutes on 2 cores

Each figure is printed next to its baseline from the same run (these machines are
noisy: compare ratios). The full run writes ``bench/results/``: ``report.md``,
``results.json``, PNG charts, and the README's benchmark table (between its markers);
``--quick`` writes ``bench/results/quick/`` and leaves the README alone. The sections,
each a script that also runs alone:

- ``stream``: throughput of the pipeline, exactly-once and with a hanging LLM vs a
  pass-through consumer-producer, and latency against offered rate
  (``bench/stream_throughput.py``);
- ``profile``: where the Kafka loop's time goes, per stage (``bench/stage_profile.py``,
  py-spy);
- ``scaling``: events/s and RSS against routes and window size (``bench/scaling.py``);
- ``http``: ``POST /analyze-flow`` vs a plain aiohttp handler and the v1 design, and a
  member that asks the route's owner vs the owner (``bench/http_load.py``);
- ``rewarm``: N routes re-warmed from the state changelog vs cold (``bench/rewarm.py``);
- ``chaos``: the chaos suite's table (``bench/chaos_table.py``; ``--chaos`` picks its
  length);
- ``refit``: a model's size, and scoring latency while routes refit (worker vs inline);
- ``quality``: detection quality and the fit cost (``bench/detection_quality.py``), KDD
  and synthetic against the reference figures in ``bench/results/quality_reference.json``;
- ``memory``: a real ``sentinel-stream run`` tree's RSS through N routes and a flood of
  one-off routes (``bench/memory.py``; the ``markdown`` field of its JSON goes into the
  report as is).

``--only stream,http`` re-runs some sections and keeps the others' results from the last
run's ``results.json`` in the same directory; ``--render`` only writes the report again.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench, tests.support

from bench import charts, detection_quality, report
from bench.common import PY, ROOT, git_commit, run_json

RESULTS = ROOT / "bench" / "results"
SECTIONS = (
    "stream",
    "profile",
    "scaling",
    "http",
    "rewarm",
    "chaos",
    "refit",
    "quality",
    "memory",
)
SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "stream_events": 20_000,
        "stream_rates": "1000,10000",
        "stream_seconds": 2,
        "profile_events": 30_000,
        "scaling_routes": "10,1000,10000",
        "scaling_events": 20_000,
        "scaling_windows": "250,1000",
        "scaling_window_routes": 10,
        "http_seconds": 2,
        "rewarm_routes": "20",
        "rewarm_rate": 1000,
        "memory_routes": 100,
        "memory_flood": 5_000,
        "chaos": "smoke",
        "refit_batches": 40,
        "quality_sets": ["thyroid"],
        "quality_kdd": False,
        "quality_synthetic": 20_000,
        "quality_fits": 5,
        "quality_fit_seeds": 3,
        "quality_v1": False,
    },
    "full": {
        "stream_events": 200_000,
        "stream_rates": "1000,2000,5000,10000,20000",
        "stream_seconds": 10,
        "profile_events": 200_000,
        "scaling_routes": "10,100,1000,10000,100000",
        "scaling_events": 200_000,
        "scaling_windows": "250,1000,5000",
        "scaling_window_routes": 100,
        "http_seconds": 8,
        "rewarm_routes": "100,1000",
        "rewarm_rate": 5000,
        "memory_routes": 1000,
        "memory_flood": 100_000,
        "chaos": "short",
        "refit_batches": 150,
        "quality_sets": list(detection_quality.SETS),
        "quality_kdd": True,
        "quality_synthetic": 100_000,
        "quality_fits": 21,
        "quality_fit_seeds": 10,
        "quality_v1": True,
    },
}


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
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def script(name: str, *args: str) -> list[str]:
    return [PY, str(ROOT / "bench" / name), *args, "--json"]


# -- the sections that need a broker ------------------------------------------------------


def stream(sz: dict[str, Any], bootstrap: str) -> Any:
    cmd = script(
        "stream_throughput.py",
        "--bootstrap",
        bootstrap,
        "--events",
        str(sz["stream_events"]),
        "--rates",
        sz["stream_rates"],
        "--rate",
        "10000",
        "--seconds",
        str(sz["stream_seconds"]),
        "--llm-hang",
    )
    return run_json(cmd, 3600)


def profile(sz: dict[str, Any], bootstrap: str) -> Any:
    cmd = script(
        "stage_profile.py", "--bootstrap", bootstrap, "--events", str(sz["profile_events"])
    )
    return run_json(cmd, 1800)


def scaling(sz: dict[str, Any], bootstrap: str) -> Any:
    cmd = script(
        "scaling.py",
        "--bootstrap",
        bootstrap,
        "--routes",
        sz["scaling_routes"],
        "--events",
        str(sz["scaling_events"]),
        "--windows",
        sz["scaling_windows"],
        "--window-routes",
        str(sz["scaling_window_routes"]),
    )
    return run_json(cmd, 3600)


def http(sz: dict[str, Any], bootstrap: str) -> Any:
    cmd = script(
        "http_load.py", "--bootstrap", bootstrap, "--seconds", str(sz["http_seconds"]), "--owner"
    )
    return {"rows": run_json(cmd, 1800)}


def rewarm(sz: dict[str, Any], bootstrap: str) -> Any:
    cmd = script(
        "rewarm.py",
        "--bootstrap",
        bootstrap,
        "--routes",
        sz["rewarm_routes"],
        "--rate",
        str(sz["rewarm_rate"]),
    )
    return {"rows": run_json(cmd, 5400)}


# -- the sections without ------------------------------------------------------------------


def chaos(sz: dict[str, Any], mode: str) -> Any:
    if mode == "none":
        return None
    return run_json(script("chaos_table.py", "--mode", mode), 4000)


def refit(sz: dict[str, Any]) -> dict[str, Any]:
    """A model's bytes, and what refitting does to the latency of scoring a batch."""
    from sentinel_stream.config import Settings
    from sentinel_stream.detect.fit import fit_forest
    from sentinel_stream.engine import Engine, Event

    rng = np.random.default_rng(1)
    x = np.log1p(rng.lognormal(4, 0.3, size=(1000, 2))).astype(np.float32)
    compiled, sk = fit_forest(x, 100, 256, 0)

    def batch_latencies(workers: int) -> list[float]:
        engine = Engine(
            Settings(refit_workers=workers, refit_every=200, refit_min_interval_s=0, seed=1)
        )
        out = []
        try:
            for b in range(sz["refit_batches"]):
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

    rows = {}
    for name, workers in (("refit_in_worker", 1), ("refit_inline", 0)):
        lat = batch_latencies(workers)
        rows[name] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": pct(lat, 100)}
    return {
        "model_bytes_compiled": compiled.nbytes,
        "model_bytes_sklearn_pickle": len(pickle.dumps(sk)),
        "batch200_ms": rows,
    }


def quality(sz: dict[str, Any]) -> dict[str, Any]:
    res = detection_quality.measure(
        sz["quality_sets"],
        fits=sz["quality_fits"],
        kdd=sz["quality_kdd"],
        synthetic_events=sz["quality_synthetic"],
        curves=True,
        v1=sz["quality_v1"],
        fit_seeds=sz["quality_fit_seeds"],
    )
    ref = RESULTS / "quality_reference.json"
    if ref.exists():
        res["reference"] = json.loads(ref.read_text(encoding="utf-8"))
    return res


def set_reference(res: dict[str, Any], commit: str) -> None:
    """Make this run's KDD and synthetic figures the reference later runs compare with."""
    sets = {
        t["set"]: {
            "rows": t["rows"],
            "roc_auc": t["ours"]["roc_auc"],
            "auprc": t["ours"]["auprc"],
            "rows_per_s": t["ours"]["rows_per_s"],
        }
        for t in res.get("telemetry", [])
    }
    doc = {"source": f"bench/run_all.py at commit {commit}", "sets": sets}
    (RESULTS / "quality_reference.json").write_text(json.dumps(doc, indent=1) + "\n")
    res["reference"] = doc


def memory(sz: dict[str, Any], bootstrap: str) -> Any:
    """``bench/memory.py``: a real process tree's memory through two phases."""
    cmd = script(
        "memory.py",
        "--bootstrap",
        bootstrap,
        "--routes",
        str(sz["memory_routes"]),
        "--flood",
        str(sz["memory_flood"]),
    )
    return run_json(cmd, 3600)


# -- the run -------------------------------------------------------------------------------


def publish(res: dict[str, Any], out: Path, readme: bool) -> str:
    """Charts, report.md and (from a full run into bench/results) the README's table."""
    text = report.render(res, charts.draw(res, out))
    (out / "report.md").write_text(text, encoding="utf-8")
    if readme and out.resolve() == RESULTS.resolve():
        rel = os.path.relpath(out / "report.md", ROOT)
        if not report.update_readme(ROOT / "README.md", res, rel):
            print("README.md has no benchmark table markers: left alone", file=sys.stderr)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument("--out", type=Path, help="default: bench/results (bench/results/quick)")
    ap.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    ap.add_argument(
        "--chaos",
        choices=["none", "smoke", "short", "full"],
        help="the chaos suite's length (default: smoke with --quick, else short; full is "
        "scripts/chaos.sh)",
    )
    ap.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    ap.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: write the report, charts and README table again from the "
        "results.json in the output directory",
    )
    ap.add_argument(
        "--set-quality-reference",
        action="store_true",
        help="make this run's KDD and synthetic figures the reference",
    )
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    sz = SIZES[mode]
    out: Path = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in (args.only.split(",") if args.only else SECTIONS) if s]
    skip = set(filter(None, args.skip.split(",")))
    unknown = (set(wanted) | skip) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")
    todo = [s for s in wanted if s not in skip]
    res: dict[str, Any] = {}
    previous = out / "results.json"
    if args.render:
        res = json.loads(previous.read_text(encoding="utf-8"))
        publish(res, out, readme=res["mode"] == "full" and not args.no_readme)
        return 0
    if args.only and previous.exists():
        res = json.loads(previous.read_text(encoding="utf-8"))
    commit = git_commit()
    res.update(
        {
            "machine": machine(),
            "mode": mode,
            "commit": commit,
            "command": shlex.join(["python", "bench/run_all.py", *sys.argv[1:]]),
        }
    )
    res.setdefault("seconds", {})
    chaos_mode = args.chaos or sz["chaos"]

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name not in todo:
            return
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            res[name] = fn()
        except Exception as exc:  # one section's failure must not lose the others
            traceback.print_exc()
            res[name] = {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}
        res["seconds"][name] = round(time.monotonic() - started)
        # Which run measured it: with --only, the report mixes sections of several runs.
        res.setdefault("provenance", {})[name] = {
            "command": res["command"],
            "commit": commit,
            "date": res["machine"]["date"],
        }
        print(f"   {name}: {res['seconds'][name]} s", flush=True)
        # What is measured is kept as it comes: a run stopped later loses nothing before.
        (out / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")

    def with_broker(bootstrap: str) -> None:
        section("stream", lambda: stream(sz, bootstrap))
        section("profile", lambda: profile(sz, bootstrap))
        section("scaling", lambda: scaling(sz, bootstrap))
        section("http", lambda: http(sz, bootstrap))
        section("rewarm", lambda: rewarm(sz, bootstrap))
        section("memory", lambda: memory(sz, bootstrap))

    if {"stream", "profile", "scaling", "http", "rewarm", "memory"} & set(todo):
        if args.bootstrap:
            with_broker(args.bootstrap)
        else:
            from tests.support.kafka_broker import broker_for_tests

            with broker_for_tests() as bootstrap:
                with_broker(bootstrap)
    section("chaos", lambda: chaos(sz, chaos_mode))
    section("refit", lambda: refit(sz))
    section("quality", lambda: quality(sz))
    if args.set_quality_reference and "error" not in (res.get("quality") or {"error": 1}):
        set_reference(res["quality"], commit)
    (out / "results.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    print(publish(res, out, readme=not args.quick and not args.no_readme))
    total = sum(res["seconds"].get(s, 0) for s in todo)
    print(f"bench: {len(todo)} sections in {total / 60:.1f} min; report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
