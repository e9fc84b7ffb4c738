"""Shared glue for the SynPref DAGs: storage roots as ObjectStoragePath, default args, params, Assets.

Kept free of heavy imports (torch, transformers, faiss, openai): DAG files import it at parse time.
The DAG params of the library's settings are derived from their declarations (``synpref.settings``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, BaseOperator, ObjectStoragePath, Param

from synpref.environment import env
from synpref.settings import AnnotatorConfig, AnnotatorError, specs

DEFAULT_ARGS = {
    "owner": "synpref",
    "retries": int(env("SYNPREF_TASK_RETRIES")),
    "retry_delay": timedelta(seconds=int(env("SYNPREF_RETRY_DELAY_S"))),
}
TAGS = ["synpref", "skywork-reward-v2"]

# Assets announcing a finished stage-1 round and a curated stage-2 dataset.
BEST_RM = Asset("synpref_best_rm")
GOLD_RM = Asset("synpref_gold_rm")
GOLD_SILVER = Asset("synpref_gold_silver")
CURATED_DATASET = Asset("synpref_curated_dataset")

# the deployment's environment (declared, with defaults and descriptions, in synpref.environment)
LLM_POOL = env("SYNPREF_LLM_POOL")
TRAIN_QUEUE = env("SYNPREF_TRAIN_QUEUE")
RM_POOL = env("SYNPREF_RM_POOL")
SCORE_PARALLELISM = int(env("SYNPREF_SCORE_PARALLELISM"))
BATCH_POLL_S = float(env("SYNPREF_BATCH_POLL_S"))
DEFAULT_ANNOTATORS = [c for c in env("SYNPREF_ANNOTATORS").split(",") if c]
# Deployment-wide defaults of settings (the form still shows and takes every setting).
ENV_DEFAULTS = {"rm_mode": env("SYNPREF_RM_MODE")} if env("SYNPREF_RM_MODE") else {}


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
    """The run's ``StorageLayout``: the ``root`` param, else $SYNPREF_ROOT, else $AIRFLOW_HOME/synpref-data;
    its unverified pool from the ``pool_uri`` param when set (stage 1), else ``<root>/pool``."""
    from synpref.io.layout import StorageLayout
    from synpref.io.storage import use_uri_factory

    uri = params.get("root") or env("SYNPREF_ROOT")
    if not uri:
        uri = "file://" + os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "synpref-data")
    use_uri_factory(ObjectStoragePath)  # URIs read from manifests resolve through Airflow connections
    pool = params.get("pool_uri")
    return StorageLayout(ObjectStoragePath(uri), ObjectStoragePath(pool) if pool else None)


def path_or(value: str | None, default: Any) -> Any:
    """A URI param if given, else the layout's default path."""
    return ObjectStoragePath(value) if value else default


def existing(path: Any) -> Any:
    return path if path.exists() else None


ANNOTATOR_EXTRAS = AnnotatorConfig.connection_extras()  # what a connection's extra may set


def misconfigured(error: BaseException) -> bool:
    """A problem a retry cannot fix: a wrong annotator (bad key, unknown model, a bad setting: ``AnnotatorError``),
    an RM backbone that is not there, a device that is not one."""
    from synpref.models.device import DeviceError
    from synpref.models.reward_model import BackboneError
    from synpref.settings import AnnotatorError

    return isinstance(error, (AnnotatorError, BackboneError, DeviceError))


@contextmanager
def no_retry_if_misconfigured():
    """Around a task's work: a misconfiguration fails the task at once, in its one line, without Airflow's retries
    (they would ask the same wrong thing again, a minute apart); every other failure keeps its retries."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except Exception as e:
        if misconfigured(e):
            raise AirflowFailException(f"{type(e).__name__}: {e} (not retried: fix the configuration)") from None
        raise


def annotator_from_connection(conn_id: str):
    """An Airflow connection (openai type: host = base URL, password = API key, extra.model, ...) → AnnotatorConfig."""
    from airflow.sdk import BaseHook

    from synpref.llm.client import annotator_config

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    base_url = extra.get("base_url") or conn.host or ""
    if base_url and "://" not in base_url:
        base_url = f"{conn.schema or 'http'}://{base_url}" + (f":{conn.port}" if conn.port else "")
    if not base_url or "model" not in extra:
        raise AnnotatorError(
            f"connection {conn_id!r}: an annotator needs a base URL (host or extra.base_url) and extra.model"
        )
    settings = {k: extra[k] for k in ANNOTATOR_EXTRAS if k in extra}
    config = {"name": conn_id, "base_url": base_url, "model": extra["model"], **settings}
    return annotator_config(config, f"connection {conn_id!r}").model_copy(update={"api_key": conn.password or None})


def run_lock(run, dag_run, ti):
    """The writer lock of a stage-2 output, held by this DAG run (a finished or failed run no longer holds it)."""
    from synpref.io.storage import WriterLock

    return WriterLock.for_dag_run(run.lock, dag_run.dag_id, dag_run.run_id, ti.get_dagrun_state if ti else None)


def round_name(dag_run) -> str:
    """A run's round: its logical date (or run_after for runs without one) as YYYY-MM-DD."""
    when = dag_run.logical_date or dag_run.run_after
    return when.strftime("%Y-%m-%d")


# --- humans in the loop: the Label Studio server and sign-off gates -----------------------------------

REVIEW_CONN = env("SYNPREF_LABEL_STUDIO_CONN")
LABEL_STUDIO_PROJECT_PARAM = Param(
    None,
    type=["null", "string"],
    title="Label Studio project",
    description=f"Project of the review queue on the server of connection {REVIEW_CONN!r} (when it exists). "
    "Empty: the connection's extra.project, else synpref-review.",
    section="Humans in the loop",
)
SIGN_OFF_PARAMS = {
    "sign_off": Param(
        False,
        type="boolean",
        title="Sign-off before publishing",
        description="Wait for a person to approve (Browse → Required actions) before the round's silver is "
        "published / the curated dataset is exported. Off for scheduled runs; switch it on per run here.",
        section="Humans in the loop",
    ),
    "sign_off_timeout_hours": Param(
        24.0,
        type="number",
        minimum=0.001,
        title="Sign-off timeout (hours)",
        description="How long the approval waits before the timeout decision below is taken.",
        section="Humans in the loop",
    ),
    "sign_off_on_timeout": Param(
        "reject",
        enum=["approve", "reject"],
        title="Decision on timeout",
        description="What happens when nobody answers in time.",
        section="Humans in the loop",
    ),
}


def review_server(project: str | None = None):
    """The Label Studio connection (host = URL, password = API token, extra.project) as a ``ReviewServer``
    (``project`` overrides the project title), or None when the deployment has none (the review queue then
    stays a file, as without a server)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from synpref.stage1.review_queue import ReviewServer

    try:
        conn = BaseHook.get_connection(REVIEW_CONN)
    except AirflowNotFoundException:
        return None
    url = conn.host or ""
    if url and "://" not in url:
        url = f"{conn.schema or 'http'}://{url}" + (f":{conn.port}" if conn.port else "")
    project = project or conn.extra_dejson.get("project", "synpref-review")
    return ReviewServer(url=url, token=conn.password or "", project=project)


class SignOff(ApprovalOperator):
    """An optional approval step (Airflow's HITL ``ApprovalOperator``): it waits when the run's ``sign_off``
    param is on, or when ``required(context)`` gives a reason (a regressing RM); a timeout decides per
    ``sign_off_on_timeout``; a rejection skips what follows (nothing is
    published). The body (markdown, templated) shows the numbers and the report link."""

    def __init__(self, on_reject=None, required=None, **kwargs) -> None:
        super().__init__(defaults=ApprovalOperator.REJECT, **kwargs)
        self.on_reject = on_reject  # called with the context and the response when rejected (or timed out so)
        self.required = required  # context → why this run must wait whatever ``sign_off`` says (None: it need not)

    def execute_complete(self, context, event):
        result = super().execute_complete(context, event)
        if result["chosen_options"][0] == self.REJECT and self.on_reject is not None:
            self.on_reject(context, result)
        return result

    def execute(self, context):
        params = context["params"]
        required = self.required(context) if self.required is not None else None
        if not params.get("sign_off") and not required:
            self.log.info("sign-off is off for this run: approved without waiting")
            return {"chosen_options": [self.APPROVE], "params_input": {}, "responded_by_user": None}
        if required:
            self.log.warning("sign-off required: %s", required)
        self.defaults = [self.APPROVE if params["sign_off_on_timeout"] == "approve" else self.REJECT]
        self.response_timeout = timedelta(hours=float(params["sign_off_timeout_hours"]))
        return super().execute(context)


class BatchJudging(BaseOperator):
    """Judging that waits for OpenAI batches without holding a worker slot.

    ``judge(context, item, pending)`` judges one item (a stage-2 shard): online annotators answer in the task;
    the requests of ``mode: batch`` annotators missing from the LLM cache are appended to ``pending``. If any
    are, each such annotator's requests go out as one Batch-API job (``synpref.llm.batch``), the task defers to
    the OpenAI provider's ``OpenAIBatchTrigger`` (the triggerer polls; no worker slot is held), resumes, puts
    what the batch answered into the cache (also of a failed, expired or cancelled batch) and judges again —
    until nothing is pending. ``places(context, item)`` → (annotators by connection id, LLM cache, the
    directory of the item's batch records)."""

    def __init__(self, *, item: Any, judge, places, poll_interval: float = 60, **kwargs) -> None:
        super().__init__(**kwargs)
        self.item, self.judge, self.places, self.poll_interval = item, judge, places, poll_interval

    def execute(self, context):
        pending: list = []
        result = self.judge(context, self.item, pending)
        if not pending:
            return result
        from synpref.llm.batch import by_annotator, submit

        annotators, _, records = self.places(context, self.item)
        task = f"{self.task_id}[{context['ti'].map_index}]"
        meta = {"dag_id": self.dag_id, "run_id": context["run_id"], "task": task}
        subs = []
        for name, requests in by_annotator(pending).items():
            _check_trigger_url(name, annotators[name])
            subs.append(submit(annotators[name], requests, records, meta).model_dump())
        return self.resume(context, {"status": "submitted"}, subs)

    def resume(self, context, event: dict, submissions: list[dict]):
        """Wait (deferred) for the first batch still running; once none is, ingest them all and judge again."""
        from airflow.providers.openai.triggers.openai import OpenAIBatchTrigger

        from synpref.llm.batch import IN_PROGRESS, BatchSubmission, ingest, status

        if event.get("termination_reason") == "timeout":
            raise RuntimeError(f"annotate: {event.get('message')}")
        annotators, cache, records = self.places(context, self.item)
        subs = [BatchSubmission(**s) for s in submissions]
        for s in subs:
            state = status(annotators[s.annotator], s.batch_id)
            if state in IN_PROGRESS:
                self.log.info("batch %s of %s is %s: waiting in the triggerer", s.batch_id, s.annotator, state)
                self.defer(
                    trigger=OpenAIBatchTrigger(
                        conn_id=s.annotator, batch_id=s.batch_id, poll_interval=self.poll_interval, timeout=86400
                    ),
                    method_name="resume",
                    kwargs={"submissions": submissions},
                )
        for s in subs:
            ingest(annotators[s.annotator], s, cache, records)
        return self.execute(context)


def _check_trigger_url(conn_id: str, annotator) -> None:
    """The provider's trigger polls the connection's host (or extra.openai_client_kwargs.base_url): it must be the
    annotator's endpoint, or it would poll another one."""
    from airflow.providers.openai.hooks.openai import OpenAIHook

    url = str(OpenAIHook(conn_id=conn_id).get_conn().base_url).rstrip("/")
    if url != annotator.base_url.rstrip("/"):
        raise ValueError(
            f"connection {conn_id!r} has mode: batch, but the OpenAI provider would poll {url} for its batches, not "
            f"{annotator.base_url}: set the connection's host to the full base URL"
        )
