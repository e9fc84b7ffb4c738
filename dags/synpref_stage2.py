"""
# synpref_stage2 — large-scale automatic curation (Skywork-Reward-V2, Figure 3 right)

No humans. Everything maps over **shards** (tens of thousands of pairs each), never over pairs:

1. **list_input_files** → **prepare_file** (mapped over input files) → **finalize_prepare**:
   structural checks, global dedup, decontamination, shards (or adopt an existing pool);
2. **score_shard** (mapped): best-RM and gold-RM reward differences for every pair (gold pairs are
   marked and never scored); the decision rule (`decision_rule`) is fitted to the shard and stored with
   it, and routes pairs to the judges — `reliability` (default): every pair whose confidence from the
   RMs alone is below `rm_only_confidence`; `paper`: p_best ≤ 0.5 + band;
3. **annotate_shard** (mapped over shards, pool `llm_api`): the routed pairs (and blind canaries) get
   preference-aware LLM re-annotation with few-shot gold examples; the annotators judge one after another,
   and a pair goes to the next only while the rule leaves it open (`judges_in_sequence`); annotators with
   `mode: batch` are asked through the OpenAI Batch API, the task deferred while a batch runs;
4. **decide_shard** (mapped): the stored rule decides every pair — `reliability`: keep when the
   confidence from RMs, judges and prior reaches the kept set's target precision, flip on positive
   evidence; `paper`: keep iff gold RM agrees AND (best RM agrees OR LLM judges agree), recycle per
   policy — every pair with its reason;
5. **check_conservation**: input = kept + recycled + dropped + quarantined + duplicates + contaminated,
   per shard and overall, or the run fails;
6. **downstream_check** (optional, `downstream_pairs`: RMs trained on the curated set and on the raw input, on the
   RM benchmarks → `downstream.json`) → **estimate_quality** (blind canaries → `estimates.json`) →
   **write_report** (HTML report with figures, `report/`; the card shows three of them) →
   **sign_off_export** (optional approval, param `sign_off`) → **export_dataset**: dataset card, manifest
   (TRL-ready Parquet in `kept/`, `recycled/`), Asset event.

Schedule: manual/UI by default; set `SYNPREF_STAGE2_SCHEDULE=asset` to run after every stage-1 round
(an asset-triggered run curates with the triggering round, in its storage root).

Docs: `docs/decision-model.md` (keep, flip, drop; the frontier), `docs/scale.md` (judging cost),
`docs/configuration.md`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from synpref.environment import env
from synpref.settings import Stage2Config, Stage2Source
from synpref_common import (
    ANNOTATORS_PARAM,
    BATCH_POLL_S,
    BEST_RM,
    CURATED_DATASET,
    DEFAULT_ARGS,
    LLM_POOL,
    RM_POOL,
    ROOT_PARAM,
    SCORE_PARALLELISM,
    SIGN_OFF_PARAMS,
    TAGS,
    TRAIN_QUEUE,
    BatchJudging,
    SignOff,
    annotator_from_connection,
    existing,
    no_retry_if_misconfigured,
    optional_param,
    path_or,
    round_name,
    run_lock,
    setting_params,
    storage,
)


def _triggering_round(triggering_asset_events) -> dict:
    """Extra ({root, round, uri}) of the newest stage-1 round event that triggered this run; {} for manual runs."""
    events = triggering_asset_events or {}
    newest = sorted((e for evs in events.values() for e in evs), key=lambda e: e.timestamp)
    return dict(newest[-1].extra or {}) if newest else {}


def _annotators(context) -> dict:
    """The run's annotators by connection id."""
    return {c: annotator_from_connection(c) for c in context["params"]["annotators"]}


def _source(params: dict, triggering_asset_events=None) -> dict:
    """The params with the source round's root and round: an asset-triggered run curates with the round that
    triggered it, in that round's storage root, unless the params name a root or a round explicitly."""
    params = dict(params)
    source = _triggering_round(triggering_asset_events)
    if source and not params["root"]:
        params["root"] = source.get("root", "")
    if source and params["round"] == "latest":
        params["round"] = source.get("round", "latest")
    return params


def _ctx(params: dict, dag_run, triggering_asset_events=None, rnd: str = ""):
    """The running task's ``Stage2Run`` (storage root, output, source round, settings), built once per task."""
    from synpref.settings import from_flat
    from synpref.stage2.context import Stage2Run

    params = _source(params, triggering_asset_events)
    store = storage(params)
    run = store.stage2(params["run_name"] or round_name(dag_run))
    return Stage2Run(store, run, rnd or params["round"], from_flat(Stage2Config, params))


@dag(
    dag_id="synpref_stage2",
    schedule=[BEST_RM] if env("SYNPREF_STAGE2_SCHEDULE") == "asset" else None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=TAGS + ["stage2"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "root": ROOT_PARAM,
        "input_uri": optional_param(
            "Input URI",
            "In-the-wild pairs: a file/directory in any reader format, or an existing pool directory. Empty: "
            "<root>/wild/.",
            "Data",
        ),
        "benchmark_uri": optional_param(
            "Benchmark prompts URI", "Decontamination list. Empty: <root>/benchmarks/prompts.txt if present.", "Data"
        ),
        "run_name": optional_param(
            "Run name", "Output under <root>/stage2/<run name>/. Empty: the run's date.", "Data"
        ),
        "annotators": ANNOTATORS_PARAM,
        **setting_params(Stage2Source, Stage2Config),
        **SIGN_OFF_PARAMS,
    },
)
def synpref_stage2():
    @task
    def resolve_source_round(params: dict | None = None, dag_run=None, triggering_asset_events=None, ti=None) -> str:
        from synpref.stage2.steps import begin_run

        ctx = _ctx(params, dag_run, triggering_asset_events)
        begin_run(
            ctx.run, run_lock(ctx.run, dag_run, ti)
        )  # one DAG run writes an output; incomplete until re-exported
        return ctx.store.resolve_round(ctx.rnd)

    @task
    def list_input_files(
        rnd: str, params: dict | None = None, dag_run=None, triggering_asset_events=None
    ) -> list[list]:
        from synpref.io.preprocess import map_items
        from synpref.stage2.steps import prepare_inputs

        ctx = _ctx(params, dag_run, triggering_asset_events, rnd)
        files, _ = prepare_inputs(path_or(params["input_uri"], ctx.store.wild), ctx.run)
        return map_items(files)

    @task(max_active_tis_per_dagrun=8)
    def prepare_file(item: list, params: dict | None = None, dag_run=None, triggering_asset_events=None) -> dict:
        from synpref.stage2.steps import step_prepare_file

        return step_prepare_file(_ctx(params, dag_run, triggering_asset_events).run, *item)

    @task(trigger_rule="none_failed")
    def finalize_prepare(
        file_counts: list[dict], params: dict | None = None, dag_run=None, triggering_asset_events=None
    ) -> list:
        from synpref.stage2.steps import prepare_inputs, step_finalize_prepare

        ctx = _ctx(params, dag_run, triggering_asset_events)
        _, pool = prepare_inputs(path_or(params["input_uri"], ctx.store.wild))
        bench = existing(path_or(params["benchmark_uri"], ctx.store.benchmark_prompts))
        step_finalize_prepare(ctx.run, ctx.cfg, bench, pool)
        return ctx.run.pool().shards()

    @task(queue=TRAIN_QUEUE, pool=RM_POOL, max_active_tis_per_dagrun=SCORE_PARALLELISM)
    def score_shard(shard, rnd: str, params: dict | None = None, dag_run=None, triggering_asset_events=None) -> dict:
        from synpref.stage2.steps import step_score

        ctx = _ctx(params, dag_run, triggering_asset_events, rnd)
        with no_retry_if_misconfigured():
            return {"shard_uri": shard, **step_score(ctx, shard).for_xcom()}

    def judge_shard(context, score: dict, pending: list) -> dict:
        from synpref.stage2.steps import step_annotate_shard

        ti = context["ti"]
        rnd = ti.xcom_pull(task_ids="resolve_source_round")
        ctx = _ctx(context["params"], context["dag_run"], context.get("triggering_asset_events"), rnd)
        n_tasks = max(1, len(ti.xcom_pull(task_ids="finalize_prepare") or []))
        with no_retry_if_misconfigured():
            annotators = list(_annotators(context).values())
            return step_annotate_shard(ctx, score["shard_uri"], annotators, n_tasks, pending)

    def batch_places(context, score: dict) -> tuple:
        ctx = _ctx(context["params"], context["dag_run"], context.get("triggering_asset_events"))
        return _annotators(context), ctx.store.llm_cache, ctx.run.shard(score["shard_uri"]).batches

    @task(trigger_rule="none_failed", max_active_tis_per_dagrun=4)
    def decide_shard(
        score: dict, rnd: str, params: dict | None = None, dag_run=None, triggering_asset_events=None
    ) -> dict:
        from synpref.stage2.steps import step_decide

        ctx = _ctx(params, dag_run, triggering_asset_events, rnd)
        return step_decide(ctx, score["shard_uri"], list(params["annotators"])).for_xcom()

    @task(trigger_rule="none_failed")
    def check_conservation(
        decisions: list[dict], shards: list, params: dict | None = None, dag_run=None, triggering_asset_events=None
    ) -> dict:
        from synpref.stage2.steps import step_check_conservation

        return step_check_conservation(_ctx(params, dag_run, triggering_asset_events).run, shards)

    @task(queue=TRAIN_QUEUE, pool=RM_POOL)
    def downstream_check(
        counts: dict, rnd: str, params: dict | None = None, dag_run=None, triggering_asset_events=None
    ) -> dict:
        """Optional (``downstream_pairs``): RMs trained on the curated set and on the raw input, on RM benchmarks;
        passes the counts on."""
        from synpref.stage2.downstream import step_downstream

        step_downstream(_ctx(params, dag_run, triggering_asset_events, rnd))
        return counts

    @task
    def estimate_quality(
        counts: dict, rnd: str, params: dict | None = None, dag_run=None, triggering_asset_events=None
    ) -> dict:
        from synpref.stage2.steps import step_estimate

        ctx = _ctx(params, dag_run, triggering_asset_events, rnd)
        judges = [annotator_from_connection(c) for c in params["annotators"]]
        return step_estimate(ctx, counts, judges).dump()

    @task(outlets=[CURATED_DATASET])
    def export_dataset(
        counts: dict,
        rnd: str,
        params: dict | None = None,
        dag_run=None,
        triggering_asset_events=None,
        outlet_events=None,
        ti=None,
    ) -> dict:
        from synpref.stage2.steps import end_run, step_export

        ctx = _ctx(params, dag_run, triggering_asset_events, rnd)
        manifest = step_export(ctx, counts, _source(params, triggering_asset_events), date=round_name(dag_run))
        end_run(ctx.run, run_lock(ctx.run, dag_run, ti))
        outlet_events[CURATED_DATASET].extra = {"uri": str(ctx.run.dir), "round": rnd, **counts}
        return {"out": str(ctx.run.dir), **manifest.counts}

    @task
    def write_report(estimates: dict, params: dict | None = None, dag_run=None, triggering_asset_events=None) -> dict:
        from synpref.reporting.report import stage2_sign_off, write_stage2_report

        run = _ctx(params, dag_run, triggering_asset_events).run
        uri = write_stage2_report(run)
        return {"uri": uri, "sign_off": stage2_sign_off(run, uri)}

    rnd = resolve_source_round()
    shards = finalize_prepare(prepare_file.expand(item=list_input_files(rnd)))
    scores = score_shard.partial(rnd=rnd).expand(shard=shards)
    annotations = BatchJudging.partial(
        task_id="annotate_shard",
        judge=judge_shard,
        places=batch_places,
        poll_interval=BATCH_POLL_S,
        pool=LLM_POOL,
        max_active_tis_per_dagrun=8,
    ).expand(item=scores)
    decisions = decide_shard.partial(rnd=rnd).expand(score=scores)
    annotations >> decisions
    counts = check_conservation(decisions, shards)
    report = write_report(estimate_quality(downstream_check(counts, rnd), rnd))
    gate = SignOff(
        task_id="sign_off_export",
        subject="Export the curated dataset of this stage-2 run?",
        body="{{ ti.xcom_pull(task_ids='write_report')['sign_off'] }}",
    )
    report >> gate >> export_dataset(counts, rnd)


synpref_stage2()
