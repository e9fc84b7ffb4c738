"""
# synpref_stage1 — one human-in-the-loop curation round per run (Skywork-Reward-V2, Figure 3 left)

A run's **logical date names the round** (`rounds/<YYYY-MM-DD>/`). Nightly: humans verify the
previous round's review queue during the day (Label Studio export into `inbox/<date>/`), the DAG
closes the round at night. `max_active_runs=1` + `depends_on_past` make backfills run rounds in
date order; each round reads the newest completed round before its date (or the seed) and writes
only under its own prefix, manifest last.

0. **wait_for_previous_round** — a round starts only once every earlier round it could read is
   published (backfills may start several runs at once; `depends_on_past` alone orders tasks, not rounds);
1. **human_verification_intake** — inbox → cumulative gold (+ gold-train/validation), discarded;
2. **generate_attributes** (mapped over pool shards, LLM, cached) → **embed_pool_shard** (mapped);
3. **train_best_rm** (Bradley-Terry on silver, checkpoint by gold accuracy) and **train_gold_rm**
   (on gold-train, checkpoint by gold-validation);
4. **evaluate_on_gold** — p = σ(r_w − r_l) per gold pair, accuracy overall / per category;
5. **adaptive_retrieval** — k = k_max if p ≤ 0.5 else ⌈k_max(1−p)⌉ neighbours per gold pair;
6. **annotate** (mapped over annotator connections, pool `llm_api`) — preference-aware judging;
7. **merge_silver_and_review_queue** — agreeing verdicts → silver; contested → review queue;
8. **publish_round** — manifest + Asset events (best RM, gold RM, gold/silver sets).
"""
from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, PokeReturnValue, dag, get_current_context, task

from synpref_common import (BEST_RM, DEFAULT_ARGS, GOLD_RM, GOLD_SILVER, LLM_POOL, TAGS, TRAIN_QUEUE, annotation_params,
                            annotator_from_connection, rm_config, rm_params, root_param, round_name, storage_root, sub)


POKE_S = int(os.environ.get("SYNPREF_SENSOR_POKE_S", "60"))


def _ctx() -> tuple:
    """(params, storage root, round) of the running task."""
    ctx = get_current_context()
    return ctx["params"], storage_root(ctx["params"]), round_name(ctx)


def _config(params: dict):
    from synpref.stage1 import Stage1Config

    rm = rm_config(params, params["seed"])
    return Stage1Config(k_max=params["k_max"], samples=params["samples"], merge_policy=params["merge_policy"], max_examples=params["max_examples"],
                        best_rm=rm, gold_rm=rm, budget_usd=params["budget_usd"], seed=params["seed"], spot_check=params["spot_check"])


@dag(
    dag_id="synpref_stage1",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=TAGS + ["stage1"],
    default_args={**DEFAULT_ARGS, "depends_on_past": True},
    doc_md=__doc__,
    params={
        "root": root_param(),
        "pool_uri": Param(None, type=["null", "string"], title="Unverified pool URI", section="Storage", description="Empty: <root>/pool/ (made by synpref_prepare)."),
        "inbox_uri": Param(None, type=["null", "string"], title="Inbox URI", section="Storage",
                           description="Human verifications of this round. Empty: <root>/inbox/<round date>/."),
        "k_max": Param(8, type="integer", minimum=1, maximum=64, title="k_max", section="Adaptive retrieval",
                       description="Neighbours pulled for each gold pair the RM gets wrong (fewer when it is confidently right)."),
        "spot_check": Param(20, type="integer", minimum=0, title="Spot-check sample", section="Adaptive retrieval",
                            description="New silver pairs also queued for human review each round."),
        "attribute_annotator": Param(None, type=["null", "string"], title="Attribute annotator connection", section="LLM annotation",
                                     description="Connection generating the 5 preference attributes of pool pairs. Empty: the first annotator."),
        **annotation_params(),
        **rm_params(),
    },
)
def synpref_stage1():
    # reschedule mode frees the worker slot between pokes; the check is idempotent, so it always gets retries
    # (a reschedule can race the scheduler's bookkeeping under a short poke interval)
    @task.sensor(poke_interval=POKE_S, timeout=24 * 3600, mode="reschedule", retries=3, retry_delay=timedelta(seconds=POKE_S))
    def wait_for_previous_round() -> PokeReturnValue:
        from synpref.stage1 import begin_round

        _, root, rnd = _ctx()
        pending = begin_round(root, rnd)
        if pending:
            print(f"round {rnd} waits for earlier rounds to publish: {pending}")
        return PokeReturnValue(is_done=not pending, xcom_value=pending)

    @task
    def human_verification_intake() -> dict:
        from synpref.stage1 import step_intake

        params, root, rnd = _ctx()
        inbox = sub(root, params["inbox_uri"], f"inbox/{rnd}")
        return {"round": rnd, **step_intake(root, rnd, inbox, _config(params))}

    @task
    def list_pool_shards() -> list[str]:
        from synpref.preprocess import pool_shards

        params, root, _ = _ctx()
        return pool_shards(sub(root, params["pool_uri"], "pool"))

    @task(pool=LLM_POOL, max_active_tis_per_dagrun=4)
    def generate_attributes(shard_uri: str) -> dict:
        from synpref.stage1 import step_attributes

        params, root, rnd = _ctx()
        conn = params["attribute_annotator"] or (params["annotators"][0] if params["annotators"] else "")
        return step_attributes(root, rnd, shard_uri, annotator_from_connection(conn) if conn else None, _config(params))

    @task(max_active_tis_per_dagrun=4)
    def embed_pool_shard(attributes: dict) -> dict:
        from synpref.stage1 import step_embed_shard

        _, root, rnd = _ctx()
        return step_embed_shard(root, rnd, attributes["shard"])

    @task(queue=TRAIN_QUEUE)
    def train_best_rm(intake: dict) -> dict:
        from synpref.stage1 import step_train

        params, root, rnd = _ctx()
        return step_train(root, rnd, "best", _config(params))

    @task(queue=TRAIN_QUEUE)
    def train_gold_rm(intake: dict) -> dict:
        from synpref.stage1 import step_train

        params, root, rnd = _ctx()
        return step_train(root, rnd, "gold", _config(params))

    @task(queue=TRAIN_QUEUE)
    def evaluate_on_gold(best: dict, gold: dict) -> dict:
        from synpref.stage1 import step_evaluate

        _, root, rnd = _ctx()
        return step_evaluate(root, rnd)

    @task
    def adaptive_retrieval(evaluation: dict, embedded: list[dict]) -> dict:
        from synpref.stage1 import step_retrieve

        params, root, rnd = _ctx()
        return step_retrieve(root, rnd, _config(params))

    @task
    def annotator_ids(retrieval: dict) -> list[str]:
        params, _, _ = _ctx()
        return list(params["annotators"])

    @task(pool=LLM_POOL, max_active_tis_per_dagrun=8)
    def annotate(conn_id: str) -> dict:
        from synpref.stage1 import step_annotate

        params, root, rnd = _ctx()
        return step_annotate(root, rnd, annotator_from_connection(conn_id), _config(params), len(params["annotators"]))

    @task
    def merge_silver_and_review_queue(annotations: list[dict]) -> dict:
        from synpref.stage1 import step_merge

        params, root, rnd = _ctx()
        info = step_merge(root, rnd, [a["annotator"] for a in annotations], _config(params))
        return {k: info[k] for k in ("silver_total", "review_queue", "cost_usd", "tokens")}

    @task(outlets=[BEST_RM, GOLD_RM, GOLD_SILVER])
    def publish_round(merged: dict, outlet_events=None) -> dict:
        from synpref.stage1 import round_dir, step_publish

        params, root, rnd = _ctx()
        manifest = step_publish(root, rnd, dict(params))
        extra = {"round": rnd, "root": str(root), "uri": str(round_dir(root, rnd))}
        for asset in (BEST_RM, GOLD_RM, GOLD_SILVER):
            outlet_events[asset].extra = extra
        return {"round": rnd, "manifest": str(round_dir(root, rnd) / "manifest.json"), **manifest["summary"]}

    ready = wait_for_previous_round()
    intake, shards = human_verification_intake(), list_pool_shards()
    ready >> [intake, shards]
    attributes = generate_attributes.expand(shard_uri=shards)
    embedded = embed_pool_shard.expand(attributes=attributes)
    intake >> attributes
    evaluation = evaluate_on_gold(train_best_rm(intake), train_gold_rm(intake))
    retrieval = adaptive_retrieval(evaluation, embedded)
    annotations = annotate.expand(conn_id=annotator_ids(retrieval))
    publish_round(merge_silver_and_review_queue(annotations))


synpref_stage1()
