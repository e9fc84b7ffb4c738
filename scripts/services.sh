#!/usr/bin/env bash
# What the integration tests need outside the virtualenv, installed/started only when missing:
# PostgreSQL (metadata DB of the test Airflow), Chromium (UI check), docker-compose (config validation),
# Redis (Celery broker) and Label Studio (its own virtualenv).
# Idempotent; needs root (or sudo) only when something must be installed or started.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
command -v pg_ctlcluster > /dev/null || missing+=(postgresql)
command -v chromium > /dev/null || missing+=(chromium)
command -v docker-compose > /dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  echo "services.sh: installing ${missing[*]} (apt)" >&2
  $SUDO apt-get update -qq > /dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" > /dev/null
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "services.sh: starting PostgreSQL" >&2
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 > /dev/null || { echo "services.sh: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
# Redis (the Celery suite's broker): started when down, nothing kept on disk
if ! redis-cli ping > /dev/null 2>&1; then
  command -v redis-server > /dev/null || { $SUDO apt-get install -y -qq redis-server > /dev/null; }
  echo "services.sh: starting Redis" >&2
  redis-server --daemonize yes --save "" --appendonly no > /dev/null
fi
# Label Studio (the humans' review server of the integration suite) in its own virtualenv: its pins clash with Airflow's
# (every package locked by scripts/labelstudio-constraints.txt; the stamp changes with it)
LS_VERSION="1.23.2 $(sha256sum scripts/labelstudio-constraints.txt | cut -c1-16)"
if [ "$(cat .venv-labelstudio/.version 2>/dev/null)" != "$LS_VERSION" ]; then
  echo "services.sh: installing Label Studio $LS_VERSION into .venv-labelstudio (a few minutes, once)" >&2
  rm -rf .venv-labelstudio
  "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv .venv-labelstudio
  .venv-labelstudio/bin/pip install -q "label-studio==${LS_VERSION%% *}" -c scripts/labelstudio-constraints.txt > .venv-labelstudio.log 2>&1 || { tail -30 .venv-labelstudio.log; exit 1; }
  echo "$LS_VERSION" > .venv-labelstudio/.version
fi
