#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the test suite in tiers, fastest first, failing fast:
#   1. fast   — unit tests, no services, no subprocess pipelines (a contributor runs it before every commit:
#               scripts/test.sh fast)
#   2. e2e    — end to end through real processes: `airflow dags test` of every DAG, the CLI, kill -9,
#               Label Studio, the README walk-through, docker-compose config
#   3. integration — the scheduler-driven suites: one real Airflow on PostgreSQL (LocalExecutor, REST,
#               backfill, UI in Chromium, S3 via moto) and the CeleryExecutor with two workers
# The time of each tier is printed at the end (and written to .artifacts/test-times.txt).
# With arguments other than a tier name, they go to one pytest call as they are (e.g. a single test file).
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
scripts/setup.sh
source scripts/env.sh
.venv/bin/ruff check . && .venv/bin/ruff format --check .   # lint + format (pyproject.toml [tool.ruff])

declare -A MARKS=(
  [fast]="not integration and not e2e and not slow"
  [e2e]="e2e and not slow"
  [integration]="integration and not slow"
)
# the integration tier spends half its time waiting on processes (Airflow's scheduler loop, sensors, servers
# starting): two pytest-xdist workers run its files side by side, one file per worker (e2e is CPU-bound: no gain)
declare -A SIDE_BY_SIDE=([fast]="" [e2e]="" [integration]="-n 2 --dist loadfile")
TIERS=(fast e2e integration)
if [ $# -gt 0 ] && [ -z "${MARKS[$1]:-}" ]; then
  scripts/services.sh
  exec .venv/bin/python -m pytest -v --durations=15 "$@"
fi
[ $# -gt 0 ] && TIERS=("$@")
# the later tiers' services install/start while the fast tier (which needs none) runs
SERVICES_PID=""
for tier in "${TIERS[@]}"; do
  if [ "$tier" != fast ]; then
    mkdir -p .artifacts
    scripts/services.sh > .artifacts/services.log 2>&1 &
    SERVICES_PID=$!
    break
  fi
done
services_ready() {
  [ -n "$SERVICES_PID" ] || return 0
  wait "$SERVICES_PID" || { cat .artifacts/services.log; echo "scripts/services.sh failed" >&2; exit 1; }
  SERVICES_PID=""
}

mkdir -p .artifacts
TIMES=.artifacts/test-times.txt
: > "$TIMES"
summary() {
  echo "== test time per tier (2 cores in CI; budget: the whole command under 35 minutes)"
  cat "$TIMES"
  printf '%-12s %5d s  (setup, services, lint and every tier)\n' total $(( $(date +%s) - T0 ))
}
trap summary EXIT
for tier in "${TIERS[@]}"; do
  [ "$tier" = fast ] || services_ready
  start=$(date +%s)
  echo "== tier $tier: pytest -m \"${MARKS[$tier]}\""
  status=0
  # -v: each test is named as it starts; -x on the fast tier: the first failure stops the run
  .venv/bin/python -m pytest -v --durations=15 -m "${MARKS[$tier]}" ${SIDE_BY_SIDE[$tier]} \
    $([ "$tier" = fast ] && echo -x) || status=$?
  printf '%-12s %5d s  %s\n' "$tier" $(( $(date +%s) - start )) "$([ $status = 0 ] && echo passed || echo FAILED)" >> "$TIMES"
  [ $status = 0 ] || exit $status
done
