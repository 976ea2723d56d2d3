"""A hanging or failing LLM never slows or stops verdicts (service on a real broker)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import cast

import orjson
import pytest

from tests.support.kafka import event, produce, read_all, wait_for
from tests.support.llm_standins import stand_in
from tests.support.service import running_service, scrape

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("mode", ["hang", "error", "garbage"])
def test_verdicts_flow_and_http_keeps_its_budget(bootstrap: str, tmp_path: Path, mode: str) -> None:
    with stand_in(mode, delay_s=0) as llm:
        env_extra = {
            "OLLAMA_HOST": llm.url,
            "OLLAMA_MODEL": "smol",
            "SENTINEL_LLM_API": "openai",
            "SENTINEL_LLM_TIMEOUT_S": "5",
            "SENTINEL_LLM_HTTP_BUDGET_S": "0.5",
            "SENTINEL_LLM_BREAKER_FAILURES": "3",
            "SENTINEL_LLM_BREAKER_RESET_S": "60",
        }
        with running_service(bootstrap, tmp_path, "llm" + mode, **env_extra) as svc:
            port, env = svc.port, svc.env
            n = 2000
            records = [
                (f"/l{i % 4}".encode(), event(f"/l{i % 4}", event_id=f"v{i}")) for i in range(n)
            ]
            # Cold anomalies on every route: each one is handed to the (broken) LLM.
            records += [
                (f"/l{i}".encode(), event(f"/l{i}", latency=90000.0, errors=40, event_id=f"a{i}"))
                for i in range(4)
            ]
            produce(bootstrap, env["SENTINEL_INPUT_TOPIC"], records)
            got = read_all(bootstrap, env["SENTINEL_OUTPUT_TOPIC"], lambda m: len(m) >= n + 4, 60)
            verdicts = [orjson.loads(cast(bytes, m.value())) for m in got]
            assert len({v["event_id"] for v in verdicts}) == n + 4
            anomalies = [v for v in verdicts if v["event_id"].startswith("a")]
            assert all(v["is_anomaly"] and v["explanation"]["source"] == "rules" for v in anomalies)
            assert not [v for v in verdicts if v.get("kind") == "explanation"]

            body = json.dumps({"latency": 95000, "input_length": 10, "errors": 30, "route": "/h"})
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/analyze-flow",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            started = time.monotonic()
            with urllib.request.urlopen(req, timeout=10) as resp:
                answer = json.loads(resp.read())
            elapsed = time.monotonic() - started
            assert answer["status"] == "THREAT_DETECTED" and "reason_source" not in answer
            assert answer["reason"].startswith("high latency") or "latency" in answer["reason"]
            assert elapsed < 0.5 + 0.5
            outcome = {"hang": "timeout", "error": "error", "garbage": "invalid"}[mode]

            def counted() -> bool:
                text = scrape(port)
                return f'outcome="{outcome}"' in text and "sentinel_llm_breaker_state" in text

            wait_for(counted, 30, f"LLM {outcome} outcomes in /metrics")


def test_explanation_record_follows_its_verdict(bootstrap: str, tmp_path: Path) -> None:
    with stand_in("ok") as llm:
        env_extra = {
            "OLLAMA_HOST": llm.url,
            "OLLAMA_MODEL": "smol",
        }
        with running_service(bootstrap, tmp_path, "llmok", **env_extra) as svc:
            env = svc.env
            produce(
                bootstrap,
                env["SENTINEL_INPUT_TOPIC"],
                [(b"/e", event("/e", event_id=f"n{i}")) for i in range(20)]
                + [(b"/e", event("/e", latency=80000.0, event_id="boom"))],
            )
            got = read_all(
                bootstrap,
                env["SENTINEL_OUTPUT_TOPIC"],
                lambda ms: any(
                    orjson.loads(cast(bytes, m.value())).get("kind") == "explanation" for m in ms
                ),
                60,
            )
    records = [(m.offset(), m.key(), orjson.loads(cast(bytes, m.value()))) for m in got]
    verdict = next(r for r in records if r[2]["event_id"] == "boom" and r[2]["kind"] == "verdict")
    expl = next(r for r in records if r[2]["kind"] == "explanation")
    assert expl[2]["event_id"] == "boom" and expl[1] == b"/e" == verdict[1]
    assert expl[0] is not None and verdict[0] is not None  # consumed records have offsets
    assert expl[0] > verdict[0], "the explanation follows its verdict"
    assert expl[2]["explanation"]["source"] == "llm" and expl[2]["explanation"]["model"] == "smol"
    assert "\x07" not in expl[2]["explanation"]["text"]
    assert llm.last_request is not None and llm.last_request["model"] == "smol"
