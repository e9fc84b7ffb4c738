"""The environment variables a deployment sets, declared once: name, default, what it does, who reads it.

Settings of a *run* live in ``synpref.settings`` (trigger form, CLI flags); these are properties of a *deployment*
or a *worker* (where tasks run, how many at once, which connections are the default judges). The configuration
reference (``docs/configuration.md``) is generated from both, and a test fails when a ``SYNPREF_*`` name read
anywhere in the code is not declared here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: ``default`` is what an unset variable means (as text)."""

    name: str
    default: str
    description: str
    read_by: str  # scheduler/DAG parsing, worker, webserver plugin, scripts


DAGS, WORKER, PLUGIN = "DAG files (scheduler and workers)", "worker", "Curation page (API server)"
SCRIPTS, COMPOSE = "scripts", "docker-compose (`.env`)"

ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar(
        "SYNPREF_ROOT",
        "",
        "Default storage root (`file://...` or `s3://<conn_id>@<bucket>/<prefix>`); empty: "
        "`$AIRFLOW_HOME/synpref-data`.",
        f"{DAGS}, {PLUGIN}",
    ),
    EnvVar("SYNPREF_REPORT_ROOTS", "", "More storage roots for the Curation page, comma-separated.", PLUGIN),
    EnvVar(
        "SYNPREF_ANNOTATORS",
        "synpref_judge_a,synpref_judge_b,synpref_judge_c",
        "Default annotator connection ids of the trigger forms, comma-separated.",
        DAGS,
    ),
    EnvVar("SYNPREF_LLM_POOL", "llm_api", "The Airflow pool every judging task takes a slot of.", DAGS),
    EnvVar("SYNPREF_LLM_POOL_SLOTS", "8", "Slots of that pool, sized to the endpoints' rate limits.", COMPOSE),
    EnvVar("SYNPREF_TRAIN_QUEUE", "default", "`gpu` routes RM training and scoring tasks to GPU workers.", DAGS),
    EnvVar("SYNPREF_RM_POOL", "default_pool", "`gpu`: RM tasks take a slot of the `gpu` pool (one per GPU).", DAGS),
    EnvVar("SYNPREF_SCORE_PARALLELISM", "4", "Stage-2 score tasks at once per run.", DAGS),
    EnvVar("SYNPREF_BATCH_POLL_S", "60", "How often the triggerer polls an OpenAI Batch API job (seconds).", DAGS),
    EnvVar("SYNPREF_TASK_RETRIES", "2", "Airflow retries of every task.", DAGS),
    EnvVar("SYNPREF_RETRY_DELAY_S", "60", "Seconds between a task's retries.", DAGS),
    EnvVar(
        "SYNPREF_RM_MODE",
        "",
        "Deployment-wide default of `rm_mode` (`full`, or `frozen` on CPU-only "
        "deployments); empty: the setting's default.",
        DAGS,
    ),
    EnvVar(
        "SYNPREF_STAGE1_SCHEDULE", "0 2 * * *", "The stage-1 rounds' cron; empty: rounds are only triggered.", DAGS
    ),
    EnvVar(
        "SYNPREF_STAGE2_SCHEDULE", "", "`asset`: stage 2 runs after every published round; empty: triggered.", DAGS
    ),
    EnvVar(
        "SYNPREF_SENSOR_POKE_S", "60", "How often a round checks that earlier rounds have published (seconds).", DAGS
    ),
    EnvVar(
        "SYNPREF_LABEL_STUDIO_CONN", "synpref_label_studio", "The Label Studio connection of the review queue.", DAGS
    ),
    EnvVar(
        "SYNPREF_DEVICE",
        "auto",
        "Where this worker trains, scores and embeds: `auto` (CUDA if visible), `cpu`, `cuda`, `cuda:N`.",
        WORKER,
    ),
    EnvVar(
        "SYNPREF_TRAIN_PROCESSES",
        "",
        "Data-parallel processes of a full RM's training; empty: every visible GPU (1 on CPU).",
        WORKER,
    ),
    EnvVar("SYNPREF_GPU_ID", "0", "docker-compose: the GPU a GPU worker service reserves.", COMPOSE),
    EnvVar("SYNPREF_GPU_POOL_SLOTS", "1", "docker-compose: slots of the `gpu` pool (one per GPU).", COMPOSE),
    EnvVar("SYNPREF_IMAGE", "synpref-airflow:latest", "docker-compose: the Airflow services' image.", COMPOSE),
    EnvVar("SYNPREF_GPU_IMAGE", "synpref-airflow-gpu:latest", "docker-compose: the GPU worker's image.", COMPOSE),
    EnvVar("SYNPREF_BUCKET", "synpref", "docker-compose: the MinIO bucket of the storage root.", COMPOSE),
    EnvVar("SYNPREF_PREFIX", "curation", "docker-compose: the storage root's prefix in that bucket.", COMPOSE),
    EnvVar("SYNPREF_UI_PORT", "8080", "`scripts/ui.sh`: the Airflow UI's port.", SCRIPTS),
    EnvVar("SYNPREF_SIM_PORT", "8900", "The walk-through's SIMULATED judge server port.", SCRIPTS),
)
DECLARED = {v.name: v for v in ENV_VARS}


def env(name: str) -> str:
    """The variable's value, or its declared default when unset (a name not declared is a programming error)."""
    return os.environ.get(name, DECLARED[name].default)
