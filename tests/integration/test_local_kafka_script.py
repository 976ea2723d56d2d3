"""deploy/kafka/local-kafka.sh when a start cannot come up: it fails with the node's
log tail and leaves no JVM behind, for one node and for a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kafka_broker import local_kafka_env, run_local_kafka

pytestmark = pytest.mark.kafka


def jvms_of(home: Path) -> list[int]:
    """Pids of live processes whose command line names a file under ``home``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(home).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue  # exited while we looked
    return pids


def assert_nothing_left(env: dict[str, str], home: Path) -> None:
    assert jvms_of(home) == []
    status = run_local_kafka(["status"], env, timeout=30)
    assert status.returncode == 3
    assert "running" not in status.stdout
    assert run_local_kafka(["stop", "--clean"], env, timeout=30).returncode == 0


@pytest.mark.parametrize("nodes", [1, 3])
def test_start_that_times_out_kills_what_it_launched(nodes: int, tmp_path: Path) -> None:
    home = tmp_path / "kafka"
    env = local_kafka_env(nodes, home)
    env["KAFKA_START_TIMEOUT"] = "1"  # no JVM serves within a second

    result = run_local_kafka(["start"], env, timeout=120)

    assert result.returncode == 1, result.stderr
    assert "did not serve clients" in result.stderr
    assert "\nlocal-kafka: ---- " in result.stderr  # the log tail (or: nothing logged yet)
    assert "killed the JVM(s) this start launched" in result.stderr
    assert result.stdout.strip() == ""  # no bootstrap address: nothing serves
    assert_nothing_left(env, home)


def test_cluster_node_that_crashes_on_start_fails_the_start_with_its_log(
    tmp_path: Path,
) -> None:
    home = tmp_path / "kafka"
    env = local_kafka_env(3, home)
    # Storage node 2 cannot read: its JVM exits during startup.
    (home / "node-2" / "data").mkdir(parents=True)
    (home / "node-2" / "data" / "meta.properties").write_text("version=99\nnode.id=2\n")

    result = run_local_kafka(["start"], env, timeout=120)

    assert result.returncode == 1, result.stderr
    assert "node 2 exited during startup" in result.stderr
    assert "Unknown meta.properties version number 99" in result.stderr
    assert "killed the JVM(s) this start launched" in result.stderr
    assert result.stdout.strip() == ""
    assert_nothing_left(env, home)
