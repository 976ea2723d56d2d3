#!/usr/bin/env bash
# Run the product on a local broker with demo traffic and show the anomalies it flags.
# DEMO_SECONDS (default 60) bounds the run; everything started here is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
BOOTSTRAP=$(bash deploy/kafka/local-kafka.sh start)
export SENTINEL_KAFKA_BOOTSTRAP=$BOOTSTRAP SENTINEL_CREATE_TOPICS=true
secs=${DEMO_SECONDS:-60}
.venv/bin/sentinel-stream run & svc=$!
tail_pid=
cleanup() {
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null || true
  kill -TERM "$svc" 2>/dev/null && wait "$svc" || true
  [ "${KEEP_KAFKA:-0}" = 1 ] || bash deploy/kafka/local-kafka.sh stop
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:${SENTINEL_PORT:-8000}/ready" >/dev/null 2>&1 && break
  sleep 0.3
done
.venv/bin/sentinel-stream tail --anomalies-only --timeout "$((secs + 10))" & tail_pid=$!
.venv/bin/sentinel-stream demo-producer --rate 500 --routes 20 --duration "$secs"
sleep 3
curl -s "http://127.0.0.1:${SENTINEL_PORT:-8000}/health"; echo
