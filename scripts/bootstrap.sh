#!/usr/bin/env bash
# Create .venv and install the project with its test and dev extras (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The stamp covers what the install builds: the dependencies and the compiled kernel.
stamp=.venv/.installed-$(cat pyproject.toml sentinel_stream/detect/_kernel.c | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
