#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the test suite, including the scheduler-driven
# integration suite (real Airflow on PostgreSQL, S3 via moto, headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh
source scripts/env.sh
.venv/bin/ruff check . && .venv/bin/ruff format --check .   # lint + format (pyproject.toml [tool.ruff])
exec .venv/bin/python -m pytest -v --durations=15 "$@"   # -v: each test is named as it starts
