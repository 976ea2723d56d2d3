"""A real Kafka broker for integration tests.

``broker_for_tests()`` is a context manager yielding a bootstrap-servers string.
It picks the first of:

a. ``KAFKA_BOOTSTRAP_SERVERS`` from the environment: an existing broker is used
   as is; nothing is started or stopped.
b. A Docker engine that answers a ping: testcontainers' ``KafkaContainer`` (KRaft)
   is started for the duration of the block. Its image defaults to testcontainers'
   Confluent image (override with ``KAFKA_TEST_IMAGE``, a ``confluentinc/cp-kafka``
   tag: the testcontainers wrapper relies on that image's start scripts).
c. ``deploy/kafka/local-kafka.sh``: Apache Kafka from the Maven Central jars (needs
   Java 17+ and Maven), on free loopback ports and in its own state directory
   (``<cache>/sentinel-stream/kafka-test-<port>``), so that a dev broker on 9092
   is left alone. The resolved classpath is shared with the dev broker through
   ``SENTINEL_KAFKA_CACHE``. The broker is stopped and its state removed on exit.

Set ``SENTINEL_TEST_KAFKA=local`` to skip (b) even when Docker is available.

Usage from a pytest fixture::

    @pytest.fixture(scope="session")
    def kafka_bootstrap() -> Iterator[str]:
        try:
            with broker_for_tests() as bootstrap:
                yield bootstrap
        except KafkaUnavailableError as exc:
            pytest.skip(str(exc))
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["KafkaUnavailableError", "broker_for_tests"]

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_KAFKA_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "local-kafka.sh"

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
BACKEND_ENV = "SENTINEL_TEST_KAFKA"
IMAGE_ENV = "KAFKA_TEST_IMAGE"

DOCKER_PING_TIMEOUT_S = 2
_DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
CONTAINER_START_TIMEOUT_S = 120
# Covers a first run that has to download the Kafka jars with Maven, plus the
# script's own KAFKA_START_TIMEOUT (default 90 s) for the broker to come up.
LOCAL_START_TIMEOUT_S = 600
LOCAL_STOP_TIMEOUT_S = 90
# local-kafka.sh exit code when a requested port is already taken.
_EXIT_PORT_IN_USE = 4
_PORT_ATTEMPTS = 3


class KafkaUnavailableError(RuntimeError):
    """No broker could be provided (no Docker engine, and the local runner failed)."""


def broker_for_tests() -> contextlib.AbstractContextManager[str]:
    """Provide a running Kafka broker for the ``with`` block; yields its bootstrap servers."""
    return _broker_for_tests()


@contextlib.contextmanager
def _broker_for_tests() -> Iterator[str]:
    configured = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if configured:
        yield configured
        return
    backend = os.environ.get(BACKEND_ENV, "auto").strip().lower()
    if backend not in ("auto", "docker", "local"):
        raise ValueError(f"{BACKEND_ENV} must be auto, docker or local, not {backend!r}")
    if backend == "docker" or (backend == "auto" and _docker_available()):
        with _container_broker() as bootstrap:
            yield bootstrap
    else:
        with _local_broker() as bootstrap:
            yield bootstrap


# --------------------------------------------------------------------------- docker


def _docker_available() -> bool:
    """True if the docker SDK and testcontainers are installed and an engine answers."""
    if importlib.util.find_spec("docker") is None:
        return False
    if importlib.util.find_spec("testcontainers") is None:
        return False
    if not os.environ.get("DOCKER_HOST") and not Path(_DEFAULT_DOCKER_SOCKET).exists():
        return False  # the common no-Docker case, decided without touching the SDK
    import docker  # type: ignore[import-untyped,unused-ignore]

    # docker-py leaks the socket of a failed unix-socket connect; keep that
    # ResourceWarning away from test runs that turn warnings into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
            try:
                return bool(client.ping())
            finally:
                client.close()
        # No socket, daemon down, permission denied (requests' errors are
        # OSErrors), malformed DOCKER_HOST...
        except (docker.errors.DockerException, OSError, ValueError):
            return False
        finally:
            gc.collect()


@contextlib.contextmanager
def _container_broker() -> Iterator[str]:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.14 has no community namespace
        from testcontainers.kafka import KafkaContainer  # type: ignore[no-redef,unused-ignore]

    image = os.environ.get(IMAGE_ENV, "").strip()
    container = KafkaContainer(image) if image else KafkaContainer()
    container = container.with_kraft()
    # Same contract as production: the application creates its topics.
    container.with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    container.start(timeout=CONTAINER_START_TIMEOUT_S)
    try:
        yield container.get_bootstrap_server()
    finally:
        container.stop()


# --------------------------------------------------------------------------- local


def _cache_base() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg) / "sentinel-stream"
    try:
        return Path.home() / ".cache" / "sentinel-stream"
    except RuntimeError:  # no HOME and no passwd entry
        return Path(tempfile.gettempdir()) / "sentinel-stream"


def _free_ports(count: int) -> list[int]:
    """Distinct currently-free TCP ports on 127.0.0.1 (all held open while choosing)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _script_env(port: int, controller_port: int, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KAFKA_PORT"] = str(port)
    env["KAFKA_CONTROLLER_PORT"] = str(controller_port)
    env["SENTINEL_KAFKA_HOME"] = str(home)
    # Share the Maven-resolved classpath with the dev broker (default state dir).
    env["SENTINEL_KAFKA_CACHE"] = (
        os.environ.get("SENTINEL_KAFKA_CACHE", "").strip()
        or os.environ.get("SENTINEL_KAFKA_HOME", "").strip()
        or str(_cache_base() / "kafka")
    )
    # Lets the script confirm readiness with confluent_kafka from this interpreter.
    env.setdefault("PYTHON", sys.executable)
    return env


def _run_script(
    command: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(LOCAL_KAFKA_SCRIPT), *command],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def _local_broker() -> Iterator[str]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise KafkaUnavailableError("no Docker engine and no java on PATH for local-kafka.sh")
    bootstrap, env, home = _start_local()
    try:
        yield bootstrap
    finally:
        _stop_local(env, home)


def _start_local() -> tuple[str, dict[str, str], Path]:
    """Start local-kafka.sh on fresh ports; returns (bootstrap, script env, state dir)."""
    attempt = 0
    while True:
        attempt += 1
        port, controller_port = _free_ports(2)
        home = _cache_base() / f"kafka-test-{port}"
        env = _script_env(port, controller_port, home)
        try:
            result = _run_script(["start"], env, LOCAL_START_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            _stop_local(env, home, keep_logs=True)
            raise KafkaUnavailableError(
                f"local-kafka.sh start did not finish within {LOCAL_START_TIMEOUT_S}s; "
                f"state kept in {home}"
            ) from exc
        if result.returncode == _EXIT_PORT_IN_USE and attempt < _PORT_ATTEMPTS:
            continue  # lost a race for the ports we picked: pick again
        bootstrap = f"127.0.0.1:{port}"
        reported = result.stdout.strip().splitlines()
        if result.returncode == 0 and reported and reported[-1] == bootstrap:
            return bootstrap, env, home
        # A timed-out start leaves the JVM running: always stop it.
        _stop_local(env, home, keep_logs=True)
        raise KafkaUnavailableError(
            f"local-kafka.sh start failed (exit {result.returncode}, "
            f"stdout {reported[-1:]}, expected {bootstrap}); state kept in {home}\n"
            f"{result.stderr[-4000:]}"
        )


def _stop_local(env: dict[str, str], home: Path, *, keep_logs: bool = False) -> None:
    """Stop the broker (SIGTERM, then SIGKILL inside the script) and drop its state."""
    result = _run_script(["stop", "--clean"], env, LOCAL_STOP_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(
            f"local-kafka.sh stop failed (exit {result.returncode}): {result.stderr[-2000:]}"
        )
    if not keep_logs:
        shutil.rmtree(home, ignore_errors=True)
