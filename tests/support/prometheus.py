"""A real Prometheus server (Debian's `prometheus`, scripts/system-deps.sh) for tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.support.service import free_port


def scrape_config(target_port: int, job: str = "sentinel", interval: str = "1s") -> dict[str, Any]:
    """Scrape the service on 127.0.0.1:``target_port`` every ``interval``."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
        ],
    }


@contextmanager
def prometheus(config: dict[str, Any], tmp: Path) -> Iterator[int]:
    """Prometheus with ``config`` on a free loopback port (yielded); stopped at exit."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: scripts/system-deps.sh installs it"
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
        try:
            yield port
        finally:
            proc.terminate()
            proc.wait(20)


def api(port: int, path: str, **params: str) -> Any:
    """``/api/v1/<path>``'s data; fails unless Prometheus says success."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}{query}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]
