"""/metrics passes promtool, and a real Prometheus server scrapes the service."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kafka import event, produce, wait_for
from tests.support.service import Proc, free_port, running_service, scrape

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def running(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, int]]:
    with running_service(bootstrap, tmp_path_factory.mktemp("prom"), "prom") as svc:
        produce(bootstrap, svc.env["SENTINEL_INPUT_TOPIC"], [(b"/p", event("/p")), (b"/p", b"{x")])
        wait_for(
            lambda: 'sentinel_dead_letters_total{reason="invalid_json"} 1.0' in scrape(svc.port),
            60,
            "the dead letter to be counted",
        )
        yield svc.proc, svc.port


def test_promtool_check_metrics_passes(running: tuple[Proc, int]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/system-deps.sh installs Debian's prometheus"
    text = scrape(running[1])
    families = {
        line.split()[2] for line in text.splitlines() if line.startswith("# TYPE sentinel_")
    }
    assert len(families) >= 12, families
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_real_prometheus_scrapes_the_service(running: tuple[Proc, int], tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: scripts/system-deps.sh installs it"
    port = running[1]
    web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: sentinel\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=log,
        stderr=log,
    )

    def api(path: str) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}", timeout=5) as resp:
            data: dict[str, object] = json.loads(resp.read())
            return data

    def target_up() -> bool:
        try:
            targets = api("/api/v1/targets")["data"]["activeTargets"]  # type: ignore[index]
        except OSError:
            return False
        return any(t["health"] == "up" for t in targets)

    def value_seen() -> bool:
        query = "/api/v1/query?query=sentinel_records_consumed_total"
        result = api(query)["data"]["result"]  # type: ignore[index]
        return bool(result) and float(result[0]["value"][1]) >= 2

    try:
        wait_for(target_up, 60, "Prometheus to see the target up")
        wait_for(value_seen, 30, "Prometheus to have scraped sentinel_records_consumed_total")
    finally:
        prom.terminate()
        prom.wait(20)
        log.close()
