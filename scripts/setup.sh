#!/usr/bin/env bash
# Idempotent setup: a virtualenv in .venv with requirements.txt (locked by constraints.txt) and the synpref package,
# and a project-local Airflow home (SQLite metadata DB, pools). Re-running skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the virtualenv .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.synpref-requirements.sha
WANT=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setup: installing requirements.txt into .venv (about 2 minutes the first time; log .venv/logs/pip.log)"
  mkdir -p .venv/logs
  for step in "--upgrade pip" "-r requirements.txt -c constraints.txt" "--no-deps -e ."; do
    # shellcheck disable=SC2086
    .venv/bin/pip install -q $step > .venv/logs/pip.log 2>&1 || { cat .venv/logs/pip.log; echo "setup failed: pip install $step" >&2; exit 1; }
  done
  echo "$WANT" > "$STAMP"
fi
# shellcheck source=/dev/null
source scripts/env.sh
mkdir -p "$AIRFLOW_HOME"
echo "setup: Airflow metadata DB and pools in $AIRFLOW_HOME"
.venv/bin/airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
.venv/bin/airflow pools set llm_api 4 "LLM annotator endpoints (size to the endpoint's rate limit)" > /dev/null
.venv/bin/airflow pools set gpu 1 "RM training/scoring on GPU workers" > /dev/null
