#!/usr/bin/env bash
# README command 1: set everything up (idempotent) and run the whole pipeline on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
exec .venv/bin/python scripts/demo.py "$@"
