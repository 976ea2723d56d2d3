"""/metrics passes promtool, and a real Prometheus server scrapes the service."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kafka import event, produce, wait_for
from tests.support.prometheus import api, prometheus, scrape_config
from tests.support.service import Proc, running_service, scrape

pytestmark = pytest.mark.kafka

V1_LINT_EXCEPTIONS = {"sentinel_memory_mb metric names should not contain abbreviated units"}


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
    # The one name promtool's lint objects to is a contract: the v1 service's
    # sentinel_memory_mb (PRODUCT.md), kept so that its alert rules work unchanged.
    problems = {line for line in (result.stdout + result.stderr).splitlines() if line.strip()}
    assert problems <= V1_LINT_EXCEPTIONS, problems
    ours = "\n".join(line for line in text.splitlines() if "sentinel_memory_mb" not in line)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=ours + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_real_prometheus_scrapes_the_service(running: tuple[Proc, int], tmp_path: Path) -> None:
    with prometheus(scrape_config(running[1]), tmp_path) as web_port:

        def target_up() -> bool:
            try:
                targets = api(web_port, "targets")["activeTargets"]
            except OSError:
                return False
            return any(t["health"] == "up" for t in targets)

        def value_seen() -> bool:
            result = api(web_port, "query", query="sentinel_records_consumed_total")["result"]
            return bool(result) and float(result[0]["value"][1]) >= 2

        wait_for(target_up, 60, "Prometheus to see the target up")
        wait_for(value_seen, 30, "Prometheus to have scraped sentinel_records_consumed_total")
