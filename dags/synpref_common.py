"""Shared glue for the SynPref DAGs: storage roots as ObjectStoragePath, default args, params.

Kept free of heavy imports (torch, transformers, faiss, openai): DAG files import it at parse time.
"""
from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import ObjectStoragePath, Param

DEFAULT_ARGS = {
    "owner": "synpref",
    "retries": int(os.environ.get("SYNPREF_TASK_RETRIES", "2")),
    "retry_delay": timedelta(seconds=int(os.environ.get("SYNPREF_RETRY_DELAY_S", "60"))),
}
TAGS = ["synpref", "skywork-reward-v2"]


def root_param() -> Param:
    return Param(
        "",
        type="string",
        title="Storage root",
        description="file:///... or s3://<conn_id>@<bucket>/<prefix>. Empty: the SYNPREF_ROOT env var of the worker.",
        section="Storage",
    )


def storage_root(params: dict) -> ObjectStoragePath:
    """The run's storage root: the param, else $SYNPREF_ROOT, else $AIRFLOW_HOME/synpref-data."""
    uri = params.get("root") or os.environ.get("SYNPREF_ROOT")
    if not uri:
        uri = "file://" + os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "synpref-data")
    return ObjectStoragePath(uri)


def sub(root: ObjectStoragePath, value: str, default: str) -> ObjectStoragePath:
    """A param URI if given (absolute), else ``root / default``."""
    return ObjectStoragePath(value) if value else root / default
