"""
# synpref_stage1 — one human-in-the-loop curation round per run (Skywork-Reward-V2, Figure 3 left)

A run's **logical date names the round** (`rounds/<YYYY-MM-DD>/`). Nightly: humans verify the
previous round's review queue during the day (Label Studio export into `inbox/<date>/`), the DAG
closes the round at night. `max_active_runs=1` + `depends_on_past` make backfills run rounds in
date order; each round reads the newest completed round before its date (or the seed) and writes
only under its own prefix, manifest last.

0. **wait_for_previous_round** — a round starts only once every earlier round it could read is
   published (backfills may start several runs at once; `depends_on_past` alone orders tasks, not rounds);
1. **pull_verifications** (with a Label Studio connection) → **human_verification_intake** — verdicts
   pulled from the server into the inbox, inbox → cumulative gold (+ gold-train/validation), discarded;
2. **generate_attributes** (mapped over pool shards, LLM, cached) → **embed_pool_shard** (mapped); every
   step reads the pool of param `pool_uri` (default `<root>/pool/`);
3. **train_best_rm** (Bradley-Terry on silver, checkpoint by gold accuracy) and **train_gold_rm**
   (on gold-train, checkpoint by gold-validation);
4. **evaluate_on_gold** — p = σ(r_w − r_l) per gold pair, accuracy overall / per category; both RMs
   calibrated on gold they did not train on (`calibration.json`, read by stage 2); beside it
   **score_rm_benchmarks** — both RMs on the public RM benchmarks of `rm_benchmarks` (if any), against the
   previous round's;
5. **adaptive_retrieval** — k = k_max if p ≤ 0.5 else ⌈k_max(1−p)⌉ neighbours per gold pair;
6. **annotate** (mapped over annotator connections, pool `llm_api`) — preference-aware judging;
7. **merge_silver_and_review_queue** — agreeing verdicts → silver; contested → review queue; the judges'
   accuracy on their blind gold probe → `judges.json`;
8. **write_report** — HTML report with figures (`rounds/<date>/report/`; Browse → Curation, and the
   run's "Curation report" tab);
9. **sign_off_silver** — approval when param `sign_off` is on (off for scheduled runs) or the best RM
   regressed on an RM benchmark (`benchmark_gate`): a rejection leaves the round unpublished;
10. **publish_round** — manifest + Asset events (best RM, gold RM, gold/silver sets);
11. **push_review_queue** (with a Label Studio connection) — the review queue as tasks on the server.

Docs: `docs/concepts.md` (stage 1), `docs/humans.md` (review queue, sign-off), `docs/configuration.md`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import PokeReturnValue, dag, task

from synpref.environment import env
from synpref.settings import Stage1Config
from synpref_common import (
    ANNOTATORS_PARAM,
    BEST_RM,
    DEFAULT_ARGS,
    GOLD_RM,
    GOLD_SILVER,
    LABEL_STUDIO_PROJECT_PARAM,
    LLM_POOL,
    REVIEW_CONN,
    RM_POOL,
    ROOT_PARAM,
    SIGN_OFF_PARAMS,
    TAGS,
    TRAIN_QUEUE,
    SignOff,
    annotator_from_connection,
    no_retry_if_misconfigured,
    optional_param,
    path_or,
    review_server,
    round_name,
    setting_params,
    storage,
)

POKE_S = int(env("SYNPREF_SENSOR_POKE_S"))


def _round(params: dict, dag_run) -> tuple:
    """(StorageLayout, round name, Stage1Config) of the running task."""
    from synpref.settings import from_flat

    return storage(params), round_name(dag_run), from_flat(Stage1Config, params)


def _attribute_annotator(params: dict):
    """The connection generating missing preference attributes (pool pairs, and gold given without them)."""
    conn = params["attribute_annotator"] or (params["annotators"][0] if params["annotators"] else "")
    return annotator_from_connection(conn) if conn else None


def _mark_rejected(context: dict, response: dict) -> None:
    """A rejected round stays unpublished; the marker lets later rounds go on without it."""
    from synpref.io.storage import write_json

    store, rnd, _ = _round(context["params"], context["dag_run"])
    by = response.get("responded_by_user")
    write_json({"round": rnd, "by": by, "at": str(response.get("responded_at"))}, store.round(rnd).rejected)


@dag(
    dag_id="synpref_stage1",
    schedule=env("SYNPREF_STAGE1_SCHEDULE") or None,  # empty: triggered rounds only
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=TAGS + ["stage1"],
    default_args={**DEFAULT_ARGS, "depends_on_past": True},
    doc_md=__doc__,
    params={
        "root": ROOT_PARAM,
        "pool_uri": optional_param(
            "Unverified pool URI", "A pool made by synpref_prepare. Empty: <root>/pool/. Every step reads this pool."
        ),
        "inbox_uri": optional_param(
            "Inbox URI", "Human verifications of this round. Empty: <root>/inbox/<round date>/."
        ),
        "attribute_annotator": optional_param(
            "Attribute annotator connection",
            "Connection generating the 5 preference attributes of pool pairs and of human verifications given "
            "without them. Empty: the first annotator.",
            "LLM annotation",
        ),
        "annotators": ANNOTATORS_PARAM,
        **setting_params(Stage1Config),
        "label_studio_project": LABEL_STUDIO_PROJECT_PARAM,
        **SIGN_OFF_PARAMS,
    },
)
def synpref_stage1():
    # reschedule mode frees the worker slot between pokes; the check is idempotent, so it always gets retries
    # (a reschedule can race the scheduler's bookkeeping under a short poke interval)
    @task.sensor(
        poke_interval=POKE_S, timeout=24 * 3600, mode="reschedule", retries=3, retry_delay=timedelta(seconds=POKE_S)
    )
    def wait_for_previous_round(params: dict | None = None, dag_run=None) -> PokeReturnValue:
        store, rnd, _ = _round(params, dag_run)
        pending = store.begin_round(rnd)
        if pending:
            print(f"round {rnd} waits for earlier rounds to publish: {pending}")
        return PokeReturnValue(is_done=not pending, xcom_value=pending)

    @task
    def human_verification_intake(params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_intake

        store, rnd, cfg = _round(params, dag_run)
        inbox = path_or(params["inbox_uri"], store.inbox(rnd))
        return {"round": rnd, **step_intake(store, rnd, inbox, cfg, _attribute_annotator(params))}

    @task
    def list_pool_shards(params: dict | None = None) -> list:
        return storage(params).pool.shards()

    @task(pool=LLM_POOL, max_active_tis_per_dagrun=4)
    def generate_attributes(shard, params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_attributes

        store, rnd, cfg = _round(params, dag_run)
        with no_retry_if_misconfigured():
            return step_attributes(store, rnd, shard, _attribute_annotator(params), cfg)

    @task(max_active_tis_per_dagrun=4)
    def embed_pool_shard(attributes: dict, params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_embed_shard

        store, rnd, _ = _round(params, dag_run)
        return step_embed_shard(store, rnd, attributes["shard"])

    @task(queue=TRAIN_QUEUE, pool=RM_POOL)
    def train_best_rm(intake: dict, params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_train

        store, rnd, cfg = _round(params, dag_run)
        with no_retry_if_misconfigured():
            return step_train(store, rnd, "best", cfg)

    @task(queue=TRAIN_QUEUE, pool=RM_POOL)
    def train_gold_rm(intake: dict, params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_train

        store, rnd, cfg = _round(params, dag_run)
        with no_retry_if_misconfigured():
            return step_train(store, rnd, "gold", cfg)

    @task(queue=TRAIN_QUEUE, pool=RM_POOL)
    def evaluate_on_gold(best: dict, gold: dict, params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_evaluate

        store, rnd, _ = _round(params, dag_run)
        return step_evaluate(store, rnd)

    @task(queue=TRAIN_QUEUE, pool=RM_POOL)
    def score_rm_benchmarks(evaluation: dict, params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_rm_benchmarks

        store, rnd, cfg = _round(params, dag_run)
        return step_rm_benchmarks(store, rnd, cfg.benchmark_uris)

    @task
    def adaptive_retrieval(evaluation: dict, embedded: list[dict], params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_retrieve

        store, rnd, cfg = _round(params, dag_run)
        return step_retrieve(store, rnd, cfg)

    @task
    def annotator_ids(retrieval: dict, params: dict | None = None) -> list[str]:
        return list(params["annotators"])

    @task(pool=LLM_POOL, max_active_tis_per_dagrun=8)
    def annotate(conn_id: str, params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_annotate

        store, rnd, cfg = _round(params, dag_run)
        with no_retry_if_misconfigured():
            return step_annotate(store, rnd, annotator_from_connection(conn_id), cfg, len(params["annotators"]))

    @task
    def merge_silver_and_review_queue(annotations: list[dict], params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.steps import step_merge

        store, rnd, cfg = _round(params, dag_run)
        info = step_merge(store, rnd, [a["annotator"] for a in annotations], cfg)
        return {k: info[k] for k in ("silver_total", "review_queue", "cost_usd", "tokens")}

    @task(outlets=[BEST_RM, GOLD_RM, GOLD_SILVER])
    def publish_round(report: dict, params: dict | None = None, dag_run=None, outlet_events=None) -> dict:
        from synpref.stage1.steps import step_publish

        store, rnd, _ = _round(params, dag_run)
        manifest = step_publish(store, rnd, dict(params))
        extra = {"round": rnd, "root": str(store.root), "uri": str(store.round(rnd).dir)}
        for asset in (BEST_RM, GOLD_RM, GOLD_SILVER):
            outlet_events[asset].extra = extra
        return {"round": rnd, "manifest": str(store.round(rnd).manifest), **manifest.summary.dump()}

    @task
    def write_report(merged: dict, benchmarks: dict, params: dict | None = None, dag_run=None) -> dict:
        from synpref.reporting.report import round_sign_off, write_round_report
        from synpref.stage1.steps import sign_off_required

        store, rnd, cfg = _round(params, dag_run)
        uri = write_round_report(store, rnd)
        required = sign_off_required(store, rnd, cfg)
        return {"uri": uri, "sign_off": round_sign_off(store, rnd, uri, required), "required": required}

    @task
    def pull_verifications(params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.review_queue import ReviewServerError, earlier_pulls, pull_verifications

        store, rnd, _ = _round(params, dag_run)
        server = review_server(params["label_studio_project"])
        if server is None:
            return {"label_studio": f"no connection {REVIEW_CONN!r}: verifications come from inbox files only"}
        inbox = path_or(params["inbox_uri"], store.inbox(rnd))
        try:
            return pull_verifications(inbox, earlier_pulls(store.inbox_dir, server, rnd), server)
        except ReviewServerError as e:  # recorded; the round goes on with the inbox's files
            print(f"Label Studio pull failed ({e.kind}): {e}")
            return {"error": e.kind, "message": str(e)}

    @task
    def push_review_queue(published: dict, params: dict | None = None, dag_run=None) -> dict:
        from synpref.stage1.review_queue import push_review_queue

        store, rnd, _ = _round(params, dag_run)
        server = review_server(params["label_studio_project"])
        if server is None:
            return {"label_studio": f"no connection {REVIEW_CONN!r}: the queue is {store.round(rnd).review_tasks}"}
        return push_review_queue(store.round(rnd).review_tasks, server)  # fails (and retries) on server errors

    ready = wait_for_previous_round()
    intake, shards = human_verification_intake(), list_pool_shards()
    ready >> pull_verifications() >> intake
    ready >> shards
    attributes = generate_attributes.expand(shard=shards)
    embedded = embed_pool_shard.expand(attributes=attributes)
    intake >> attributes
    evaluation = evaluate_on_gold(train_best_rm(intake), train_gold_rm(intake))
    retrieval = adaptive_retrieval(evaluation, embedded)
    annotations = annotate.expand(conn_id=annotator_ids(retrieval))
    report = write_report(merge_silver_and_review_queue(annotations), score_rm_benchmarks(evaluation))
    gate = SignOff(
        task_id="sign_off_silver",
        on_reject=_mark_rejected,
        required=lambda context: context["ti"].xcom_pull(task_ids="write_report").get("required"),
        subject="Publish the silver of round {{ dag_run.logical_date | ds }}?",
        body="{{ ti.xcom_pull(task_ids='write_report')['sign_off'] }}",
    )
    published = publish_round(report)
    report >> gate >> published
    push_review_queue(published)


synpref_stage1()
