#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs; the tests start (and
# stop) a real Kafka broker themselves (KAFKA_BOOTSTRAP_SERVERS, else testcontainers if a
# Docker engine answers, else deploy/kafka/local-kafka.sh on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
# bootstrap.sh installs the dev extras once per pyproject.toml (pip caches the wheels):
# among them the deploy/ validators (schema models of Kubernetes, KEDA and the Prometheus
# operator; check-jsonschema with the Compose and GitHub workflow schemas).
bash scripts/bootstrap.sh
bash scripts/system-deps.sh
bash scripts/llm-server.sh install   # the real model server of the LLM tests (cached build)
echo "== ruff"; .venv/bin/ruff check sentinel_stream tests bench scripts
echo "== mypy"; .venv/bin/mypy sentinel_stream bench tests
echo "== pytest"; exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
