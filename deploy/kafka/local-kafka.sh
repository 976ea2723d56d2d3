#!/usr/bin/env bash
# Run a real Apache Kafka (KRaft) from the official jars on Maven Central, without Docker:
# one combined broker+controller node (the default), or, for fault tests, a cluster of
# KAFKA_NODES such nodes on 127.0.0.1 that survives the loss of any one node.
#
# Usage: local-kafka.sh start | stop [--clean] | restart | status | clean
#                       | logs [-f] [LINES] [--node N]
#                       | start-node N | stop-node N | kill-node N
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
#   KAFKA_HEAP_OPTS          JVM heap flags (default "-Xms256m -Xmx1g"; per cluster node
#                            "-Xms128m -Xmx512m")
#   KAFKA_JVM_OPTS           extra JVM flags appended to the defaults (cluster nodes run
#                            C1-only, -XX:TieredStopAtLevel=1, to start fast; append
#                            -XX:TieredStopAtLevel=4 for the full JIT)
#   JAVA                     java executable (default: $JAVA_HOME/bin/java, else java on PATH)
#   MVN                      maven executable (default: mvn)
#   PYTHON                   python used for the optional confluent_kafka readiness probe
#                            (default: <repo>/.venv/bin/python if present, else python3)
#
# Cluster mode:
#   KAFKA_NODES              1 (default): the single node above, state directly in
#                            SENTINEL_KAFKA_HOME. 3 to 9: that many nodes, each broker and
#                            controller (all are voters of the KRaft quorum), node i in
#                            SENTINEL_KAFKA_HOME/node-<i>; topics default to replication 3 with
#                            min.insync.replicas 2, internal topics too, no unclean leader
#                            election. Unset: the node count of the cluster recorded in
#                            SENTINEL_KAFKA_HOME by its last start, else 1.
#   KAFKA_PORTS              comma list of the nodes' broker ports (default: KAFKA_PORT + 2(i-1)
#                            for node i, so 9092, 9094, 9096)
#   KAFKA_CONTROLLER_PORTS   comma list of their controller ports (default:
#                            KAFKA_CONTROLLER_PORT + 2(i-1), so 9093, 9095, 9097)
#   `start` records the ports in SENTINEL_KAFKA_HOME/cluster.nodes; every other command
#   (start-node, stop-node, kill-node, status, stop, logs) uses that record.
#
# Commands:
#   start         start every node that is not running; prints the bootstrap servers as the
#                 last stdout line (127.0.0.1:p1,127.0.0.1:p2,... for a cluster) once the
#                 cluster answers with all its brokers. A start that fails kills what it launched.
#   stop          stop every node (SIGTERM, SIGKILL after KAFKA_STOP_TIMEOUT); --clean also
#                 deletes the data (logs stay)
#   start-node N  start node N (1 with a single node) with its data, wait until it serves again
#   stop-node N   stop node N cleanly (SIGTERM, SIGKILL after KAFKA_STOP_TIMEOUT)
#   kill-node N   SIGKILL node N: a crash, no clean shutdown
#   status        one line per node
#
# Exit codes: 0 ok / running, 1 error, 2 usage, 3 stopped (status only: a node is not running),
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
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
HOST="127.0.0.1"
MAX_NODES=9

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

CLUSTER_ID_FILE="$STATE_DIR/cluster.id"
LAYOUT_FILE="$STATE_DIR/cluster.nodes"
CP_FILE="$CACHE_DIR/classpath.txt"
CP_SUM_FILE="$CACHE_DIR/classpath.pom.sha256"

STARTED_MARKER="Kafka Server started"

# Set by resolve_nodes: node count and each node's ports (arrays indexed by node id).
NODES=1
NODE_PORTS=()
NODE_CONTROLLER_PORTS=()
# Set by use_node for the node being worked on.
NODE=1 NODE_DIR="" DATA_DIR="" LOG_DIR="" SERVER_LOG="" CONSOLE_LOG="" PID_FILE=""
SERVER_PROPERTIES="" PORT="" CONTROLLER_PORT=""
LAUNCHED_PID=""

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

# True if $1 is a live process; a zombie nobody has reaped yet counts as dead.
pid_alive() {
  local state=""
  kill -0 "$1" 2>/dev/null || return 1
  read -r _ _ state _ <"/proc/$1/stat" 2>/dev/null || return 1
  [[ "$state" != Z ]]
}

# ---------------------------------------------------------------------------
# Nodes: count, ports, per-node paths
# ---------------------------------------------------------------------------
cluster_mode() { (( NODES > 1 )); }

# Points the per-node globals at node $1.
use_node() {
  NODE="$1"
  if cluster_mode; then NODE_DIR="$STATE_DIR/node-$1"; else NODE_DIR="$STATE_DIR"; fi
  DATA_DIR="$NODE_DIR/data"
  LOG_DIR="$NODE_DIR/logs"
  SERVER_LOG="$LOG_DIR/server.log"
  CONSOLE_LOG="$LOG_DIR/kafka.out"
  PID_FILE="$NODE_DIR/kafka.pid"
  SERVER_PROPERTIES="$NODE_DIR/server.properties"
  PORT="${NODE_PORTS[$1]}"
  CONTROLLER_PORT="${NODE_CONTROLLER_PORTS[$1]}"
}

node_ids() { seq 1 "$NODES"; }

# What a node is called in messages: nothing extra for the single node.
node_label() { if cluster_mode; then echo "node $NODE"; else echo "Kafka"; fi; }

bootstrap_list() {
  local i out=""
  for i in $(node_ids); do out+="${out:+,}$HOST:${NODE_PORTS[$i]}"; done
  echo "$out"
}

# Ports from the environment: KAFKA_PORTS / KAFKA_CONTROLLER_PORTS, else derived.
ports_from_env() {
  local -a brokers=() controllers=()
  local i
  if [[ -n "${KAFKA_PORTS:-}" ]]; then
    IFS=',' read -r -a brokers <<<"$KAFKA_PORTS"
    (( ${#brokers[@]} == NODES )) || die "KAFKA_PORTS lists ${#brokers[@]} ports for $NODES nodes"
  else
    for (( i = 0; i < NODES; i++ )); do brokers+=( $(( KAFKA_PORT + 2 * i )) ); done
  fi
  if [[ -n "${KAFKA_CONTROLLER_PORTS:-}" ]]; then
    IFS=',' read -r -a controllers <<<"$KAFKA_CONTROLLER_PORTS"
    (( ${#controllers[@]} == NODES )) \
      || die "KAFKA_CONTROLLER_PORTS lists ${#controllers[@]} ports for $NODES nodes"
  else
    for (( i = 0; i < NODES; i++ )); do controllers+=( $(( KAFKA_CONTROLLER_PORT + 2 * i )) ); done
  fi
  NODE_PORTS=() NODE_CONTROLLER_PORTS=()
  for (( i = 0; i < NODES; i++ )); do
    NODE_PORTS[i + 1]="${brokers[i]// /}"
    NODE_CONTROLLER_PORTS[i + 1]="${controllers[i]// /}"
  done
}

# Ports recorded by the last cluster start (lines: node broker-port controller-port).
ports_from_layout() {
  local id port cport
  NODE_PORTS=() NODE_CONTROLLER_PORTS=()
  while read -r id port cport; do
    [[ "$id" =~ ^[0-9]+$ ]] || die "malformed $LAYOUT_FILE (line '$id $port $cport')"
    NODE_PORTS[id]="$port"
    NODE_CONTROLLER_PORTS[id]="$cport"
  done <"$LAYOUT_FILE"
}

layout_node_count() { grep -c '^[0-9]' "$LAYOUT_FILE" 2>/dev/null || true; }

layout_text() {
  local i
  for i in $(node_ids); do
    echo "$i ${NODE_PORTS[$i]} ${NODE_CONTROLLER_PORTS[$i]}"
  done
}

write_layout() {
  local tmp="$LAYOUT_FILE.tmp.$$"
  layout_text >"$tmp"
  mv -f "$tmp" "$LAYOUT_FILE"
}

validate_ports() {
  local i p
  local -A seen=()
  for i in $(node_ids); do
    validate_port "broker port of node $i" "${NODE_PORTS[$i]:-}"
    validate_port "controller port of node $i" "${NODE_CONTROLLER_PORTS[$i]:-}"
    for p in "${NODE_PORTS[$i]}" "${NODE_CONTROLLER_PORTS[$i]}"; do
      [[ -z "${seen[$p]:-}" ]] || die "port $p is used twice (ports: broker $(bootstrap_list), controllers ${NODE_CONTROLLER_PORTS[*]})"
      seen[$p]=1
    done
  done
}

# Decides single node vs cluster and each node's ports. $1 is the command: only `start`
# takes a cluster's ports from the environment, the others use what start recorded.
resolve_nodes() {
  local cmd="$1" recorded
  recorded="$(layout_node_count)"
  recorded="${recorded:-0}"
  if [[ -n "${KAFKA_NODES:-}" ]]; then
    if ! [[ "$KAFKA_NODES" =~ ^[0-9]+$ ]] \
        || ! (( KAFKA_NODES == 1 || (KAFKA_NODES >= 3 && KAFKA_NODES <= MAX_NODES) )); then
      die "KAFKA_NODES must be 1 or 3..$MAX_NODES (a 2-voter quorum survives no failure), got '$KAFKA_NODES'"
    fi
    NODES="$KAFKA_NODES"
    if (( recorded > 0 && recorded != NODES )); then
      die "$STATE_DIR holds a $recorded-node cluster, not $NODES node(s): use KAFKA_NODES=$recorded (or leave it unset), or 'stop --clean' it first"
    fi
  elif (( recorded > 0 )); then
    NODES="$recorded"
  fi
  if ! cluster_mode; then
    NODE_PORTS=([1]="$KAFKA_PORT")
    NODE_CONTROLLER_PORTS=([1]="$KAFKA_CONTROLLER_PORT")
  elif [[ "$cmd" == start || "$cmd" == restart ]] || (( recorded == 0 )); then
    ports_from_env
  else
    ports_from_layout
  fi
  validate_ports
}

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------
# True if $1 is a live process that is *our* broker (guards against pid reuse).
is_our_kafka() {
  local pid="$1" cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *" kafka.Kafka $SERVER_PROPERTIES"* ]]
}

# Prints the pid of the current node's running broker, or nothing. Removes a stale pid file.
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
  local cmdline_file
  for cmdline_file in $(grep -l -a -F "$SERVER_PROPERTIES" /proc/[0-9]*/cmdline 2>/dev/null || true); do
    pid="${cmdline_file#/proc/}"
    pid="${pid%/cmdline}"
    if is_our_kafka "$pid"; then
      echo "$pid" >"$PID_FILE"
      echo "$pid"
      return 0
    fi
  done
  return 0
}

# Waits (bounded) until none of the given pids is alive; 1 if some still is.
wait_gone() { # seconds pid...
  local deadline=$(( SECONDS + $1 )) pid
  shift
  for pid in "$@"; do
    while pid_alive "$pid"; do
      (( SECONDS < deadline )) || return 1
      sleep 0.1
    done
  done
}

# SIGTERM the given nodes together (a clean, controlled shutdown), SIGKILL what is left
# after KAFKA_STOP_TIMEOUT.
stop_nodes() { # ids...
  local i pid
  local -a pids=() ids=()
  for i in "$@"; do
    use_node "$i"
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
      if cluster_mode; then log "node $i not running"; else log "not running"; fi
      continue
    fi
    if cluster_mode; then log "stopping node $i (pid $pid)"; else log "stopping Kafka (pid $pid)"; fi
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
    ids+=("$i")
  done
  (( ${#pids[@]} )) || return 0
  if ! wait_gone "$KAFKA_STOP_TIMEOUT" "${pids[@]}"; then
    err "still alive after ${KAFKA_STOP_TIMEOUT}s, sending SIGKILL"
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait_gone 30 "${pids[@]}" || die "pid(s) ${pids[*]} survived SIGKILL for 30s"
  fi
  for i in "${ids[@]}"; do use_node "$i"; rm -f "$PID_FILE"; done
  log "stopped"
}

kill_nodes() { # ids...
  local i pid
  for i in "$@"; do
    use_node "$i"
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
      log "$(node_label) not running"
      continue
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone 30 "$pid" || die "pid $pid survived SIGKILL for 30s"
    rm -f "$PID_FILE"
    log "killed $(node_label) (pid $pid)"
  done
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
  local tmp="$SERVER_PROPERTIES.tmp.$$" i voters="" role replicas min_isr internal_partitions
  for i in $(node_ids); do voters+="${voters:+,}$i@$HOST:${NODE_CONTROLLER_PORTS[$i]}"; done
  if cluster_mode; then
    role="# Node $NODE of a $NODES-node KRaft cluster: broker and one of $NODES controller voters."
    replicas=3 min_isr=2 internal_partitions=3
  else
    role="# Single-node KRaft: this process is both broker and (sole) controller."
    replicas=1 min_isr=1 internal_partitions=1
  fi
  cat >"$tmp" <<EOF
# Generated by deploy/kafka/local-kafka.sh on every start; edits are overwritten.
$role
process.roles=broker,controller
node.id=$NODE
# Static voter set (kraft.version 0). Unlike controller.quorum.bootstrap.servers +
# 'format --standalone' it does not persist the controller endpoint in the metadata
# log, so KAFKA_CONTROLLER_PORT can change between runs on the same data dir.
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

log.dirs=$DATA_DIR

# Topics are created by the application, never implicitly.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$replicas
min.insync.replicas=$min_isr
# An out-of-sync replica never becomes leader: that would drop acknowledged records.
unclean.leader.election.enable=false

# Internal topics: on every node of a cluster (acks=all needs $min_isr in sync), so that
# offsets and transactions survive the loss of a node.
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=$internal_partitions
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=$internal_partitions
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
share.coordinator.state.topic.num.partitions=$internal_partitions
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
  # C1 only: a one-shot tool is over before C2 would pay off.
  "$(java_bin)" -Xmx256m -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
    -Dkafka.logs.dir="$LOG_DIR" -Dkafka.log.file=storage-tool.log \
    -cp "$cp" "$@"
}

# A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what
# StorageTool random-uuid prints, without starting a JVM for it).
new_cluster_id() {
  local id="-"
  while [[ "$id" == -* ]]; do # Kafka never hands out ids that start with '-'
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  echo "$id"
}

ensure_cluster_id() {
  if [[ ! -s "$CLUSTER_ID_FILE" ]]; then
    new_cluster_id >"$CLUSTER_ID_FILE"
  fi
}

# Formats the storage of the given nodes that have none yet, all at once (one JVM each).
ensure_formatted() { # ids...
  local i k cluster_id failed=0
  local -a pids=() ids=()
  cluster_id="$(cat "$CLUSTER_ID_FILE")"
  for i in "$@"; do
    use_node "$i"
    [[ -f "$DATA_DIR/meta.properties" ]] && continue
    log "formatting KRaft storage in $DATA_DIR (cluster id $cluster_id)"
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$SERVER_PROPERTIES" \
      --ignore-formatted >"$LOG_DIR/storage-tool.out" 2>&1 &
    pids+=("$!")
    ids+=("$i")
  done
  for k in "${!pids[@]}"; do
    use_node "${ids[k]}"
    if ! wait "${pids[k]}"; then
      failed=1
      err "kafka.tools.StorageTool format failed for $DATA_DIR (see $LOG_DIR/storage-tool.log)"
    fi
    cat "$LOG_DIR/storage-tool.out" >&2 || true
  done
  (( ! failed )) || exit 1
}

# ---------------------------------------------------------------------------
# Launch + readiness
# ---------------------------------------------------------------------------
# Starts the current node's JVM in the background; sets LAUNCHED_PID.
launch_node() {
  # Fresh server.log per run so the startup marker can't come from a previous run.
  local f
  for f in "$SERVER_LOG" "$CONSOLE_LOG"; do
    if [[ -f "$f" ]]; then mv -f "$f" "$f.prev"; fi
  done

  local java cp heap jit=""
  java="$(java_bin)"
  cp="$(cat "$CP_FILE")"
  heap="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
  if cluster_mode; then
    heap="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
    # C1 only: several nodes starting at once on a small machine come up in about
    # half the time; fault tests need failover, not peak throughput.
    jit="-XX:TieredStopAtLevel=1"
  fi
  local -a jvm_opts
  # shellcheck disable=SC2206 # word splitting of the option strings is intended
  jvm_opts=(
    $heap $jit
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_CONFIG"
    -Dkafka.logs.dir="$LOG_DIR"
    $KAFKA_JVM_OPTS
  )

  log "starting $(node_label) on $HOST:$PORT (controller $HOST:$CONTROLLER_PORT, state $NODE_DIR)"
  # setsid + nohup: own session, no controlling tty, survives the calling shell.
  # The inner bash writes its own pid and then execs java, so the pid file holds
  # the JVM's pid whether or not setsid had to fork.
  rm -f "$PID_FILE"
  # shellcheck disable=SC2016 # $$, $0 and $@ are for the inner shell
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$java" "${jvm_opts[@]}" -cp "$cp" kafka.Kafka "$SERVER_PROPERTIES" \
    </dev/null >"$CONSOLE_LOG" 2>&1 &
  disown # no "Killed" job report from this shell when a node is killed

  local waited=0
  while [[ ! -s "$PID_FILE" ]] && (( waited < 50 )); do
    sleep 0.1
    waited=$(( waited + 1 ))
  done
  [[ -s "$PID_FILE" ]] || die "could not launch java (no pid file written)"
  LAUNCHED_PID="$(cat "$PID_FILE")"
}

python_bin() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    echo "$REPO_ROOT/.venv/bin/python"
  else
    echo python3
  fi
}

# 0 = confluent_kafka got metadata from $1 listing every broker id in $2 (comma list),
# 1 = not (yet), 2 = no probe available.
python_probe() { # bootstrap ids
  local py
  py="$(python_bin)"
  command -v "$py" >/dev/null 2>&1 || return 2
  "$py" -c 'import confluent_kafka' >/dev/null 2>&1 || return 2
  "$py" - "$1" "$2" <<'PY' >/dev/null 2>&1 || return 1
import sys
from confluent_kafka.admin import AdminClient

admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
md = admin.list_topics(timeout=5)
want = {int(i) for i in sys.argv[2].split(",") if i}
sys.exit(0 if md.brokers and want <= set(md.brokers) else 1)
PY
}

tail_logs() {
  local f shown=0
  for f in "$CONSOLE_LOG" "$SERVER_LOG"; do
    if [[ -s "$f" ]]; then
      err "---- last lines of $f ----"
      tail -n "${1:-40}" "$f" >&2 || true
      shown=1
    fi
  done
  (( shown )) || err "---- $(node_label) has logged nothing yet in $LOG_DIR ----"
}

# True once the current node listens for clients and has logged its startup.
node_started() {
  port_open "$PORT" && grep -q "$STARTED_MARKER" "$SERVER_LOG" 2>/dev/null
}

# Waits until every given node has started and a metadata request to $1 lists them all.
wait_until_ready() { # bootstrap ids...
  local bootstrap="$1" i pid probe_rc want all_started what
  shift
  local -a ids=("$@")
  want="$(IFS=,; echo "${ids[*]}")"
  local deadline=$(( SECONDS + KAFKA_START_TIMEOUT )) have_probe=1
  while :; do
    all_started=1
    for i in "${ids[@]}"; do
      use_node "$i"
      # The launched pid from its pid file: if that process is gone, the JVM exited.
      pid="$(cat "$PID_FILE" 2>/dev/null || true)"
      if ! { [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid"; }; then
        rm -f "$PID_FILE"
        err "$(node_label) exited during startup"
        tail_logs 60
        return 1
      fi
      if (( all_started )) && ! node_started; then all_started=0; fi
    done
    if (( all_started )); then
      if (( have_probe )); then
        probe_rc=0
        python_probe "$bootstrap" "$want" || probe_rc=$?
        case "$probe_rc" in
          0) return 0 ;;
          2) have_probe=0; return 0 ;; # no confluent_kafka: port + log line is the check
        esac
      else
        return 0
      fi
    fi
    if (( SECONDS >= deadline )); then
      if cluster_mode; then what="node(s) ${ids[*]}"; else what="Kafka"; fi
      err "$what did not serve clients on $bootstrap within ${KAFKA_START_TIMEOUT}s"
      for i in "${ids[@]}"; do
        use_node "$i"
        node_started || tail_logs 60
      done
      return 1
    fi
    sleep 0.5
  done
}

# Launches the given (stopped) nodes and waits for them; a start that fails kills
# what it launched, so no half-started JVM is left behind.
launch_and_wait() { # bootstrap ids...
  local bootstrap="$1" i pid
  shift
  ensure_classpath
  ensure_cluster_id
  for i in "$@"; do
    use_node "$i"
    mkdir -p "$NODE_DIR" "$LOG_DIR" "$DATA_DIR"
    write_server_properties
  done
  ensure_formatted "$@"
  local t0=$SECONDS
  local -a pids=()
  for i in "$@"; do
    use_node "$i"
    launch_node
    pids+=("$LAUNCHED_PID")
  done
  if ! wait_until_ready "$bootstrap" "$@"; then
    for i in "$@"; do
      use_node "$i"
      pid="$(running_pid)"
      if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
      rm -f "$PID_FILE"
    done
    wait_gone 30 "${pids[@]}" || true
    err "killed the JVM(s) this start launched (pid ${pids[*]})"
    exit 1
  fi
  if cluster_mode; then
    log "up after $(( SECONDS - t0 ))s (node(s) $*, pid ${pids[*]}); bootstrap servers:"
  else
    log "Kafka is up (pid ${pids[0]}) after $(( SECONDS - t0 ))s; bootstrap servers:"
  fi
}

# Refuses (exit 4) if a port of a stopped node is taken by some other process.
check_ports_free() { # ids...
  local i p
  for i in "$@"; do
    use_node "$i"
    for p in "$PORT" "$CONTROLLER_PORT"; do
      if port_open "$p"; then
        if cluster_mode; then
          err "port $HOST:$p of node $i is already in use by another process; free it or choose other ports (KAFKA_PORTS / KAFKA_CONTROLLER_PORTS)"
        else
          err "port $HOST:$p is already in use by another process (not the broker of $STATE_DIR); free it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
        fi
        exit 4
      fi
    done
  done
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
# Broker port the running single node was configured with (the env may differ).
configured_port() {
  sed -n "s|^listeners=PLAINTEXT://$HOST:\([0-9]*\),.*|\1|p" "$SERVER_PROPERTIES" 2>/dev/null || true
}

cmd_start() {
  local i pid running_port all_open=1
  local -a stopped=() running=()
  if cluster_mode && [[ -e "$STATE_DIR/data/meta.properties" || -e "$STATE_DIR/kafka.pid" ]]; then
    die "$STATE_DIR holds a single-node broker; use another SENTINEL_KAFKA_HOME for a cluster, or 'stop --clean' it first"
  fi
  for i in $(node_ids); do
    use_node "$i"
    pid="$(running_pid)"
    if [[ -z "$pid" ]]; then
      stopped+=("$i")
      continue
    fi
    running+=("$i")
    running_port="$(configured_port)"
    if [[ "$running_port" != "$PORT" ]]; then
      if cluster_mode; then
        die "node $i of $STATE_DIR is already running (pid $pid) on port ${running_port:-?}, not $PORT; run 'stop' first"
      fi
      die "the broker of $STATE_DIR is already running (pid $pid) on port ${running_port:-?}, not $PORT; run 'stop' first"
    fi
    port_open "$PORT" || all_open=0
  done

  if cluster_mode && (( ${#running[@]} )) && [[ "$(layout_text)" != "$(cat "$LAYOUT_FILE" 2>/dev/null)" ]]; then
    die "the cluster of $STATE_DIR runs (nodes ${running[*]}) with other ports than asked for ($(tr '\n' ' ' <"$LAYOUT_FILE" 2>/dev/null)); run 'stop' first"
  fi

  if (( ${#stopped[@]} == 0 )); then
    if (( all_open )); then
      if cluster_mode; then log "already running (nodes ${running[*]})"; else log "already running (pid $pid)"; fi
    else
      log "already starting, waiting for it"
      wait_until_ready "$(bootstrap_list)" "${running[@]}" || exit 1
    fi
    bootstrap_list
    return 0
  fi

  check_ports_free "${stopped[@]}"
  mkdir -p "$STATE_DIR"
  if cluster_mode; then write_layout; fi
  # Nodes already running take part in the wait: start returns once all serve.
  launch_and_wait "$(bootstrap_list)" "${stopped[@]}"
  if (( ${#running[@]} )); then
    # shellcheck disable=SC2046 # one word per node id
    wait_until_ready "$(bootstrap_list)" $(node_ids) || exit 1
  fi
  bootstrap_list
}

cmd_stop() {
  local clean=0 i
  [[ "${1:-}" == "--clean" ]] && clean=1
  # shellcheck disable=SC2046 # one word per node id
  stop_nodes $(node_ids)
  if (( clean )); then
    for i in $(node_ids); do
      use_node "$i"
      rm -rf "$DATA_DIR"
      log "removed data dir $DATA_DIR"
    done
    rm -f "$CLUSTER_ID_FILE"
    if cluster_mode; then rm -f "$LAYOUT_FILE"; fi
  fi
}

cmd_status() {
  local pid port
  if cluster_mode; then
    local i rc=0
    for i in $(node_ids); do
      use_node "$i"
      pid="$(running_pid)"
      if [[ -z "$pid" ]]; then
        echo "node $i: stopped, broker $HOST:$PORT, controller $HOST:$CONTROLLER_PORT, state $NODE_DIR"
        rc=3
      elif port_open "$PORT"; then
        echo "node $i: running (pid $pid), broker $HOST:$PORT, controller $HOST:$CONTROLLER_PORT, state $NODE_DIR"
      else
        echo "node $i: running (pid $pid), not yet accepting connections on $HOST:$PORT, state $NODE_DIR"
      fi
    done
    return "$rc"
  fi
  use_node 1
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
  local follow=() lines=100 node=1
  while (( $# )); do
    case "$1" in
      -f|--follow) follow=(-F) ;;
      --node) shift; node="$(node_arg "${1:-}")" ;;
      ''|*[!0-9]*) die "logs: unexpected argument '$1'" ;;
      *) lines="$1" ;;
    esac
    shift
  done
  use_node "$node"
  [[ -f "$SERVER_LOG" ]] || die "no server log yet ($SERVER_LOG)"
  exec tail -n "$lines" "${follow[@]}" "$SERVER_LOG"
}

# Validates a node number argument and prints it.
node_arg() {
  if ! [[ "${1:-}" =~ ^[0-9]+$ ]] || (( $1 < 1 || $1 > NODES )); then
    err "expected a node number 1..$NODES, got '${1:-}'"
    exit 2
  fi
  echo "$1"
}

cmd_start_node() {
  local node pid
  node="$(node_arg "${1:-}")"
  cluster_mode || { cmd_start; return; }
  [[ -s "$LAYOUT_FILE" ]] || die "no cluster recorded in $STATE_DIR: run 'start' first"
  use_node "$node"
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    log "node $node already running (pid $pid)"
    port_open "$PORT" || wait_until_ready "$HOST:$PORT" "$node" || exit 1
  else
    check_ports_free "$node"
    launch_and_wait "$HOST:$PORT" "$node"
  fi
  bootstrap_list
}

main() {
  local cmd="${1:-}" node
  (( $# )) && shift
  validate_port KAFKA_PORT "$KAFKA_PORT"
  validate_port KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
  [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
  [[ "$KAFKA_START_TIMEOUT" =~ ^[0-9]+$ ]] || die "KAFKA_START_TIMEOUT must be whole seconds"
  [[ "$KAFKA_STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "KAFKA_STOP_TIMEOUT must be whole seconds"
  resolve_nodes "$cmd"

  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_stop && cmd_start ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    clean) cmd_stop --clean ;;
    start-node) cmd_start_node "$@" ;;
    stop-node) node="$(node_arg "${1:-}")"; stop_nodes "$node" ;;
    kill-node) node="$(node_arg "${1:-}")"; kill_nodes "$node" ;;
    -h|--help|help) usage ;;
    *) usage ;;
  esac
}

main "$@"
