"""Running `sentinel-stream run` as a real process for tests: env, start, HTTP probes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET on the side server; 4xx/5xx are answers too."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def analyze(port: int, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /analyze-flow`` with ``body``; its JSON answer (a 200 expected)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/analyze-flow",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body, ctype = http_get(port, path)
    assert ctype.startswith("application/json"), (path, ctype)
    data: dict[str, Any] = json.loads(body)
    return status, data


def topic_names(prefix: str) -> dict[str, str]:
    return {
        "SENTINEL_INPUT_TOPIC": f"{prefix}.telemetry",
        "SENTINEL_OUTPUT_TOPIC": f"{prefix}.verdicts",
        "SENTINEL_DLQ_TOPIC": f"{prefix}.dlq",
        "SENTINEL_STATE_TOPIC": f"{prefix}.state",
        "SENTINEL_MEMBERS_TOPIC": f"{prefix}.members",
    }


def existing_topics(bootstrap: str) -> dict[str, int]:
    """Topic name -> partition count, as the broker reports it."""
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15)
    return {name: len(t.partitions) for name, t in md.topics.items()}


def service_env(bootstrap: str, prefix: str, port: int, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("SENTINEL_", "OLLAMA_"))
    }
    env.update(
        {
            "SENTINEL_KAFKA_BOOTSTRAP": bootstrap,
            "SENTINEL_GROUP_ID": f"{prefix}-group",
            **topic_names(prefix),
            "SENTINEL_HOST": "127.0.0.1",
            "SENTINEL_PORT": str(port),
            "SENTINEL_REFIT_WORKERS": "0",
            "SENTINEL_LOG_FORMAT": "json",
            "SENTINEL_COMMIT_INTERVAL_MS": "200",
        }
    )
    env.update(extra)
    return env


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(
                f"service exited with {self.popen.returncode}:\n{self.stderr()[-3000:]}"
            )
        return True


def start(env: dict[str, str], tmp_path: Path, name: str = "service") -> Proc:
    stderr_path = tmp_path / f"{name}.stderr.log"
    with stderr_path.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "sentinel_stream", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return Proc(popen, stderr_path)


def ready(proc: Proc, port: int) -> bool:
    proc.alive()
    try:
        return http_get(port, "/ready", timeout=2)[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False  # not listening yet


def scrape(port: int) -> str:
    status, body, ctype = http_get(port, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version="), ctype
    return body.decode("utf-8")


@dataclass
class Running:
    """A service started by :func:`running_service`, ready to serve."""

    proc: Proc
    port: int
    env: dict[str, str]


@contextmanager
def running_service(bootstrap: str, tmp_path: Path, name: str, **extra: str) -> Iterator[Running]:
    """``sentinel-stream run`` on its own (created) topics, ready; killed at exit."""
    from tests.support.kafka import wait_for

    port = free_port()
    env = service_env(
        bootstrap,
        f"{name}{port}",
        port,
        **{"SENTINEL_CREATE_TOPICS": "true", "SENTINEL_TOPIC_PARTITIONS": "1", **extra},
    )
    proc = start(env, tmp_path, name)
    try:
        wait_for(lambda: ready(proc, port), START_TIMEOUT_S, "/ready")
        yield Running(proc, port, env)
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(10)
