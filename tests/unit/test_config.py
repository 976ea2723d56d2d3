"""Settings from the environment: defaults, validation naming the variable, Kafka passthrough."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sentinel_stream.config import ConfigError, Settings, env_name, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SENTINEL_* or OLLAMA_* variable of the calling shell leaks into a test."""
    for key in list(os.environ):
        if key.upper().startswith(("SENTINEL_", "OLLAMA_")):
            monkeypatch.delenv(key)
    return monkeypatch


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return str(info.value)


def test_defaults_match_the_product_contract() -> None:
    s = load_settings()
    assert s.port == 8000
    assert s.host == "127.0.0.1"
    assert s.history_max == 1000
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.group_id == "sentinel-stream"
    assert s.input_topic == "telemetry"
    assert s.output_topic == "telemetry.verdicts"
    assert s.dlq_topic == "telemetry.dlq"
    assert s.create_topics is False
    assert s.anomalies_only is False
    assert s.ollama_host is None and s.ollama_model is None
    assert s.kafka_properties_file is None
    assert s.kafka_common() == {"bootstrap.servers": "127.0.0.1:9092"}


def test_environment_sets_the_v1_services_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_PORT", "9123")
    monkeypatch.setenv("SENTINEL_HISTORY_MAX", "500")
    monkeypatch.setenv("SENTINEL_CONTAMINATION", "0.05")
    monkeypatch.setenv("SENTINEL_KAFKA_BOOTSTRAP", "b1:9092,b2:9092")
    monkeypatch.setenv("SENTINEL_GROUP_ID", "g1")
    monkeypatch.setenv("SENTINEL_INPUT_TOPIC", "in")
    monkeypatch.setenv("SENTINEL_OUTPUT_TOPIC", "out")
    monkeypatch.setenv("SENTINEL_DLQ_TOPIC", "dead")
    monkeypatch.setenv("SENTINEL_CREATE_TOPICS", "true")
    s = load_settings()
    assert (s.port, s.history_max, s.contamination) == (9123, 500, 0.05)
    assert s.kafka_bootstrap == "b1:9092,b2:9092"
    assert (s.group_id, s.input_topic, s.output_topic, s.dlq_topic) == ("g1", "in", "out", "dead")
    assert s.create_topics is True
    assert s.kafka_common()["bootstrap.servers"] == "b1:9092,b2:9092"


def test_ollama_host_and_model_are_read_without_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:11434")
    monkeypatch.setenv("OLLAMA_MODEL", "llama3.2:1b")
    s = load_settings()
    assert s.ollama_host == "http://127.0.0.1:11434"
    assert s.ollama_model == "llama3.2:1b"
    assert env_name("ollama_host") == "OLLAMA_HOST"
    assert env_name("ollama_model") == "OLLAMA_MODEL"
    assert env_name("history_max") == "SENTINEL_HISTORY_MAX"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SENTINEL_PORT": "abc"}, "SENTINEL_PORT"),
        ({"SENTINEL_PORT": "70000"}, "SENTINEL_PORT"),
        ({"SENTINEL_HISTORY_MAX": "3"}, "SENTINEL_HISTORY_MAX"),
        ({"SENTINEL_CONTAMINATION": "0.9"}, "SENTINEL_CONTAMINATION"),
        ({"SENTINEL_CONTAMINATION": "0"}, "SENTINEL_CONTAMINATION"),
        ({"SENTINEL_CREATE_TOPICS": "maybe"}, "SENTINEL_CREATE_TOPICS"),
        ({"SENTINEL_GROUP_ID": ""}, "SENTINEL_GROUP_ID"),
        ({"SENTINEL_LOG_FORMAT": "xml"}, "SENTINEL_LOG_FORMAT"),
        ({"SENTINEL_REFIT_WORKERS": "-1"}, "SENTINEL_REFIT_WORKERS"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    msg = config_error(monkeypatch, **env)
    assert variable in msg
    # One clear line, not a pydantic dump with its documentation links.
    assert "\n" not in msg and "errors.pydantic.dev" not in msg


def test_bad_value_message_shows_what_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = config_error(monkeypatch, SENTINEL_PORT="abc")
    assert msg.startswith("invalid configuration: SENTINEL_PORT:")
    assert "'abc'" in msg


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = config_error(monkeypatch, SENTINEL_PORT="abc", SENTINEL_CONTAMINATION="0.9")
    assert "SENTINEL_PORT" in msg and "SENTINEL_CONTAMINATION" in msg


def test_more_models_than_routes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = config_error(monkeypatch, SENTINEL_MAX_ROUTES="10", SENTINEL_MAX_MODELS="11")
    assert "SENTINEL_MAX_MODELS" in msg and "SENTINEL_MAX_ROUTES" in msg
    monkeypatch.setenv("SENTINEL_MAX_MODELS", "10")
    assert load_settings().max_models == 10


def test_min_history_above_history_max_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = config_error(monkeypatch, SENTINEL_HISTORY_MAX="64", SENTINEL_MIN_HISTORY="65")
    assert "SENTINEL_MIN_HISTORY" in msg and "SENTINEL_HISTORY_MAX" in msg


def test_the_http_process_needs_a_fixed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = config_error(monkeypatch, SENTINEL_HTTP_PROCESS="true", SENTINEL_PORT="0")
    assert "SENTINEL_PORT" in msg and "SENTINEL_HTTP_PROCESS" in msg
    monkeypatch.setenv("SENTINEL_HTTP_PROCESS", "false")
    assert load_settings().port == 0


def test_overrides_are_validated_like_the_environment() -> None:
    with pytest.raises(ConfigError, match="SENTINEL_PORT"):
        load_settings(port=-1)
    assert load_settings(kafka_bootstrap="h:1").kafka_bootstrap == "h:1"


def test_kafka_opt_variables_become_librdkafka_properties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENTINEL_KAFKA_OPT_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SENTINEL_KAFKA_OPT_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("SENTINEL_KAFKA_OPT_SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("SENTINEL_KAFKA_OPT_SOME__PROP_NAME", "x")
    conf = load_settings().kafka_common()
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "ssl.ca.location": "/etc/ca.pem",
        "some_prop.name": "x",
    }


def test_kafka_common_takes_an_explicit_environment() -> None:
    s = Settings()
    conf = s.kafka_common({"SENTINEL_KAFKA_OPT_CLIENT_ID": "abc", "UNRELATED": "1"})
    assert conf == {"bootstrap.servers": "127.0.0.1:9092", "client.id": "abc"}


def test_properties_file_is_read_and_variables_win(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    props = tmp_path / "client.properties"
    props.write_text(
        "# Confluent Cloud style\n"
        "! also a comment\n"
        "\n"
        "security.protocol=SSL\n"
        "  sasl.mechanism = PLAIN  \n"
        "sasl.jaas.config=org.apache.kafka.PlainLoginModule required username='u' pass='p=q';\n"
        "client.id=from-file\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("SENTINEL_KAFKA_PROPERTIES_FILE", str(props))
    monkeypatch.setenv("SENTINEL_KAFKA_OPT_SECURITY_PROTOCOL", "SASL_SSL")
    s = load_settings()
    assert s.kafka_properties_file == props
    conf = s.kafka_common()
    assert conf["security.protocol"] == "SASL_SSL"  # the variable wins over the file
    assert conf["sasl.mechanism"] == "PLAIN"
    assert conf["sasl.jaas.config"].endswith("pass='p=q';")
    assert conf["client.id"] == "from-file"
    assert conf["bootstrap.servers"] == "127.0.0.1:9092"
    assert not any(k.startswith(("#", "!")) for k in conf)


def test_unreadable_or_malformed_properties_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SENTINEL_KAFKA_PROPERTIES_FILE", str(tmp_path / "missing.properties"))
    with pytest.raises(ConfigError, match="SENTINEL_KAFKA_PROPERTIES_FILE"):
        load_settings().kafka_common()
    bad = tmp_path / "bad.properties"
    bad.write_text("security.protocol=SSL\njust-a-key\n", encoding="utf-8")
    monkeypatch.setenv("SENTINEL_KAFKA_PROPERTIES_FILE", str(bad))
    with pytest.raises(ConfigError, match=r"SENTINEL_KAFKA_PROPERTIES_FILE.*:2"):
        load_settings().kafka_common()


def test_every_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    missing = [env_name(f) for f in Settings.model_fields if f"`{env_name(f)}`" not in readme]
    assert missing == [], f"add these to the README's configuration table: {missing}"


def test_refit_workers_default_to_what_the_cpus_spare() -> None:
    from sentinel_stream.config import MAX_DEFAULT_REFIT_WORKERS, default_refit_workers

    assert [default_refit_workers(c) for c in (1, 2, 3, 5, 64)] == [1, 1, 2, 4, 4]
    assert MAX_DEFAULT_REFIT_WORKERS == 4
    assert load_settings().refit_workers == default_refit_workers()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_container_cpu_quota_caps_the_cpus(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    from sentinel_stream.config import usable_cpus

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    want = affinity if expected is None else min(affinity, expected)
    assert usable_cpus(tmp_path) == want


def test_the_memory_budget_is_read_in_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    from sentinel_stream.detect.params import DetectorParams

    assert load_settings().memory_max_mb == 384
    monkeypatch.setenv("SENTINEL_MEMORY_MAX_MB", "64")
    assert DetectorParams.from_settings(load_settings()).max_bytes == 64 * 2**20
    assert "SENTINEL_MEMORY_MAX_MB" in config_error(monkeypatch, SENTINEL_MEMORY_MAX_MB="8")
