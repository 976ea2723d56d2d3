"""Where the Kafka loop's time goes: a sampling profile of the pipeline, cut into stages.

Not a test: it prints a table. ``--events`` events over ``--routes`` routes are
pre-loaded into an input topic; a child process runs the real
:class:`~sentinel_stream.stream.pipeline.Pipeline` (production settings, fits in a worker
process) and, once the loop has its partitions, attaches ``py-spy record`` to itself until
every event is handled (start-up and joining the group are left out). Two runs: one keeps
the loop thread's samples on the CPU, one all of them (``--idle``: its wall time, waits
for the broker included). Only the loop's thread counts. Each sample goes to the stage of
its innermost frame that one of the rules below names:

- consume: ``next_batch`` (stream/kafka/batching.py) and the loop's polls;
- decode: stream/decode.py;
- group: the engine's batch set-up (``Engine._process``: the features, the route groups);
- score: the detector (detect/) and the engine's per-route scoring (``_score_group``);
- fit install: installing finished fits (``install_completed``, ``Engine.tick``);
- verdict build: ``build_verdict``, the encoder's set-up, explanations (explain/);
- serialise: ``VerdictEncoder.encode`` and the JSON encoding of verdicts;
- produce: stream/publish.py, ``produce_waiting``, delivery reports, the loop's
  ``producer.poll``;
- commit: stream/checkpoint.py and the loop's commits;
- state: stream/state.py (the changelog: noting routes, writing and restoring state);
- metrics: the metrics module and prometheus_client;
- loop: the rest of the loop's own lines.

    python bench/stage_profile.py --events 200000
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench, tests.support

from bench.common import (
    PIPELINE_THREAD,
    PY,
    ROOT,
    Member,
    create_topics,
    read_stamps,
    settings_for,
    wait_until,
)
from bench.stream_throughput import PARTITIONS, preload, throughput_of

STAGES = (
    "consume",
    "decode",
    "group",
    "score",
    "fit install",
    "verdict build",
    "serialise",
    "produce",
    "commit",
    "state",
    "metrics",
    "loop",
    "other",
)
THREAD = PIPELINE_THREAD
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.+):(?P<line>\d+)\)$")


def stage_of(func: str, file: str, line: int) -> str | None:
    """The stage one frame belongs to, or None to look at its caller."""
    f = file.replace(os.sep, "/")
    name = func.rsplit(".", 1)[-1]
    text = linecache.getline(file, line)
    if "/prometheus_client/" in f or f.endswith("sentinel_stream/metrics.py"):
        return "metrics"
    if "/sentinel_stream/" not in f:
        return None  # numpy, orjson's callers, the standard library: their caller says
    if f.endswith("engine/verdict.py"):
        return "serialise" if name == "encode" else "verdict build"
    if "/sentinel_stream/explain/" in f:
        return "verdict build"
    if "/sentinel_stream/detect/" in f:
        return "fit install" if name == "install_completed" else "score"
    if f.endswith("engine/engine.py"):
        if name in ("_verdict", "_explain"):
            return "verdict build"
        if name == "tick" or "install_completed" in text:
            return "fit install"
        if name == "_score_group":
            if "orjson.dumps" in text or ".encode(" in text:
                return "serialise"
            if "VerdictEncoder" in text or "payload" in text or "anomalies" in text:
                return "verdict build"
            return "score"
        return "group"
    if f.endswith("stream/decode.py") or f.endswith("sentinel_stream/records.py"):
        return "decode"
    if f.endswith("stream/publish.py") or f.endswith("stream/kafka/produce.py"):
        return "produce"
    if f.endswith("stream/checkpoint.py"):
        return "commit"
    if f.endswith("stream/state.py") or f.endswith("stream/owners.py"):
        return "state"
    if f.endswith("stream/kafka/batching.py"):
        return "consume"
    if f.endswith("stream/pipeline.py"):
        if name in ("_on_delivery",):
            return "produce"
        if name.startswith("_commit") or name == "_rewind" or "checkpoint." in text:
            return "commit"
        if name in ("_write_state", "_on_assign", "_on_revoke") or "state." in text:
            return "state"
        if name in ("_on_stats", "_backpressure", "_set_paused") or "next_batch" in text:
            return "consume"
        if "_consumer.poll" in text:
            return "consume"
        if "_producer.poll" in text or "publisher." in text:
            return "produce"
        if "note(" in text:
            return "state"
        if "metrics" in text or text.strip().startswith("m."):
            return "metrics"
        return "loop"
    return None


def classify(frames: list[str]) -> str:
    """The stage of one stack (outermost frame first)."""
    for frame in reversed(frames):
        m = FRAME.match(frame)
        if m is None:
            continue
        stage = stage_of(m["func"], m["file"], int(m["line"]))
        if stage is not None:
            return stage
    return "other"


def aggregate(raw: str, thread: str = THREAD) -> dict[str, Any]:
    """Samples per stage of the loop's thread, from py-spy's ``--threads -f raw`` output."""
    counts: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        parts = stack.split(";")
        head = parts[0]
        if not head.startswith("thread") or not head.endswith(f": {thread}"):
            continue
        frames = parts[1:]
        counts[classify(frames)] += int(n)
        leaf = FRAME.match(frames[-1]) if frames else None
        if leaf is not None:
            functions[f"{leaf['func']} ({Path(leaf['file']).name})"] += int(n)
    total = sum(counts.values())
    return {
        "samples": total,
        "stages": [
            {"stage": s, "samples": counts[s], "share": round(counts[s] / total, 4) if total else 0}
            for s in STAGES
            if counts[s]
        ],
        "top_functions": [
            {"function": f, "share": round(c / total, 4)} for f, c in functions.most_common(12)
        ],
    }


# -- the child: the pipeline, profiled ------------------------------------------------------


class GcPauses:
    """The garbage collector's runs in this process and the time they took (any thread's:
    the loop's thread is where nearly all of its allocations are)."""

    def __init__(self) -> None:
        self._started = 0.0
        self.reset()
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.collections = 0
        self.seconds = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections += 1
            self.seconds += time.perf_counter() - self._started

    def taken(self) -> dict[str, float]:
        return {"collections": self.collections, "seconds": round(self.seconds, 4)}


def child(args: argparse.Namespace) -> int:
    """Run the pipeline; once it has its partitions, profile this process until every
    event is handled (startup and joining the group are left out)."""
    member = Member(settings_for(args.bootstrap, args.prefix)).start()
    status = member.pipeline.status
    pauses = GcPauses()
    if not wait_until(lambda: bool(status.assigned) and not status.restoring, 120, 0.05):
        member.stop()
        return 1
    cmd = [args.spy, "record", "-f", "raw", "--threads", "--full-filenames", "--nonblocking"]
    cmd += ["-r", str(args.rate), "-o", args.out, "--pid", str(os.getpid())]
    spy = subprocess.Popen(
        [*cmd, *(["--idle"] if args.idle else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pauses.reset()
    ok = wait_until(lambda: member.records >= args.events, 600, 0.05)
    Path(args.out + ".gc.json").write_text(json.dumps(pauses.taken()), encoding="utf-8")
    spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled, and exits
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
    member.stop()
    return 0 if ok else 1


# -- the parent ----------------------------------------------------------------------------


def py_spy() -> str | None:
    here = Path(PY).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def profile_once(
    spy: str, bootstrap: str, events: list[dict[str, Any]], rate: int, idle: bool
) -> dict[str, Any]:
    """One profiled run of the pipeline over its own pre-loaded topic."""
    prefix = f"bench-profile-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}.{t}" for t in ("in", "out", "dlq", "state")]
    create_topics(bootstrap, names, PARTITIONS, stamped=(f"{prefix}.out",))
    preload(bootstrap, f"{prefix}.in", events)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "raw.txt"
        cmd = [PY, str(Path(__file__).resolve()), "--child", "--bootstrap", bootstrap]
        cmd += ["--prefix", prefix, "--events", str(len(events)), "--spy", spy]
        cmd += ["--rate", str(rate), "--out", str(out), *(["--idle"] if idle else [])]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
        if run.returncode != 0 or not out.exists():
            raise RuntimeError(f"profiled run failed ({run.returncode}): {run.stderr[-1500:]}")
        raw = out.read_text(encoding="utf-8", errors="replace")
        gc_file = Path(str(out) + ".gc.json")
        pauses = json.loads(gc_file.read_text(encoding="utf-8")) if gc_file.exists() else None
    stamps = read_stamps(bootstrap, f"{prefix}.out", len(events), 120)
    res = aggregate(raw)
    ts = sorted(stamps.values())
    busy_s = (ts[-1] - ts[0]) / 1000.0 if len(ts) > 1 else 0.0
    res["events_per_s"] = round(throughput_of(stamps))
    res["gc"] = pauses
    res["processing_s"] = round(busy_s, 2)
    # samples taken / samples a thread busy all along would give
    res["busy_share"] = round(res["samples"] / (rate * busy_s), 3) if busy_s else None
    return res


def profile(bootstrap: str, events: int, routes: int, rate: int) -> dict[str, Any]:
    """Two runs: the loop thread's samples on the CPU, and all of its samples (wall time,
    waiting included)."""
    from sentinel_stream.tools.synthetic import generate

    spy = py_spy()
    if spy is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    evs = [le.event for le in generate(events, routes, 0.005, seed=1)]
    return {
        "events": events,
        "routes": routes,
        "sample_rate_hz": rate,
        "cpu": profile_once(spy, bootstrap, evs, rate, idle=False),
        "wall": profile_once(spy, bootstrap, evs, rate, idle=True),
    }


def render(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"(not measured: {res['error']})"
    cpu = {s["stage"]: s["share"] for s in res["cpu"]["stages"]}
    wall = {s["stage"]: s["share"] for s in res["wall"]["stages"]}
    lines = [
        "| stage | share of the loop thread's time (waits included) | share of its CPU samples |",
        "| --- | ---: | ---: |",
    ]
    for stage in STAGES:
        if stage in cpu or stage in wall:
            lines.append(
                f"| {stage} | {100 * wall.get(stage, 0):.1f} % | {100 * cpu.get(stage, 0):.1f} % |"
            )
    for kind, title in (("cpu", "on the CPU"), ("wall", "waits included")):
        lines += ["", f"Hottest innermost functions ({title}):", ""]
        lines += ["| function | share |", "| --- | ---: |"]
        lines += [
            f"| `{f['function']}` | {100 * f['share']:.1f} % |" for f in res[kind]["top_functions"]
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--routes", type=int, default=100)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--spy", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help="default: KAFKA_BOOTSTRAP_SERVERS or a local broker")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.bootstrap:
        res = profile(args.bootstrap, args.events, args.routes, args.rate)
    else:
        from tests.support.kafka_broker import broker_for_tests

        with broker_for_tests() as bootstrap:
            res = profile(bootstrap, args.events, args.routes, args.rate)
    if args.json:
        print(json.dumps(res))
    else:
        print(render(res))
        if "error" not in res:
            c, w = res["cpu"], res["wall"]
            print(
                f"\n{c['samples']:,} samples on the CPU ({c['events_per_s']:,} events/s under "
                f"the profiler; the loop on the CPU {c['busy_share']} of the time), "
                f"{w['samples']:,} with waits ({w['events_per_s']:,} events/s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
