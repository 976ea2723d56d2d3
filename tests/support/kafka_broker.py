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

A test that stops, kills or restarts brokers needs brokers of its own:
``private_cluster()`` (three nodes) and ``private_broker()`` (one) always start
``local-kafka.sh`` on fresh ports and yield a ``LocalKafka`` with the bootstrap string
and ``kill_node`` / ``stop_node`` / ``start_node``::

    with private_cluster() as cluster:
        victim = cluster.leader(topic, 0)
        cluster.kill_node(victim)
        ...
        cluster.start_node(victim)

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
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

__all__ = [
    "KafkaUnavailableError",
    "LocalKafka",
    "broker_for_tests",
    "local_kafka_env",
    "private_broker",
    "private_cluster",
    "run_local_kafka",
]

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
# local-kafka.sh exit codes: a node is stopped (status), a requested port is taken (start).
_EXIT_STOPPED = 3
_EXIT_PORT_IN_USE = 4
_PORT_ATTEMPTS = 3
# Lowest port handed to a private broker (well above the registered services).
_LOWEST_PORT = 20000


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


class LocalKafka:
    """A broker or cluster that one test owns: ``local-kafka.sh`` in its own state dir.

    Nodes are numbered from 1 (a single broker is node 1). The node commands block
    until the script is done: ``start_node`` returns once the node serves again,
    ``kill_node`` once the JVM is gone.
    """

    def __init__(self, env: dict[str, str], home: Path, addresses: list[str]) -> None:
        self.env = env
        self.home = home
        self.addresses = addresses
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated: what a client is configured with."""
        return ",".join(self.addresses)

    @property
    def nodes(self) -> list[int]:
        return list(range(1, len(self.addresses) + 1))

    def address(self, node: int) -> str:
        return self.addresses[self._index(node)]

    def kill_node(self, node: int) -> None:
        """SIGKILL the node: a crash, no clean shutdown."""
        self._node_command("kill-node", node, LOCAL_STOP_TIMEOUT_S)

    def stop_node(self, node: int) -> None:
        """Stop the node cleanly (SIGTERM; the script SIGKILLs after its own timeout)."""
        self._node_command("stop-node", node, LOCAL_STOP_TIMEOUT_S)

    def start_node(self, node: int) -> None:
        """Start the node again with its data; returns once it serves clients."""
        self._node_command("start-node", node, LOCAL_START_TIMEOUT_S)

    def running_nodes(self) -> set[int]:
        """The nodes whose JVM is alive, from ``local-kafka.sh status``."""
        result = run_local_kafka(["status"], self.env, LOCAL_STOP_TIMEOUT_S)
        if result.returncode not in (0, _EXIT_STOPPED):
            raise RuntimeError(f"local-kafka.sh status failed: {result.stderr[-2000:]}")
        lines = result.stdout.splitlines()
        if len(self.addresses) == 1:
            return {1} if lines and lines[0].startswith("running") else set()
        running = set()
        for line in lines:
            label, _, state = line.partition(": ")
            if label.startswith("node ") and state.startswith("running"):
                running.add(int(label.removeprefix("node ")))
        return running

    def leader(self, topic: str, partition: int) -> int:
        """The node leading ``partition`` of ``topic`` now (-1 while it has none)."""
        found = self._partition(topic, partition)
        return -1 if found is None else int(found.leader)

    def in_sync_replicas(self, topic: str, partition: int) -> set[int]:
        """The nodes in sync for ``partition`` (empty while the answering node has not
        yet learnt of the topic)."""
        found = self._partition(topic, partition)
        return set() if found is None else {int(n) for n in found.isrs}

    def _partition(self, topic: str, partition: int) -> Any:
        """The partition's metadata, or None when the node that answered does not know it
        yet: a topic just created reaches each node's metadata cache at its own moment, so
        callers that wait on a condition must see "not yet" rather than a KeyError."""
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        metadata = self._admin.list_topics(topic, timeout=10)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return None
        return found.partitions.get(partition)

    def _index(self, node: int) -> int:
        if not 1 <= node <= len(self.addresses):
            raise ValueError(f"no node {node}: nodes are 1..{len(self.addresses)}")
        return node - 1

    def _node_command(self, command: str, node: int, timeout: float) -> None:
        self._index(node)
        result = run_local_kafka([command, str(node)], self.env, timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"local-kafka.sh {command} {node} failed (exit {result.returncode}); "
                f"state in {self.home}\n{result.stderr[-4000:]}"
            )


def private_cluster(nodes: int = 3) -> contextlib.AbstractContextManager[LocalKafka]:
    """A cluster of its own for the ``with`` block: ``nodes`` combined broker+controller
    nodes on free loopback ports, replication 3 and min.insync.replicas 2 by default.

    Always local-kafka.sh (never KAFKA_BOOTSTRAP_SERVERS or Docker): a test that kills
    nodes must own them. The nodes are killed and their state removed on exit.
    """
    if nodes < 3:
        raise ValueError("a cluster has 3 or more nodes; use private_broker() for one")
    return _private_kafka(nodes)


def private_broker() -> contextlib.AbstractContextManager[LocalKafka]:
    """A single broker of its own for the ``with`` block (node 1), e.g. to stop and
    start it again; stopped and its state removed on exit.

    Unlike the session broker it runs C1-only, as cluster nodes do: it starts in about
    half the time, and a test that restarts it wants starts, not peak throughput.
    """
    return _private_kafka(1)


def _private_kafka(nodes: int) -> contextlib.AbstractContextManager[LocalKafka]:
    jvm_opts = f"-XX:TieredStopAtLevel=1 {os.environ.get('KAFKA_JVM_OPTS', '')}".strip()
    return _local_kafka(nodes, {"KAFKA_JVM_OPTS": jvm_opts})


@contextlib.contextmanager
def _local_broker() -> Iterator[str]:
    with _local_kafka(1, {}) as kafka:
        yield kafka.bootstrap


@contextlib.contextmanager
def _local_kafka(nodes: int, extra_env: dict[str, str]) -> Iterator[LocalKafka]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise KafkaUnavailableError("no java on PATH (nor JAVA_HOME) for local-kafka.sh")
    kafka = _start_local(nodes, extra_env)
    try:
        yield kafka
    finally:
        _stop_local(kafka)


def _cache_base() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg) / "sentinel-stream"
    try:
        return Path.home() / ".cache" / "sentinel-stream"
    except RuntimeError:  # no HOME and no passwd entry
        return Path(tempfile.gettempdir()) / "sentinel-stream"


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _free_ports(count: int) -> list[int]:
    """Distinct currently-free TCP ports on 127.0.0.1 (all held open while choosing).

    Taken below the kernel's ephemeral range where it leaves room: there no outgoing
    connection (the nodes' own connections to each other) can take the port of a node
    while that node is down, so a killed node can always start again on its ports.
    """
    low, _ = _ephemeral_port_range()
    below = range(_LOWEST_PORT, low) if low - _LOWEST_PORT >= 1000 else None
    rng = random.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count * 50):
            if len(ports) == count:
                break
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", rng.choice(below) if below else 0))
            except OSError:
                continue  # taken: draw again
            port = int(sock.getsockname()[1])
            if port not in ports:
                ports.append(port)
        if len(ports) < count:
            raise KafkaUnavailableError(f"found only {len(ports)} of {count} free ports")
        return ports


def _script_env(ports: list[int], controller_ports: list[int], home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_PORTS", "KAFKA_CONTROLLER_PORTS"):
        env.pop(name, None)
    env["KAFKA_NODES"] = str(len(ports))
    if len(ports) == 1:
        env["KAFKA_PORT"] = str(ports[0])
        env["KAFKA_CONTROLLER_PORT"] = str(controller_ports[0])
    else:
        env["KAFKA_PORTS"] = ",".join(map(str, ports))
        env["KAFKA_CONTROLLER_PORTS"] = ",".join(map(str, controller_ports))
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


def local_kafka_env(nodes: int, home: Path) -> dict[str, str]:
    """The environment for ``run_local_kafka``: ``nodes`` nodes on free ports, state in ``home``."""
    ports = _free_ports(2 * nodes)
    return _script_env(ports[:nodes], ports[nodes:], home)


def run_local_kafka(
    command: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``local-kafka.sh COMMAND...``; output captured, exit code not checked."""
    return subprocess.run(
        ["bash", str(LOCAL_KAFKA_SCRIPT), *command],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _start_local(nodes: int, extra_env: dict[str, str]) -> LocalKafka:
    """Start local-kafka.sh with ``nodes`` nodes on fresh ports, in a fresh state dir."""
    attempt = 0
    while True:
        attempt += 1
        picked = _free_ports(2 * nodes)
        ports, controller_ports = picked[:nodes], picked[nodes:]
        kind = "kafka-test" if nodes == 1 else "kafka-cluster-test"
        home = _cache_base() / f"{kind}-{ports[0]}"
        env = _script_env(ports, controller_ports, home) | extra_env
        kafka = LocalKafka(env, home, [f"127.0.0.1:{p}" for p in ports])
        try:
            result = run_local_kafka(["start"], kafka.env, LOCAL_START_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            _stop_local(kafka, keep_logs=True)
            raise KafkaUnavailableError(
                f"local-kafka.sh start did not finish within {LOCAL_START_TIMEOUT_S}s; "
                f"state kept in {home}"
            ) from exc
        if result.returncode == _EXIT_PORT_IN_USE and attempt < _PORT_ATTEMPTS:
            continue  # lost a race for the ports we picked: pick again
        reported = result.stdout.strip().splitlines()
        if result.returncode == 0 and reported and reported[-1] == kafka.bootstrap:
            return kafka
        # The script kills what a failed start launched; stop anyway, in case.
        _stop_local(kafka, keep_logs=True)
        raise KafkaUnavailableError(
            f"local-kafka.sh start failed (exit {result.returncode}, "
            f"stdout {reported[-1:]}, expected {kafka.bootstrap}); state kept in {home}\n"
            f"{result.stderr[-4000:]}"
        )


def _stop_local(kafka: LocalKafka, *, keep_logs: bool = False) -> None:
    """Stop every node and drop the state (kept: logs, when ``keep_logs``).

    A cluster's nodes are killed first: their data is deleted anyway, and a clean
    stop of a whole quorum waits seconds for controllers that are already gone.
    """
    if len(kafka.addresses) > 1:
        for node in kafka.nodes:
            run_local_kafka(["kill-node", str(node)], kafka.env, LOCAL_STOP_TIMEOUT_S)
    result = run_local_kafka(["stop", "--clean"], kafka.env, LOCAL_STOP_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(
            f"local-kafka.sh stop failed (exit {result.returncode}): {result.stderr[-2000:]}"
        )
    if not keep_logs:
        shutil.rmtree(kafka.home, ignore_errors=True)
