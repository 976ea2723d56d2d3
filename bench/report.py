"""The benchmark report (``bench/results/report.md``) and the README's table, written from
the results of one ``bench/run_all.py`` run. Every figure beside its baseline from the
same run; where an issue set a target, the target and whether this run met it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import chaos_table, detection_quality, rewarm, scaling, stage_profile

README_BEGIN = "<!-- bench-table:begin (bench/run_all.py writes this table) -->"
README_END = "<!-- bench-table:end -->"
QUALITY_TOLERANCE = 0.002
"""How far ROC AUC and AUPRC may move from the reference before it counts as a change."""


def _n(v: Any, digits: int = 0) -> str:
    """A number with thousands separators; '-' for a missing one."""
    if v is None:
        return "-"
    if isinstance(v, int | float):
        return f"{v:,.{digits}f}"
    return str(v)


def _ok(cond: bool | None) -> str:
    return "-" if cond is None else ("yes" if cond else "**no**")


def _failed(section: Any) -> str | None:
    if section is None:
        return "not run"
    if isinstance(section, dict) and "error" in section:
        return f"not measured: {section['error']}"
    return None


def _case(res: dict[str, Any], name: str) -> dict[str, Any]:
    stream = res.get("stream") or {}
    return next((r for r in stream.get("rows", []) if r["case"] == name), {})


def _phase(row: dict[str, Any], rate: float) -> dict[str, Any]:
    return next((p for p in row.get("latency", []) if p["rate_per_s"] == rate), {})


def _http(res: dict[str, Any], name: str) -> dict[str, Any]:
    http = res.get("http") or {}
    return next((r for r in http.get("rows", []) if r["case"] == name), {})


def _telemetry(res: dict[str, Any], stem: str) -> dict[str, Any]:
    q = res.get("quality") or {}
    return next((t for t in q.get("telemetry", []) if t["set"] == stem), {})


def _vs_reference(res: dict[str, Any], stem: str) -> tuple[str, bool | None]:
    """'0.9995 / 0.848 (reference 0.9995 / 0.848)' and whether within tolerance."""
    t = _telemetry(res, stem)
    ref = ((res.get("quality") or {}).get("reference") or {}).get("sets", {}).get(stem)
    if not t:
        return "-", None
    ours = t["ours"]
    text = f"{ours['roc_auc']:.4f} / {ours['auprc']:.3f}"
    if not ref or ref.get("rows") != t["rows"]:
        return text + " (no reference for this size)", None
    # The reference guards against losing quality (to a speed-up, say): a figure above
    # it is a detection change to record as the new reference, not a failure.
    within = (
        ours["roc_auc"] >= ref["roc_auc"] - QUALITY_TOLERANCE
        and ours["auprc"] >= ref["auprc"] - QUALITY_TOLERANCE
    )
    return text + f" (reference {ref['roc_auc']:.4f} / {ref['auprc']:.3f})", within


def headline(res: dict[str, Any]) -> list[dict[str, str]]:
    """The figures the issues ask for, each beside its same-run baseline and target."""
    rows: list[dict[str, str]] = []

    def add(name: str, ours: str, base: str, target: str = "", met: bool | None = None) -> None:
        rows.append({"name": name, "ours": ours, "base": base, "target": target, "met": _ok(met)})

    stream = res.get("stream") or {}
    pt, pipe, eos = _case(res, "pass-through"), _case(res, "pipeline"), _case(res, "exactly-once")
    if pipe:
        ratio = stream.get("ratio_to_pass_through")
        add(
            f"stream, {_n(stream.get('events'))} events / {_n(stream.get('routes'))} routes",
            f"{_n(pipe['events_per_s'])} events/s",
            f"pass-through {_n(pt.get('events_per_s'))} events/s (ratio {_n(ratio, 3)})",
            ">= 0.5 of pass-through, >= 50,000 events/s",
            None if ratio is None else (ratio >= 0.5 and pipe["events_per_s"] >= 50_000),
        )
        for rate, target in ((10_000.0, True), (2_000.0, False)):
            p, b = _phase(pipe, rate), _phase(pt, rate)
            if not p:
                continue
            met = None
            if target and p.get("p50_ms") is not None and p.get("p99_ms") is not None:
                met = p["p50_ms"] <= 10 and p["p99_ms"] <= 50
            add(
                f"produce -> verdict at {_n(rate)} events/s (refits during it: "
                f"{_n(p.get('models_installed'))})",
                f"p50 {_n(p.get('p50_ms'))} ms, p99 {_n(p.get('p99_ms'))} ms",
                f"pass-through p50 {_n(b.get('p50_ms'))} ms, p99 {_n(b.get('p99_ms'))} ms",
                "p50 <= 10 ms, p99 <= 50 ms" if target else "",
                met,
            )
    if eos:
        add(
            "stream, exactly-once",
            f"{_n(eos['events_per_s'])} events/s",
            f"at-least-once {_n(pipe.get('events_per_s'))} events/s "
            f"(ratio {_n(stream.get('exactly_once_ratio_to_at_least_once'), 3)})",
        )
    plain = _http(res, "plain")
    for case, label in (
        ("sentinel", "each event forwarded to Kafka (the default)"),
        ("no-forward", "`SENTINEL_HTTP_FORWARD=false`"),
        (
            "http-process",
            "HTTP in a process of its own (`SENTINEL_HTTP_PROCESS=true`), each event forwarded",
        ),
    ):
        s = _http(res, case)
        if not s:
            continue
        ratio = s.get("ratio_to_plain")
        met = ratio >= 0.6 and s["p99_ms"] <= 10 if ratio else None
        add(
            f"`POST /analyze-flow`, c=32, warmed routes, Kafka loop running; {label}",
            f"{_n(s['requests_per_s'])} req/s; p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms",
            f"plain aiohttp {_n(plain.get('requests_per_s'))} req/s, p99 {plain.get('p99_ms')} ms "
            f"(ratio {_n(ratio, 3)})",
            ">= 0.6 of plain, p99 <= 10 ms",
            met,
        )
    owner, other = _http(res, "owner"), _http(res, "non-owner")
    if other:
        add(
            "`POST /analyze-flow` on a member that asks the route's owner",
            f"{_n(other['requests_per_s'])} req/s; p50 {other['p50_ms']} ms, "
            f"p99 {other['p99_ms']} ms",
            f"the owner {_n(owner.get('requests_per_s'))} req/s, p99 {owner.get('p99_ms')} ms "
            f"(ratio {_n(other.get('ratio_to_owner'), 3)})",
        )
    fit = (res.get("quality") or {}).get("fit")
    if fit:
        add(
            f"fit, 100 trees on a {_n(fit['rows'])}-row window (median of {fit['fits']})",
            f"{fit['fit_ms_median']} ms",
            f"sklearn's bare `IsolationForest.fit` {fit['sklearn_fit_ms_median']} ms",
            "<= 100 ms",
            fit["fit_ms_median"] <= 100,
        )
    kdd = _telemetry(res, "http")
    if kdd:
        text, within = _vs_reference(res, "http")
        rps = kdd["ours"]["rows_per_s"]
        add(
            "`evaluate` KDD99 http: rows/s; ROC AUC / AUPRC",
            f"{_n(rps)} rows/s; {text}",
            f"batch IsolationForest {kdd['batch']['roc_auc']:.4f} / {kdd['batch']['auprc']:.3f}",
            f">= 10,000 rows/s, quality not below the reference by more than {QUALITY_TOLERANCE}",
            None if within is None else (rps >= 10_000 and within),
        )
    syn = _telemetry(res, "synthetic")
    if syn:
        text, within = _vs_reference(res, "synthetic")
        add(
            f"`evaluate` synthetic ({_n(syn['rows'])} events): ROC AUC / AUPRC",
            text,
            f"batch IsolationForest {syn['batch']['roc_auc']:.4f} / {syn['batch']['auprc']:.3f}",
            f"not below the reference by more than {QUALITY_TOLERANCE}",
            within,
        )
    for r in (res.get("rewarm") or {}).get("rows", []):
        a, c = r["restore"], r["cold"]
        add(
            f"re-warm {_n(r['routes'])} routes (every route's verdict from a model)",
            f"from the state changelog {_n(a['all_models_s'], 1)} s "
            f"({a['first_verdict_from_model']} of {r['routes']} first verdicts from a model)",
            f"cold {_n(c['all_models_s'], 1)} s",
        )
    by_routes = (res.get("scaling") or {}).get("by_routes", [])
    if by_routes:
        big, small = by_routes[-1], by_routes[0]
        add(
            f"cost at {_n(big['routes'])} routes",
            f"{_n(big['events_per_s'])} events/s, RSS {_n(big['rss_end_mib'])} MiB",
            f"{_n(small['routes'])} routes: {_n(small['events_per_s'])} events/s, "
            f"RSS {_n(small['rss_end_mib'])} MiB",
        )
    mem = res.get("memory")
    if isinstance(mem, dict) and len(mem.get("rows", [])) == 3:
        rest, warm, flood = mem["rows"]
        add(
            f"memory of the `run` process tree: {warm['phase'][6:]}, then {flood['phase'][6:]}",
            f"RSS {_n(warm['rss_mib'])} MiB, then {_n(flood['rss_mib'])} MiB "
            f"(detector {_n(flood['detector_bytes_mib'])} of {_n(flood['budget_mib'])} MiB; "
            f"{_n(flood['models'])} models kept)",
            f"at rest {_n(rest['rss_mib'])} MiB",
        )
    ref = res.get("refit")
    if isinstance(ref, dict) and "model_bytes_compiled" in ref:
        add(
            "one model (100 trees)",
            f"{_n(ref['model_bytes_compiled'])} bytes",
            f"scikit-learn's pickled IsolationForest {_n(ref['model_bytes_sklearn_pickle'])} bytes",
        )
    return rows


def headline_table(res: dict[str, Any], with_met: bool = True) -> str:
    rows = headline(res)
    if with_met:
        lines = [
            "| benchmark | sentinel-stream | baseline, same run | target | met |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['name']} | {r['ours']} | {r['base']} | {r['target']} | {r['met']} |"
            for r in rows
        ]
    else:
        lines = [
            "| benchmark | sentinel-stream | baseline, same run | target |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {r['name']} | {r['ours']} | {r['base']} | {r['target']} |" for r in rows]
    return "\n".join(lines)


# -- sections ------------------------------------------------------------------------------


def stream_section(res: dict[str, Any]) -> list[str]:
    s = res.get("stream")
    out = ["## Stream (bench/stream_throughput.py)", ""]
    if _failed(s):
        return [*out, f"({_failed(s)})"]
    assert s is not None
    out += [
        f"{_n(s['events'])} events over {_n(s.get('routes'))} routes pre-loaded into "
        f"{s['partitions']} partitions; events/s from the broker's timestamps of the first "
        "and last output record. Every case uses the same clients and commit cadence.",
        "",
        "| case | events/s | complete | models after the throughput phase |",
        "| --- | ---: | --- | ---: |",
    ]
    for r in s["rows"]:
        out.append(
            f"| {r['case']} | {_n(r['events_per_s'])} | {r['complete']} | "
            f"{_n(r.get('models_after_throughput'))} |"
        )
    out += [
        "",
        f"pipeline / pass-through: **{_n(s.get('ratio_to_pass_through'), 3)}**; exactly-once / "
        f"at-least-once: **{_n(s.get('exactly_once_ratio_to_at_least_once'), 3)}**; with an "
        "LLM configured that never answers / without: "
        f"**{_n(s.get('llm_hanging_ratio_to_pipeline'), 3)}**.",
        "",
        "### Latency against offered rate",
        "",
        "Events produced at each rate into the warmed consumer (a load generator in its own "
        "process); latency = the output record's broker timestamp minus the input record's "
        "producer timestamp. `models` = models the pipeline installed during the phase "
        "(refits running). Exactly-once latency is to the broker's append; a "
        "`read_committed` reader sees the verdict when its transaction commits (up to "
        "`SENTINEL_COMMIT_INTERVAL_MS` later).",
        "",
        "| case | offered/s | sent/s | verdicts | p50 ms | p99 ms | max ms | models |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in s["rows"]:
        for p in r["latency"]:
            out.append(
                f"| {r['case']} | {_n(p['rate_per_s'])} | {_n(p['sent_rate_per_s'])} | "
                f"{_n(p['verdicts'])} | {_n(p['p50_ms'])} | {_n(p['p99_ms'])} | "
                f"{_n(p['max_ms'])} | {_n(p['models_installed'])} |"
            )
    warm = s.get("warm_up") or []
    if warm:
        out += [
            "",
            "Before the runs above, each case ran once on the same broker at the headline "
            "rate, and was thrown away: a broker's first minutes of each kind of traffic "
            "are slower while its JVM warms up, for every case alike. Those first runs:",
            "",
            "| case (first run on the broker) | events/s | p50 ms | p99 ms | max ms | models |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for w in warm:
            out.append(
                f"| {w['case']} | {_n(w['events_per_s'])} | {_n(w['p50_ms'])} | "
                f"{_n(w['p99_ms'])} | {_n(w['max_ms'])} | {_n(w['models_installed'])} |"
            )
    return out


def profile_section(res: dict[str, Any]) -> list[str]:
    p = res.get("profile")
    out = ["## Where the Kafka loop's time goes (bench/stage_profile.py, py-spy)", ""]
    if _failed(p):
        return [*out, f"({_failed(p)})"]
    assert p is not None
    c, w = p["cpu"], p["wall"]
    out += [
        f"The pipeline (production settings) on {_n(p['events'])} pre-loaded events over "
        f"{_n(p['routes'])} routes, `py-spy record` attached at {p['sample_rate_hz']} Hz once "
        "the loop had its partitions, two runs: the loop thread's samples on the CPU "
        f"({_n(c['samples'])}; {_n(c['events_per_s'])} events/s under the profiler), and all "
        f"of its samples, waits for the broker included ({_n(w['samples'])}; "
        f"{_n(w['events_per_s'])} events/s). Each sample counts for the stage of its "
        "innermost frame that names one (rules in `bench/stage_profile.py`; `other` grows "
        "when code moves where no rule looks).",
        "",
        stage_profile.render(p),
    ]
    g = c.get("gc")
    if g:
        out += [
            "",
            f"Garbage collections during the on-CPU run: {_n(g['collections'])}, "
            f"{g['seconds']:.3f} s in all (the service freezes start-up's heap and collects "
            "the young generation every 10,000 net allocations: `sentinel_stream/process.py`, "
            "`settle_heap`).",
        ]
    return out


def http_section(res: dict[str, Any]) -> list[str]:
    h = res.get("http")
    out = ["## HTTP (bench/http_load.py, wrk, concurrency 32)", ""]
    if _failed(h):
        return [*out, f"({_failed(h)})"]
    assert h is not None
    out += [
        "| case | requests/s | p50 ms | p99 ms | vs plain | non-2xx | server CPU µs per "
        "request: HTTP thread / other Python threads / librdkafka |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in h["rows"]:
        cpu = r.get("cpu_us_per_request")
        split = (
            " / ".join(str(cpu.get(k, 0)) for k in ("http", "python", "librdkafka")) if cpu else "-"
        )
        out.append(
            f"| {r['case']} | {_n(r['requests_per_s'])} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{_n(r.get('ratio_to_plain'), 3)} | {r['non_2xx']} | {split} |"
        )
    other = _http(res, "non-owner")
    out += [
        "",
        "`plain` parses the JSON and answers; `sentinel` is `sentinel-stream run` (scoring "
        "by the warmed routes' models, forwarding each event to Kafka, the Kafka loop "
        "learning them); `no-forward` is the same with `SENTINEL_HTTP_FORWARD=false` "
        "(routes warmed through Kafka): the difference is what forwarding costs on cores "
        "shared with wrk and the broker; `http-process` is `sentinel` with "
        "`SENTINEL_HTTP_PROCESS=true` (HTTP served from a process of its own, answering "
        "from its replica of the state topic; the Kafka loop, in the other process, "
        "learns the forwarded events); `v1` calls sklearn's `score_samples` per request.",
        "",
        "The CPU column is each server process's threads' CPU time during the run "
        "divided by the requests answered: the HTTP thread is the process's main thread "
        "(its event loop), the other Python threads are chiefly the Kafka loop (which, "
        "with forwarding, scores and learns every forwarded event), librdkafka's are its "
        "own. The HTTP thread and the Kafka loop share one interpreter lock: their sum "
        "bounds the requests/s one process can serve. For `http-process`, the HTTP thread "
        "is the HTTP process's main thread, and the other Python threads are both "
        "processes' others (the Kafka loop's in the first).",
    ]
    if other:
        out += [
            "",
            "`owner` / `non-owner`: two members, routes whose partition the first owns; wrk "
            "against the owner, then against the other member, which passes each request to "
            f"the owner over HTTP: **{_n(other.get('ratio_to_owner'), 3)}** of the owner's "
            f"requests/s. How the non-owner's requests were answered: "
            f"{other.get('owner_answers')}.",
        ]
    return out


def scaling_section(res: dict[str, Any]) -> list[str]:
    s = res.get("scaling")
    out = ["## Cost against routes and window size (bench/scaling.py)", ""]
    if _failed(s):
        return [*out, f"({_failed(s)})"]
    assert s is not None
    out += [
        "Each point a fresh process running the pipeline over a pre-loaded topic (routes "
        "uniformly mixed; `SENTINEL_MAX_ROUTES` raised to the route count). RSS includes the "
        "refit worker process; idle = before the first event.",
        "",
        scaling.render(s),
    ]
    return out


def rewarm_section(res: dict[str, Any]) -> list[str]:
    r = res.get("rewarm")
    out = ["## Re-warm: from the state changelog against cold (bench/rewarm.py)", ""]
    if _failed(r):
        return [*out, f"({_failed(r)})"]
    assert r is not None
    rate = r["rows"][0]["rate_per_s"] if r["rows"] else None
    out += [
        f"`sentinel-stream run` taught N routes until each had a model, stopped (SIGTERM), "
        f"then started again with events arriving at {_n(rate)}/s round-robin over the "
        "routes: on the same topics (its state restored from `SENTINEL_STATE_TOPIC`), and on "
        "a fresh state topic (cold). Seconds from the process's start.",
        "",
        rewarm.render(r["rows"]),
    ]
    return out


def chaos_section(res: dict[str, Any]) -> list[str]:
    c = res.get("chaos")
    out = ["## Chaos: what each fault cost (tests/chaos)", ""]
    if _failed(c):
        return [*out, f"({_failed(c)})"]
    assert c is not None
    out += [
        f"`{c['command'].strip()}` ({c['mode']}, {c['seconds']} s; "
        f"{c.get('summary') or 'no summary'}).",
        "",
        chaos_table.render(c),
        "",
        "At full length (`bash scripts/chaos.sh`: a 60 s outage, twice the events), the last "
        "run: [chaos_full.md](chaos_full.md).",
    ]
    return out


def refit_section(res: dict[str, Any]) -> list[str]:
    rf = res.get("refit")
    q = res.get("quality") or {}
    out = ["## Fits", ""]
    fit = q.get("fit")
    if fit:
        out += [
            f"One fit of 100 trees on {_n(fit['rows'])} rows (the service's whole fit: trees, "
            f"layout, out-of-bag scores, tail threshold), median of {fit['fits']}: "
            f"**{fit['fit_ms_median']} ms**; sklearn's bare `IsolationForest.fit` on the same "
            f"rows, interleaved: {fit['sklearn_fit_ms_median']} ms.",
            "",
        ]
    if _failed(rf):
        return [*out, f"({_failed(rf)})"]
    assert rf is not None
    out += [
        f"One model: {_n(rf['model_bytes_compiled'])} bytes compiled, sklearn's pickled "
        f"IsolationForest {_n(rf['model_bytes_sklearn_pickle'])} bytes. Scoring a batch of 200 "
        "events over 20 routes while routes refit:",
        "",
        "| refits run | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k, v in rf["batch200_ms"].items():
        out.append(f"| {k.replace('_', ' ')} | {v['p50']} | {v['p99']} | {v['max']} |")
    return out


def quality_section(res: dict[str, Any]) -> list[str]:
    q = res.get("quality")
    out = ["## Detection quality (bench/detection_quality.py)", ""]
    if _failed(q):
        return [*out, f"({_failed(q)})"]
    assert q is not None
    out += [
        "Each set streamed the way `sentinel-stream evaluate` streams it (every row scored "
        "before it is learnt from, fits inline, seed 1: the same figures every run), beside "
        "a batch IsolationForest fit on every row (it sees the future; flags at >= 0.5) and "
        "River's HalfSpaceTrees (>= 0.8), in the same arrival order.",
        "",
    ]
    body = detection_quality.render({**q, "fit": None})
    out.append(body.replace("\n## ", "\n### ").replace("## ", "### ", 1))
    ref = q.get("reference") or {}
    if ref:
        out += [
            "",
            f"Reference figures ({ref.get('source', '')}): "
            + "; ".join(
                f"{k} {v['roc_auc']:.4f} / {v['auprc']:.3f} ({_n(v['rows'])} rows)"
                for k, v in ref.get("sets", {}).items()
            )
            + f". A change of more than {QUALITY_TOLERANCE} in ROC AUC or AUPRC counts as one.",
        ]
    v1 = [t for t in q.get("telemetry", []) if "v1" in t]
    if v1:
        out += ["", "The v1 service's design on a slice (it scores ~30 rows/s):", ""]
        out += [
            "| set | rows | ROC AUC | AUPRC | recall | FPR | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for t in v1:
            r = t["v1"]
            if "roc_auc" in r:
                out.append(
                    f"| {t['set']} | {_n(r['rows'])} | {r['roc_auc']:.4f} | {r['auprc']:.3f} | "
                    f"{r['recall']:.2f} | {100 * r['fpr']:.2f} % | {r.get('note', '')} |"
                )
    return out


def memory_section(res: dict[str, Any]) -> list[str]:
    m = res.get("memory")
    if m is None:
        return []
    out = ["## Memory (bench/memory.py)", ""]
    if _failed(m):
        return [*out, f"({_failed(m)})"]
    if isinstance(m, dict) and isinstance(m.get("markdown"), str):
        return [*out, m["markdown"]]
    import json

    return [*out, "```json", json.dumps(m, indent=1)[:6000], "```"]


def provenance(res: dict[str, Any]) -> str:
    """Which run measured which sections, oldest first: a run with ``--only`` keeps the
    other sections of the runs before it, so one report can hold several runs' figures.
    A section measured before runs were recorded per section is the whole result's."""
    m = res["machine"]
    runs: dict[tuple[str, str, str], list[str]] = {}
    recorded = res.get("provenance", {})
    for name in res.get("seconds", {}):  # the sections, in the order they first ran
        if name not in res:
            continue
        p = recorded.get(
            name, {"command": res["command"], "commit": res["commit"], "date": m["date"]}
        )
        runs.setdefault((p["date"], p["commit"], p["command"]), []).append(name)
    return "; then ".join(
        f"`{command}` at commit {commit} ({date}: {', '.join(names)})"
        for (date, commit, command), names in sorted(runs.items())
    )


def render(res: dict[str, Any], images: list[str]) -> str:
    m = res["machine"]
    took = ", ".join(f"{k} {v:.0f} s" for k, v in res.get("seconds", {}).items())
    lines = [
        "# sentinel-stream benchmark report",
        "",
        f"Measured by {provenance(res)}. {res['mode'].capitalize()} sizes; "
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python "
        f"{m['python']}; load average at the start of the latest run "
        f"{', '.join(map(str, m.get('load_average_at_start', [])))} (other work on the "
        "machine shows there). Broker, load generators and service share the machine: compare "
        "ratios, not absolute figures, across runs. Every figure sits next to its baseline "
        f"from the same run. Sections took: {took}.",
        "",
        "## The figures the issues ask for",
        "",
        headline_table(res),
        "",
    ]
    for part in (
        stream_section,
        profile_section,
        scaling_section,
        http_section,
        rewarm_section,
        chaos_section,
        refit_section,
        quality_section,
        memory_section,
    ):
        got = part(res)
        if got:
            lines += [*got, ""]
    lines += ["## Charts", ""] + [f"![{i}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, res: dict[str, Any], report: str) -> bool:
    """Rewrite the README's benchmark table between its markers; whether it was there."""
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    m = res["machine"]
    table = (
        f"{headline_table(res, with_met=False)}\n\n"
        f"From {provenance(res)}; {m['cores']} cores (broker, load and service on one "
        f"machine); the whole report: [{report}]({report})."
    )
    readme.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}", encoding="utf-8")
    return True
