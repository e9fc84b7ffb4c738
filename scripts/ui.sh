#!/usr/bin/env bash
# The Airflow UI on the demo's runs and storage: README command 1 ran its DAGs with `airflow dags test` in the
# project-local Airflow home (SQLite, .airflow/), writing under demo_output/storage. This serves that home with
# SYNPREF_ROOT on that storage: DAG runs and their tasks, and Browse → Curation (every round's and run's report).
#   scripts/ui.sh [demo output directory, default demo_output]     (port: SYNPREF_UI_PORT, default 8080)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out="${1:-demo_output}"
if [ ! -d "$out/storage/rounds" ]; then
  echo "ui: no demo output in $out (run ./scripts/demo.sh first)" >&2
  exit 2
fi
export SYNPREF_ROOT="file://$(cd "$out/storage" && pwd)"
port="${SYNPREF_UI_PORT:-8080}"
echo "ui: http://127.0.0.1:$port — user admin, password in $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
echo "ui: DAGs → synpref_stage1 / synpref_stage2 for the demo's runs; Browse → Curation for its reports (Ctrl-C stops)"
exec airflow api-server --port "$port"
