"""examples/sentinel-client.js, run by Node's test runner against a live service."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.service import running_service

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


def test_node_client_against_a_live_service(bootstrap: str, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "Node.js is part of the machine this project targets"
    with running_service(bootstrap, tmp_path, "node") as svc:
        result = subprocess.run(
            [node, "--test", str(ROOT / "examples" / "sentinel-client.test.js")],
            env={**os.environ, "SENTINEL_URL": f"http://127.0.0.1:{svc.port}"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "# pass 5" in out and "# skipped 0" in out, out
