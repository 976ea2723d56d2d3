#!/usr/bin/env bash
# The chaos suite at full length: every fault on real processes and brokers, with the
# 60 s broker outage the service promises to ride out, twice the events per case.
# (scripts/test.sh runs the same suite shortened: a 20 s outage, CHAOS_SCALE=1.)
# Prints one table: events in, verdicts, lost, duplicated, recovery seconds per case.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export CHAOS_OUTAGE_S=${CHAOS_OUTAGE_S:-60} CHAOS_SCALE=${CHAOS_SCALE:-2}
exec .venv/bin/python -m pytest -p no:cacheprovider tests/chaos -q "$@"
