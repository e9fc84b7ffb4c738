"""Shared glue for the SynPref DAGs: storage roots as ObjectStoragePath, default args, params.

Kept free of heavy imports (torch, transformers, faiss, openai): DAG files import it at parse time.
"""
from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Asset, ObjectStoragePath, Param

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


def root_param() -> Param:
    return Param(
        None,
        type=["null", "string"],
        title="Storage root",
        description="file:///... or s3://<conn_id>@<bucket>/<prefix>. Empty: the SYNPREF_ROOT env var of the worker.",
        section="Storage",
    )


def storage_root(params: dict) -> ObjectStoragePath:
    """The run's storage root: the param, else $SYNPREF_ROOT, else $AIRFLOW_HOME/synpref-data."""
    uri = params.get("root") or os.environ.get("SYNPREF_ROOT")
    if not uri:
        uri = "file://" + os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "synpref-data")
    from synpref.storage import use_uri_factory

    use_uri_factory(ObjectStoragePath)  # URIs handed between tasks resolve through Airflow connections
    return ObjectStoragePath(uri)


def sub(root: ObjectStoragePath, value: str | None, default: str) -> ObjectStoragePath:
    """A param URI if given (absolute), else ``root / default``."""
    return ObjectStoragePath(value) if value else root / default

LLM_POOL = os.environ.get("SYNPREF_LLM_POOL", "llm_api")
TRAIN_QUEUE = os.environ.get("SYNPREF_TRAIN_QUEUE", "default")  # "gpu" routes RM training/scoring to GPU workers
DEFAULT_ANNOTATORS = [c for c in os.environ.get("SYNPREF_ANNOTATORS", "synpref_judge_a,synpref_judge_b,synpref_judge_c").split(",") if c]
ANNOTATOR_EXTRAS = ("samples", "temperature", "max_tokens", "max_concurrency", "requests_per_minute", "timeout_s", "max_retries",
                    "price_in_per_1k", "price_out_per_1k")


def annotator_from_connection(conn_id: str):
    """An Airflow connection (openai type: host = base URL, password = API key, extra.model, ...) → AnnotatorConfig."""
    from airflow.sdk import BaseHook
    from synpref.llm_client import AnnotatorConfig

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    base_url = extra.get("base_url") or conn.host or ""
    if base_url and "://" not in base_url:
        base_url = f"{conn.schema or 'http'}://{base_url}" + (f":{conn.port}" if conn.port else "")
    if not base_url or "model" not in extra:
        raise ValueError(f"connection {conn_id!r}: an annotator needs a base URL (host or extra.base_url) and extra.model")
    return AnnotatorConfig(name=conn_id, base_url=base_url, model=extra["model"], api_key=conn.password or None,
                           **{k: extra[k] for k in ANNOTATOR_EXTRAS if k in extra})


def round_name(context) -> str:
    """A run's round: its logical date (or run_after for runs without one) as YYYY-MM-DD."""
    run = context["dag_run"]
    when = run.logical_date or run.run_after
    return when.strftime("%Y-%m-%d")


def rm_params(prefix: str = "rm") -> dict[str, Param]:
    section = "Reward models"
    return {
        f"{prefix}_mode": Param(os.environ.get("SYNPREF_RM_MODE", "full"), enum=["full", "frozen"], title="RM training mode", section=section,
                                description="full: fine-tune the backbone with TRL's RewardTrainer; frozen: frozen encoder + BT head (fast on CPU)."),
        f"{prefix}_backbone": Param(None, type=["null", "string"], title="RM backbone", section=section,
                                    description="HF sequence-classification checkpoint (name or path). Empty: the packaged all-MiniLM-L6-v2 (CPU, offline)."),
        f"{prefix}_max_length": Param(256, type="integer", minimum=32, title="RM max tokens", section=section),
        f"{prefix}_epochs": Param(1, type="integer", minimum=1, title="RM epochs", section=section),
        f"{prefix}_lr": Param(3e-5, type="number", title="RM learning rate (full mode)", section=section),
    }


def rm_config(params: dict, seed: int):
    from synpref.reward_model import RMConfig

    return RMConfig(mode=params["rm_mode"], backbone=params["rm_backbone"] or "", max_length=params["rm_max_length"],
                    epochs=params["rm_epochs"], learning_rate=params["rm_lr"], seed=seed)


def annotation_params() -> dict[str, Param]:
    section = "LLM annotation"
    return {
        "annotators": Param(DEFAULT_ANNOTATORS, type="array", items={"type": "string"}, title="Annotator connections", section=section,
                            description="Airflow connection ids, one per LLM judge (OpenAI-compatible endpoint; extra.model, samples, prices...)."),
        "samples": Param(3, type="integer", minimum=1, title="Self-consistency samples", section=section,
                         description="Verdicts sampled per annotator per pair (separate requests)."),
        "merge_policy": Param("majority", enum=["majority", "unanimous", "weighted"], title="Cross-model merge policy", section=section),
        "max_examples": Param(8, type="integer", minimum=0, maximum=32, title="Few-shot gold examples", section=section,
                              description="Similar human-verified pairs shown in each judging prompt."),
        "budget_usd": Param(None, type=["null", "number"], title="LLM budget (USD)", section=section,
                            description="Stop issuing new requests once spent (split evenly across annotator tasks); the rest is marked not_annotated_budget."),
        "seed": Param(0, type="integer", title="Seed", section=section, description="Seeds candidate order, sampling and training."),
    }
