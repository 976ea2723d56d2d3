"""Settings from the environment, validated once at start.

Every setting is an environment variable, described once here (the README's table
repeats the descriptions). A bad value stops the process with a
message that names the variable, never a traceback. The v1 service's names
(SENTINEL_PORT, SENTINEL_HISTORY_MAX, SENTINEL_CONTAMINATION, OLLAMA_HOST, OLLAMA_MODEL)
keep their meaning.

Any librdkafka property reaches the Kafka clients in one of two ways:
``SENTINEL_KAFKA_OPT_<NAME>`` (``SENTINEL_KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL`` becomes
``security.protocol``: lower-cased, ``_`` read as ``.``, ``__`` as a literal ``_``), or a
Java-style properties file named by ``SENTINEL_KAFKA_PROPERTIES_FILE``. The variables win
over the file.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sentinel_stream.detect.params import DEFAULT_MEMORY_MAX_MB
from sentinel_stream.detect.params import DEFAULTS as _D

KAFKA_OPT_PREFIX = "SENTINEL_KAFKA_OPT_"


MAX_DEFAULT_REFIT_WORKERS = 4
"""At most this many refit workers by default: each holds its own ~150 MiB (numpy,
scikit-learn), and a few keep thousands of routes refit (see the README)."""


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity, capped by the container's CPU quota
    (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``/``cfs_period_us``), which the
    affinity does not show (a pod limited to 2 CPUs on a 64-core node sees 64)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    quota = _cpu_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(int(quota), 1))
    return cpus


def _cpu_quota(cgroup: Path) -> float | None:
    """The cgroup CPU quota in CPUs, or None without one."""
    try:
        text = (cgroup / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def default_refit_workers(cpus: int | None = None) -> int:
    """SENTINEL_REFIT_WORKERS when unset: what the machine can spare beside the consumer
    loop (one CPU), at least 1, at most :data:`MAX_DEFAULT_REFIT_WORKERS` (1 on 2 CPUs)."""
    n = usable_cpus() if cpus is None else cpus
    return min(max(n - 1, 1), MAX_DEFAULT_REFIT_WORKERS)


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable and what is wrong."""


class Settings(BaseSettings):
    """Every knob of the service. Field descriptions become the README's table."""

    model_config = SettingsConfigDict(
        env_prefix="SENTINEL_", case_sensitive=False, extra="ignore", frozen=True
    )

    # HTTP side server
    host: str = Field("127.0.0.1", description="address the HTTP side server binds")
    port: Annotated[int, Field(ge=0, le=65535, description="port of the HTTP side server")] = 8000
    http_body_max: Annotated[
        int, Field(ge=256, description="largest accepted HTTP body, bytes")
    ] = 64 * 1024

    advertised_url: str | None = Field(
        None,
        description="the HTTP address other members reach this one at (default: "
        "http://<SENTINEL_HOST, or the host name for 0.0.0.0>:<port>)",
    )
    http_owner_timeout_s: Annotated[
        float,
        Field(
            ge=0,
            le=5,
            description="how long /analyze-flow waits for the route's owning member; "
            "0 answers every route locally",
        ),
    ] = 0.25
    partitioner: Literal["murmur2_random", "consistent_random"] = Field(
        "murmur2_random",
        description="how the telemetry producers partition by route: murmur2_random (Java "
        "clients' default) or consistent_random (librdkafka's CRC32)",
    )

    http_forward: bool = Field(
        True, description="produce /analyze-flow events to the input topic, so they train models"
    )
    http_process: bool = Field(
        False,
        description="serve HTTP from a process of its own, answering from a replica of the "
        "state topic's models (the Kafka loop and the HTTP door then share no interpreter "
        "lock)",
    )

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="bootstrap servers, host:port,...")
    group_id: str = Field("sentinel-stream", min_length=1, description="consumer group id")
    input_topic: str = Field("telemetry", min_length=1, description="topic of telemetry events")
    output_topic: str = Field(
        "telemetry.verdicts", min_length=1, description="topic verdicts are published to"
    )
    dlq_topic: str = Field("telemetry.dlq", min_length=1, description="dead-letter topic")
    state_topic: str = Field(
        "telemetry.state",
        min_length=1,
        description="compacted changelog of per-route state (as many partitions as the input)",
    )
    members_topic: str = Field(
        "telemetry.members",
        min_length=1,
        description="compacted topic where members advertise their HTTP address and "
        "partitions (one partition)",
    )
    state_interval_s: Annotated[
        float,
        Field(gt=0, description="a learning route's state is written at most this often"),
    ] = 30.0
    state_max_bytes: Annotated[
        int,
        Field(
            ge=65536,
            le=100_000_000,
            description="largest state record written (a larger one is skipped, counted)",
        ),
    ] = 4 * 1024 * 1024
    create_topics: bool = Field(
        False, description="create missing topics at start (else stop, naming them)"
    )
    topic_partitions: Annotated[int, Field(ge=1, description="partitions of created topics")] = 6
    topic_replication: Annotated[
        int, Field(ge=1, description="replication factor of created topics")
    ] = 1
    kafka_properties_file: Path | None = Field(
        None, description="Java-style properties file of extra librdkafka settings"
    )
    anomalies_only: bool = Field(False, description="publish only anomaly verdicts")
    exactly_once: bool = Field(
        False,
        description="each member's consume-score-produce is a Kafka transaction: a "
        "read_committed reader sees each verdict once across crashes and rebalances",
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=200,
        description="this member's name (default: the host name): its transactional id "
        "with SENTINEL_EXACTLY_ONCE; distinct per member, stable across its restarts",
    )
    produce_queue_max: Annotated[
        int,
        Field(
            ge=1000,
            le=10_000_000,
            description="records the loop's producer holds unacknowledged; consumption "
            "pauses at half of it (counted)",
        ),
    ] = 100_000
    side_queue_max: Annotated[
        int,
        Field(
            ge=100,
            le=1_000_000,
            description="forwarded HTTP events and LLM explanations waiting for the broker; "
            "beyond, dropped (counted; /analyze-flow says forwarded: false)",
        ),
    ] = 20_000

    # Pipeline
    batch_max: Annotated[int, Field(ge=1, le=100_000, description="records per consume call")] = (
        2000
    )
    poll_timeout_ms: Annotated[int, Field(ge=1, description="longest wait of one consume call")] = (
        100
    )
    batch_linger_ms: Annotated[
        int, Field(ge=0, le=1000, description="wait for more records after the first of a batch")
    ] = 0
    commit_interval_ms: Annotated[
        int, Field(ge=10, description="how often processed offsets are committed")
    ] = 1000
    shutdown_timeout_s: Annotated[
        float, Field(gt=0, description="longest graceful drain on SIGTERM/SIGINT")
    ] = 30.0

    # Per-route state
    history_max: Annotated[
        int, Field(ge=16, le=1_000_000, description="per-route window size, events")
    ] = _D.history_max
    max_routes: Annotated[
        int, Field(ge=1, description="routes tracked at once; least recently seen evicted")
    ] = _D.max_routes
    max_models: Annotated[
        int, Field(ge=1, description="trained models kept at once; least recently seen dropped")
    ] = _D.max_models
    memory_max_mb: Annotated[
        int,
        Field(
            ge=16,
            le=1_048_576,
            description="MiB the detector may hold (windows, samples, models, baselines); "
            "beyond it the routes seen least often are evicted, and a new route is "
            "admitted only if seen more often than the route it would push out (both "
            "counted)",
        ),
    ] = DEFAULT_MEMORY_MAX_MB

    # Detector
    contamination: Annotated[
        float,
        Field(gt=0, lt=0.5, description="expected share of anomalies; sets each route's threshold"),
    ] = _D.contamination
    score_floor: Annotated[
        float, Field(ge=0, le=1, description="no route's model threshold goes below this score")
    ] = _D.score_floor
    learn_margin: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="events scored this far above the threshold are kept out of training",
        ),
    ] = _D.learn_margin
    min_history: Annotated[
        int | None,
        Field(
            ge=8,
            description=f"events before a route's first model (default: min({_D.min_history}, "
            "window))",
        ),
    ] = None
    refit_every: Annotated[
        int, Field(ge=1, description="new events in a route's window before a refit is due")
    ] = _D.refit_every
    refit_min_interval_s: Annotated[
        float, Field(ge=0, description="least seconds between two refits of one route")
    ] = _D.refit_min_interval_s
    refit_workers: int = Field(
        default_factory=lambda: default_refit_workers(),
        ge=0,
        le=64,
        description="refit processes; 0 refits inline (tests, evaluate). Default: the CPUs "
        "this process may use (its affinity, capped by a cgroup CPU quota) less one for "
        f"the consumer loop, at least 1 and at most {MAX_DEFAULT_REFIT_WORKERS}",
    )
    refit_nice: Annotated[
        int,
        Field(
            ge=0,
            le=19,
            description="how much lower the refit processes' CPU priority is than the "
            "service's (nice): fits wait, the consumer loop's verdicts do not",
        ),
    ] = 10
    n_estimators: Annotated[int, Field(ge=1, le=1000, description="trees per model")] = (
        _D.n_estimators
    )
    max_samples: Annotated[int, Field(ge=2, le=4096, description="rows per tree")] = _D.max_samples
    rule_factor: Annotated[
        float, Field(gt=1, description="times a route's typical value that rules flag")
    ] = 20.0
    error_burst: Annotated[
        int, Field(ge=1, description="errors in one request that rules flag as a burst")
    ] = 5
    seed: int | None = Field(None, description="random seed of model fits (reproducible runs)")

    # LLM (the v1 service's names)
    ollama_host: str | None = Field(
        None,
        validation_alias=AliasChoices("OLLAMA_HOST", "SENTINEL_OLLAMA_HOST"),
        description="LLM server for explanations (OLLAMA_HOST)",
    )
    ollama_model: str | None = Field(
        None,
        validation_alias=AliasChoices("OLLAMA_MODEL", "SENTINEL_OLLAMA_MODEL"),
        description="LLM model name (OLLAMA_MODEL)",
    )

    llm_api: Literal["ollama", "openai"] = Field(
        "ollama", description="the LLM server's API: Ollama's, or OpenAI-compatible"
    )
    llm_api_key: SecretStr | None = Field(None, description="bearer token for the LLM API")
    llm_timeout_s: Annotated[float, Field(gt=0, description="longest LLM call")] = 10.0
    llm_concurrency: Annotated[int, Field(ge=1, le=64, description="LLM calls at once")] = 2
    llm_queue_max: Annotated[
        int, Field(ge=1, description="anomalies waiting for the LLM; more are skipped, counted")
    ] = 100
    llm_cache_max: Annotated[int, Field(ge=0, description="explanations cached by signature")] = (
        1000
    )
    llm_breaker_failures: Annotated[
        int, Field(ge=1, description="failures in a row that open the LLM circuit breaker")
    ] = 5
    llm_breaker_reset_s: Annotated[
        float, Field(gt=0, description="seconds the breaker stays open before a trial call")
    ] = 30.0
    llm_http_budget_s: Annotated[
        float, Field(ge=0, le=2, description="how long /analyze-flow waits for the LLM")
    ] = 1.0
    llm_max_tokens: Annotated[int, Field(ge=8, le=2048, description="LLM answer length")] = 120

    # Metrics
    anomaly_rate_window_s: Annotated[
        float,
        Field(ge=10, le=86_400, description="span of sentinel_anomaly_rate (v1 gauge), seconds"),
    ] = 300.0

    # Logging
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="json when not on a terminal with auto"
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        if self.max_models > self.max_routes:
            raise ValueError("SENTINEL_MAX_MODELS must not exceed SENTINEL_MAX_ROUTES")
        if self.min_history is None:
            object.__setattr__(self, "min_history", min(_D.min_history, self.history_max))
        elif self.min_history > self.history_max:
            raise ValueError("SENTINEL_MIN_HISTORY must not exceed SENTINEL_HISTORY_MAX")
        if self.http_process and self.port == 0:
            raise ValueError(
                "SENTINEL_PORT must be a fixed port with SENTINEL_HTTP_PROCESS=true (the "
                "HTTP process listens on it, and the member advertises it)"
            )
        return self

    @property
    def first_fit_after(self) -> int:
        """Events before a route's first model (SENTINEL_MIN_HISTORY, resolved at start)."""
        assert self.min_history is not None, "resolved by _check_bounds"
        return self.min_history

    @property
    def llm_configured(self) -> bool:
        return bool(self.ollama_host and self.ollama_model)

    def kafka_common(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The librdkafka settings every client gets: bootstrap, then the file, then variables."""
        conf: dict[str, str] = {"bootstrap.servers": self.kafka_bootstrap}
        if self.kafka_properties_file is not None:
            conf.update(_read_properties(self.kafka_properties_file))
        conf.update(kafka_opts_from_env(os.environ if environ is None else environ))
        return conf


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return first if isinstance(first, str) else field.upper()
    return "SENTINEL_" + field.upper()


def kafka_opts_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """librdkafka properties from ``SENTINEL_KAFKA_OPT_*`` variables."""
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.upper().startswith(KAFKA_OPT_PREFIX) and len(key) > len(KAFKA_OPT_PREFIX):
            raw = key[len(KAFKA_OPT_PREFIX) :].lower()
            out[raw.replace("__", "\0").replace("_", ".").replace("\0", "_")] = value
    return out


def _read_properties(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"SENTINEL_KAFKA_PROPERTIES_FILE: cannot read {path}: {exc}") from exc
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(
                f"SENTINEL_KAFKA_PROPERTIES_FILE: {path}:{lineno}: expected key=value"
            )
        out[key.strip()] = value.strip()
    return out


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings, turning pydantic's errors into one clear message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            name = env_name(str(loc[0])) if loc and str(loc[0]) in Settings.model_fields else ""
            msg = err.get("msg", "invalid")
            given = err.get("input")
            shown = f" (got {given!r})" if name and not isinstance(given, dict) else ""
            lines.append(f"{name}: {msg}{shown}" if name else str(msg))
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
