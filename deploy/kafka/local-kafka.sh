#!/usr/bin/env bash
# Run a real single-node Apache Kafka (KRaft, broker+controller) from the official
# jars on Maven Central, without Docker.
#
# Usage: local-kafka.sh start | stop [--clean] | restart | status | logs [-f] [N] | clean
#
# Environment:
#   KAFKA_PORT               PLAINTEXT broker listener on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT    KRaft controller listener on 127.0.0.1 (default 9093)
#   SENTINEL_KAFKA_HOME      state dir: server.properties, data/, logs/, kafka.pid
#                            (default $HOME/.cache/sentinel-stream/kafka)
#   SENTINEL_KAFKA_CACHE     where the resolved classpath is cached (default: SENTINEL_KAFKA_HOME);
#                            point several state dirs at one cache to resolve Maven only once
#   KAFKA_START_TIMEOUT      seconds to wait for the broker to accept clients (default 90)
#   KAFKA_STOP_TIMEOUT       seconds to wait after SIGTERM before SIGKILL (default 30)
#   KAFKA_HEAP_OPTS          JVM heap flags (default "-Xms256m -Xmx1g")
#   KAFKA_JVM_OPTS           extra JVM flags appended to the defaults
#   JAVA                     java executable (default: $JAVA_HOME/bin/java, else java on PATH)
#   MVN                      maven executable (default: mvn)
#   PYTHON                   python used for the optional confluent_kafka readiness probe
#                            (default: <repo>/.venv/bin/python if present, else python3)
#
# Exit codes: 0 ok / running, 1 error, 2 usage, 3 stopped (status only),
#             4 start refused because a port is taken by another process.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd -P)"
POM="$SCRIPT_DIR/pom.xml"
LOG4J_CONFIG="$SCRIPT_DIR/log4j2.yaml"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
HOST="127.0.0.1"

if [[ -n "${SENTINEL_KAFKA_HOME:-}" ]]; then
  STATE_DIR="$SENTINEL_KAFKA_HOME"
elif [[ -n "${HOME:-}" ]]; then
  STATE_DIR="$HOME/.cache/sentinel-stream/kafka"
else
  echo "local-kafka: neither SENTINEL_KAFKA_HOME nor HOME is set" >&2
  exit 1
fi
CACHE_DIR="${SENTINEL_KAFKA_CACHE:-$STATE_DIR}"
# Absolute paths: they are baked into server.properties and used to recognise our JVM.
[[ "$STATE_DIR" == /* ]] || STATE_DIR="$PWD/$STATE_DIR"
[[ "$CACHE_DIR" == /* ]] || CACHE_DIR="$PWD/$CACHE_DIR"

DATA_DIR="$STATE_DIR/data"
LOG_DIR="$STATE_DIR/logs"
SERVER_LOG="$LOG_DIR/server.log"
CONSOLE_LOG="$LOG_DIR/kafka.out"
PID_FILE="$STATE_DIR/kafka.pid"
SERVER_PROPERTIES="$STATE_DIR/server.properties"
CLUSTER_ID_FILE="$STATE_DIR/cluster.id"
CP_FILE="$CACHE_DIR/classpath.txt"
CP_SUM_FILE="$CACHE_DIR/classpath.pom.sha256"

STARTED_MARKER="Kafka Server started"

# Messages go to stderr; stdout carries only results (the bootstrap address, status).
log() { printf 'local-kafka: %s\n' "$*" >&2; }
err() { printf 'local-kafka: %s\n' "$*" >&2; }
die() { err "$*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

validate_port() { # name value
  if ! [[ "$2" =~ ^[0-9]+$ ]] || (( $2 < 1 || $2 > 65535 )); then
    die "$1 must be a TCP port number, got '$2'"
  fi
}

java_bin() {
  if [[ -n "${JAVA:-}" ]]; then
    echo "$JAVA"
  elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "java not found (need Java 17+; set JAVA or JAVA_HOME)"
  fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" >/dev/null 2>&1
}

# True if $1 is a live process that is *our* broker (guards against pid reuse).
is_our_kafka() {
  local pid="$1" cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *" kafka.Kafka $SERVER_PROPERTIES"* ]]
}

# Prints the pid of our running broker, or nothing. Removes a stale pid file.
running_pid() {
  local pid=""
  if [[ -f "$PID_FILE" ]]; then
    pid="$(tr -dc '0-9' <"$PID_FILE" || true)"
    if [[ -n "$pid" ]] && is_our_kafka "$pid"; then
      echo "$pid"
      return 0
    fi
    rm -f "$PID_FILE"
  fi
  # Pid file lost (e.g. deleted by hand) but the broker may still run: find it by
  # its unique server.properties path so it is not mistaken for a foreign process.
  local proc
  for proc in /proc/[0-9]*; do
    pid="${proc#/proc/}"
    if is_our_kafka "$pid"; then
      echo "$pid" >"$PID_FILE"
      echo "$pid"
      return 0
    fi
  done
  return 0
}

# Broker port of the running config (the env may differ from what it was started with).
configured_port() {
  sed -n "s|^listeners=PLAINTEXT://$HOST:\([0-9]*\),.*|\1|p" "$SERVER_PROPERTIES" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# Classpath (resolved by Maven from pom.xml, cached, refreshed when pom.xml changes)
# ---------------------------------------------------------------------------
classpath_valid() {
  [[ -s "$CP_FILE" && -f "$CP_SUM_FILE" ]] || return 1
  [[ "$(cat "$CP_SUM_FILE")" == "$(sha256sum "$POM" | cut -d' ' -f1)" ]] || return 1
  local jar
  local -a jars
  IFS=':' read -r -a jars <"$CP_FILE"
  for jar in "${jars[@]}"; do
    [[ -f "$jar" ]] || return 1 # e.g. ~/.m2 was wiped
  done
}

ensure_classpath() {
  if classpath_valid; then
    return 0
  fi
  local mvn="${MVN:-mvn}" tmp sum
  command -v "$mvn" >/dev/null 2>&1 || die "maven ('$mvn') not found; it is needed once to fetch the Kafka jars"
  mkdir -p "$CACHE_DIR"
  sum="$(sha256sum "$POM" | cut -d' ' -f1)"
  tmp="$(mktemp "$CACHE_DIR/classpath.txt.XXXXXX")"
  local mvn_log="$CACHE_DIR/maven.log"
  log "resolving Kafka classpath with Maven (pom.xml changed or no cache yet)..."
  if ! "$mvn" -B -Dstyle.color=never -f "$POM" \
      dependency:build-classpath -Dmdep.includeScope=runtime -Dmdep.outputFile="$tmp" \
      >"$mvn_log" 2>&1; then
    rm -f "$tmp"
    tail -n 40 "$mvn_log" >&2 || true
    die "maven failed to resolve $POM (full output: $mvn_log)"
  fi
  [[ -s "$tmp" ]] || { rm -f "$tmp"; die "maven produced an empty classpath (see $mvn_log)"; }
  chmod 644 "$tmp"
  # Atomic replace: several state dirs may share one cache.
  mv -f "$tmp" "$CP_FILE"
  echo "$sum" >"$CP_SUM_FILE.tmp.$$" && mv -f "$CP_SUM_FILE.tmp.$$" "$CP_SUM_FILE"
}

# ---------------------------------------------------------------------------
# Config + storage
# ---------------------------------------------------------------------------
write_server_properties() {
  local tmp="$SERVER_PROPERTIES.tmp.$$"
  cat >"$tmp" <<EOF
# Generated by deploy/kafka/local-kafka.sh on every start; edits are overwritten.
# Single-node KRaft: this process is both broker and (sole) controller.
process.roles=broker,controller
node.id=1
# Static voter set (kraft.version 0). Unlike controller.quorum.bootstrap.servers +
# 'format --standalone' it does not persist the controller endpoint in the metadata
# log, so KAFKA_CONTROLLER_PORT can change between runs on the same data dir.
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

log.dirs=$DATA_DIR

# Topics are created by the application, never implicitly.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# Internal topics must fit on one node.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0

# Small footprint for a dev box.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=33554432
log.segment.bytes=16777216
log.retention.hours=24
log.retention.bytes=268435456
log.retention.check.interval.ms=60000
EOF
  mv -f "$tmp" "$SERVER_PROPERTIES"
}

# Runs a one-shot Kafka tool class (StorageTool) with logging kept out of server.log.
run_tool() {
  local cp
  cp="$(cat "$CP_FILE")"
  "$(java_bin)" -Xmx256m \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
    -Dkafka.logs.dir="$LOG_DIR" -Dkafka.log.file=storage-tool.log \
    -cp "$cp" "$@"
}

ensure_formatted() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    return 0
  fi
  local cluster_id=""
  [[ -s "$CLUSTER_ID_FILE" ]] && cluster_id="$(cat "$CLUSTER_ID_FILE")"
  if [[ -z "$cluster_id" ]]; then
    cluster_id="$(run_tool kafka.tools.StorageTool random-uuid | tail -n 1 | tr -d '[:space:]')"
    [[ -n "$cluster_id" ]] || die "kafka.tools.StorageTool random-uuid printed nothing"
    echo "$cluster_id" >"$CLUSTER_ID_FILE"
  fi
  log "formatting KRaft storage in $DATA_DIR (cluster id $cluster_id)"
  mkdir -p "$DATA_DIR"
  run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$SERVER_PROPERTIES" --ignore-formatted >&2 \
    || die "kafka.tools.StorageTool format failed (see $LOG_DIR/storage-tool.log)"
}

# ---------------------------------------------------------------------------
# Readiness
# ---------------------------------------------------------------------------
python_bin() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    echo "$REPO_ROOT/.venv/bin/python"
  else
    echo python3
  fi
}

# 0 = confluent_kafka listed the cluster's topics, 1 = not (yet), 2 = no probe available.
python_probe() {
  local py
  py="$(python_bin)"
  command -v "$py" >/dev/null 2>&1 || return 2
  "$py" -c 'import confluent_kafka' >/dev/null 2>&1 || return 2
  "$py" - "$HOST:$KAFKA_PORT" <<'PY' >/dev/null 2>&1 || return 1
import sys
from confluent_kafka.admin import AdminClient

admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
md = admin.list_topics(timeout=5)
sys.exit(0 if md.brokers else 1)
PY
}

tail_logs() {
  local f
  for f in "$CONSOLE_LOG" "$SERVER_LOG"; do
    if [[ -s "$f" ]]; then
      err "---- last lines of $f ----"
      tail -n "${1:-40}" "$f" >&2 || true
    fi
  done
}

wait_until_ready() { # pid
  local pid="$1" deadline probe_rc have_probe=1
  deadline=$(( SECONDS + KAFKA_START_TIMEOUT ))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      err "Kafka exited during startup"
      tail_logs 60
      return 1
    fi
    if port_open "$KAFKA_PORT" && grep -q "$STARTED_MARKER" "$SERVER_LOG" 2>/dev/null; then
      if (( have_probe )); then
        probe_rc=0
        python_probe || probe_rc=$?
        case "$probe_rc" in
          0) return 0 ;;
          2) have_probe=0; return 0 ;; # no confluent_kafka: port + log line is the check
        esac
      else
        return 0
      fi
    fi
    if (( SECONDS >= deadline )); then
      err "Kafka did not accept clients on $HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT}s (pid $pid left running; 'stop' to kill it)"
      tail_logs 60
      return 1
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
cmd_start() {
  local pid running_port
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    running_port="$(configured_port)"
    if [[ "$running_port" != "$KAFKA_PORT" ]]; then
      die "the broker of $STATE_DIR is already running (pid $pid) on port ${running_port:-?}, not $KAFKA_PORT; run 'stop' first"
    fi
    if port_open "$KAFKA_PORT"; then
      log "already running (pid $pid)"
    else
      log "already starting (pid $pid), waiting for it"
      wait_until_ready "$pid" || exit 1
    fi
    echo "$HOST:$KAFKA_PORT"
    return 0
  fi

  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$p"; then
      err "port $HOST:$p is already in use by another process (not the broker of $STATE_DIR); free it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
      exit 4
    fi
  done

  mkdir -p "$STATE_DIR" "$LOG_DIR" "$DATA_DIR"
  ensure_classpath
  write_server_properties
  ensure_formatted

  # Fresh server.log per run so the startup marker can't come from a previous run.
  local f
  for f in "$SERVER_LOG" "$CONSOLE_LOG"; do
    if [[ -f "$f" ]]; then mv -f "$f" "$f.prev"; fi
  done

  local java cp
  java="$(java_bin)"
  cp="$(cat "$CP_FILE")"
  local -a jvm_opts
  # shellcheck disable=SC2206 # word splitting of the option strings is intended
  jvm_opts=(
    $KAFKA_HEAP_OPTS
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_CONFIG"
    -Dkafka.logs.dir="$LOG_DIR"
    $KAFKA_JVM_OPTS
  )

  log "starting Kafka on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT, state $STATE_DIR)"
  # setsid + nohup: own session, no controlling tty, survives the calling shell.
  # The inner bash writes its own pid and then execs java, so the pid file holds
  # the JVM's pid whether or not setsid had to fork.
  rm -f "$PID_FILE"
  # shellcheck disable=SC2016 # $$, $0 and $@ are for the inner shell
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$java" "${jvm_opts[@]}" -cp "$cp" kafka.Kafka "$SERVER_PROPERTIES" \
    </dev/null >"$CONSOLE_LOG" 2>&1 &

  local waited=0
  while [[ ! -s "$PID_FILE" ]] && (( waited < 50 )); do
    sleep 0.1
    waited=$(( waited + 1 ))
  done
  [[ -s "$PID_FILE" ]] || die "could not launch java (no pid file written)"
  pid="$(cat "$PID_FILE")"

  local t0=$SECONDS
  wait_until_ready "$pid" || exit 1
  log "Kafka is up (pid $pid) after $(( SECONDS - t0 ))s; bootstrap servers:"
  echo "$HOST:$KAFKA_PORT"
}

cmd_stop() {
  local clean=0
  [[ "${1:-}" == "--clean" ]] && clean=1
  local pid
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    log "not running"
  else
    log "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( SECONDS + KAFKA_STOP_TIMEOUT ))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      err "still alive after ${KAFKA_STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
    log "stopped"
  fi
  if (( clean )); then
    rm -rf "$DATA_DIR" "$CLUSTER_ID_FILE"
    log "removed data dir $DATA_DIR"
  fi
}

cmd_status() {
  local pid port
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    port="$(configured_port)"
    port="${port:-$KAFKA_PORT}"
    if port_open "$port"; then
      echo "running (pid $pid) on $HOST:$port, state $STATE_DIR"
    else
      echo "running (pid $pid), not yet accepting connections on $HOST:$port, state $STATE_DIR"
    fi
    return 0
  fi
  echo "stopped (state $STATE_DIR)"
  return 3
}

cmd_logs() {
  local follow=() lines=100 a
  for a in "$@"; do
    case "$a" in
      -f|--follow) follow=(-F) ;;
      ''|*[!0-9]*) die "logs: unexpected argument '$a'" ;;
      *) lines="$a" ;;
    esac
  done
  [[ -f "$SERVER_LOG" ]] || die "no server log yet ($SERVER_LOG)"
  exec tail -n "$lines" "${follow[@]}" "$SERVER_LOG"
}

main() {
  validate_port KAFKA_PORT "$KAFKA_PORT"
  validate_port KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
  [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
  [[ "$KAFKA_START_TIMEOUT" =~ ^[0-9]+$ ]] || die "KAFKA_START_TIMEOUT must be whole seconds"
  [[ "$KAFKA_STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "KAFKA_STOP_TIMEOUT must be whole seconds"

  local cmd="${1:-}"
  (( $# )) && shift
  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_stop && cmd_start ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    clean) cmd_stop --clean ;;
    -h|--help|help) usage ;;
    *) usage ;;
  esac
}

main "$@"
