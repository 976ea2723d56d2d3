"""What the v1 service's users rely on, over real HTTP against `sentinel-stream run`:
its smoke script's grep of the raw JSON, and its metric names with their v1 meaning."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kafka import wait_for
from tests.support.service import Running, http_get, running_service, scrape

pytestmark = pytest.mark.kafka


def post_raw(port: int, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/analyze-flow",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def as_json_dumps_writes_it(raw: bytes) -> bool:
    """True when ``raw`` is byte for byte what ``json.dumps`` writes by default."""
    return raw == json.dumps(json.loads(raw)).encode()


@pytest.fixture(scope="module")
def svc(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_service(bootstrap, tmp_path_factory.mktemp("v1"), "v1compat") as service:
        yield service


def test_the_v1_smoke_scripts_grep_finds_ok(svc: Running, tmp_path: Path) -> None:
    body = b'{"latency": 120, "input_length": 300, "errors": 0, "route": "/smoke/ok"}'
    status, raw = post_raw(svc.port, body)
    assert status == 200
    # What the v1 smoke script does: grep the raw answer, spaces and all.
    answer = tmp_path / "answer.json"
    answer.write_bytes(raw)
    grep = subprocess.run(["grep", "-q", '"status": "OK"', str(answer)], timeout=10)
    assert grep.returncode == 0, raw
    assert as_json_dumps_writes_it(raw), raw


def test_threat_errors_health_and_ready_are_spaced_the_same_way(svc: Running) -> None:
    evil = b'{"latency": 25000, "input_length": 50000, "errors": 15, "route": "/smoke/evil"}'
    status, raw = post_raw(svc.port, evil)
    assert status == 200 and b'"status": "THREAT_DETECTED"' in raw
    assert b'"action": "freeze"' in raw
    assert as_json_dumps_writes_it(raw), raw
    status, raw = post_raw(svc.port, b'{"latency": "slow"}')
    assert status == 422 and as_json_dumps_writes_it(raw), raw
    status, raw, _ = http_get(svc.port, "/health")
    assert status == 200 and b'"status": "healthy"' in raw and as_json_dumps_writes_it(raw)
    status, raw, _ = http_get(svc.port, "/ready")
    assert status == 200 and as_json_dumps_writes_it(raw), raw
    status, raw, _ = http_get(svc.port, "/nowhere")
    assert status == 404 and as_json_dumps_writes_it(raw), raw


def sample(text: str, prefix: str, default: float | None = None) -> float:
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    if default is not None:
        return default
    raise AssertionError(f"no sample {prefix!r} in /metrics")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def test_v1_metric_names_keep_their_meaning(svc: Running) -> None:
    before = scrape(svc.port)
    n_before = sample(before, 'sentinel_requests_total{endpoint="analyze-flow",method="post"}')
    for i in range(3):
        status, _ = post_raw(
            svc.port, b'{"latency": 90000, "input_length": 10, "errors": 40, "route": "/m%d"}' % i
        )
        assert status == 200
    # The forwarded events come back through Kafka as verdicts, in order (one partition):
    # the smoke tests' OK and THREAT events, then these three anomalies.
    wait_for(
        lambda: sample(scrape(svc.port), 'sentinel_anomalies_total{detector="rules"}', 0) >= 4,
        60,
        "the forwarded anomalies' Kafka verdicts",
    )
    text = scrape(svc.port)
    for name, kind in {
        "sentinel_requests_total": "counter",
        "sentinel_request_duration_seconds": "histogram",
        "sentinel_anomaly_rate": "gauge",
        "sentinel_memory_mb": "gauge",
        "sentinel_model_fits_total": "counter",
        "sentinel_health_check_fails_total": "counter",
    }.items():
        assert f"# TYPE {name} {kind}" in text, name
    after = sample(text, 'sentinel_requests_total{endpoint="analyze-flow",method="post"}')
    assert after == n_before + 3
    assert sample(text, "sentinel_request_duration_seconds_count") >= 3
    assert sample(text, 'sentinel_request_duration_seconds_bucket{le="5.0"}') >= 3
    assert sample(text, "sentinel_model_fits_total") == sample(text, "sentinel_refits_total")
    assert sample(text, "sentinel_health_check_fails_total") == 0
    # The share of this service's Kafka verdicts that were anomalies (all are recent).
    rate = sample(text, "sentinel_anomaly_rate")
    scored = sample(text, 'sentinel_events_valid_total{door="kafka"}')
    flagged = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("sentinel_anomalies_total{")
    )
    assert scored >= 5 and flagged >= 4
    assert rate == pytest.approx(flagged / scored)
    memory = sample(text, "sentinel_memory_mb")
    assert memory == pytest.approx(rss_mib(svc.proc.popen.pid), rel=0.15)
