"""Shared glue for the SynPref DAGs: storage roots as ObjectStoragePath, default args, params, Assets.

Kept free of heavy imports (torch, transformers, faiss, openai): DAG files import it at parse time.
The DAG params of the library's settings are derived from their declarations (``synpref.settings``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, ObjectStoragePath, Param

from synpref.settings import specs

DEFAULT_ARGS = {
    "owner": "synpref",
    "retries": int(os.environ.get("SYNPREF_TASK_RETRIES", "2")),
    "retry_delay": timedelta(seconds=int(os.environ.get("SYNPREF_RETRY_DELAY_S", "60"))),
}
TAGS = ["synpref", "skywork-reward-v2"]

# Assets announcing a finished stage-1 round and a curated stage-2 dataset.
BEST_RM = Asset("synpref_best_rm")
GOLD_RM = Asset("synpref_gold_rm")
GOLD_SILVER = Asset("synpref_gold_silver")
CURATED_DATASET = Asset("synpref_curated_dataset")

LLM_POOL = os.environ.get("SYNPREF_LLM_POOL", "llm_api")
TRAIN_QUEUE = os.environ.get("SYNPREF_TRAIN_QUEUE", "default")  # "gpu" routes RM training/scoring to GPU workers
DEFAULT_ANNOTATORS = [
    c for c in os.environ.get("SYNPREF_ANNOTATORS", "synpref_judge_a,synpref_judge_b,synpref_judge_c").split(",") if c
]
# Deployment-wide defaults of settings, from the environment (the form still shows and takes every setting).
ENV_DEFAULTS = {"rm_mode": os.environ["SYNPREF_RM_MODE"]} if os.environ.get("SYNPREF_RM_MODE") else {}


def optional_param(title: str, description: str, section: str = "Storage") -> Param:
    """An optional text param (a URI, a connection id): empty means the documented default."""
    return Param(None, type=["null", "string"], title=title, description=description, section=section)


ROOT_PARAM = optional_param(
    "Storage root", "file:///... or s3://<conn_id>@<bucket>/<prefix>. Empty: the SYNPREF_ROOT env var of the worker."
)
ANNOTATORS_PARAM = Param(
    DEFAULT_ANNOTATORS,
    type="array",
    items={"type": "string"},
    title="Annotator connections",
    section="LLM annotation",
    description="Airflow connection ids, one per LLM judge "
    "(OpenAI-compatible endpoint; extra.model, samples, prices...).",
)


def setting_params(*models: type) -> dict[str, Param]:
    """One Param per exposed setting of the library's config models (title, section, bounds, default)."""
    out = {}
    for s in (spec for model in models for spec in specs(model)):
        schema: dict[str, Any] = {"title": s.title, "section": s.section}
        if s.enum:
            schema["enum"] = list(s.enum)
        else:
            schema["type"] = ["null", s.kind] if s.nullable else s.kind
        if s.minimum is not None:
            schema["minimum"] = s.minimum
        if s.maximum is not None:
            schema["maximum"] = s.maximum
        if s.description:
            schema["description"] = s.description
        out[s.name] = Param(ENV_DEFAULTS.get(s.name, s.default), **schema)
    return out


def storage(params: dict):
    """The run's ``StorageLayout``: the ``root`` param, else $SYNPREF_ROOT, else $AIRFLOW_HOME/synpref-data."""
    from synpref.layout import StorageLayout
    from synpref.storage import use_uri_factory

    uri = params.get("root") or os.environ.get("SYNPREF_ROOT")
    if not uri:
        uri = "file://" + os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "synpref-data")
    use_uri_factory(ObjectStoragePath)  # URIs read from manifests resolve through Airflow connections
    return StorageLayout(ObjectStoragePath(uri))


def path_or(value: str | None, default: Any) -> Any:
    """A URI param if given, else the layout's default path."""
    return ObjectStoragePath(value) if value else default


def existing(path: Any) -> Any:
    return path if path.exists() else None


ANNOTATOR_EXTRAS = (
    "backend",
    "samples",
    "temperature",
    "max_tokens",
    "max_concurrency",
    "requests_per_minute",
    "timeout_s",
    "max_retries",
    "price_in_per_1k",
    "price_out_per_1k",
    "max_error_share",
    "cache_namespace",
    "cache",
)


def annotator_from_connection(conn_id: str):
    """An Airflow connection (openai type: host = base URL, password = API key, extra.model, ...) → AnnotatorConfig."""
    from airflow.sdk import BaseHook

    from synpref.llm_client import annotator_config

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    base_url = extra.get("base_url") or conn.host or ""
    if base_url and "://" not in base_url:
        base_url = f"{conn.schema or 'http'}://{base_url}" + (f":{conn.port}" if conn.port else "")
    if not base_url or "model" not in extra:
        raise ValueError(
            f"connection {conn_id!r}: an annotator needs a base URL (host or extra.base_url) and extra.model"
        )
    settings = {k: extra[k] for k in ANNOTATOR_EXTRAS if k in extra}
    config = {"name": conn_id, "base_url": base_url, "model": extra["model"], **settings}
    return annotator_config(config, f"connection {conn_id!r}").model_copy(update={"api_key": conn.password or None})


def round_name(dag_run) -> str:
    """A run's round: its logical date (or run_after for runs without one) as YYYY-MM-DD."""
    when = dag_run.logical_date or dag_run.run_after
    return when.strftime("%Y-%m-%d")
