"""
# synpref_stage2 — large-scale automatic curation (Skywork-Reward-V2, Figure 3 right)

No humans. Everything maps over **shards** (tens of thousands of pairs each), never over pairs:

1. **list_input_files** → **prepare_file** (mapped over input files) → **finalize_prepare**:
   structural checks, global dedup, decontamination, shards (or adopt an existing pool);
2. **score_shard** (mapped): best-RM and gold-RM p = σ(r_w − r_l) for every pair (gold pairs are
   marked and never scored by the gold RM);
3. **annotate_shard** (mapped over annotator × shard, pool `llm_api`): pairs with
   p_best ≤ 0.5 + band go to preference-aware LLM re-annotation with few-shot gold examples;
4. **decide_shard** (mapped): keep iff gold RM agrees AND (best RM agrees OR LLM judges agree);
   recycle (flip) per policy; else drop — every pair with its reason;
5. **check_conservation**: input = kept + recycled + dropped + quarantined + duplicates + contaminated,
   per shard and overall, or the run fails;
6. **export_dataset**: TRL-ready Parquet (`kept/`, `recycled/`), dataset card, manifest, Asset event.

Schedule: manual/UI by default; set `SYNPREF_STAGE2_SCHEDULE=asset` to run after every stage-1 round
(an asset-triggered run curates with the triggering round, in its storage root).
"""
from __future__ import annotations

import os

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from synpref_common import (BEST_RM, CURATED_DATASET, DEFAULT_ARGS, LLM_POOL, TAGS, TRAIN_QUEUE, annotation_params,
                            annotator_from_connection, root_param, round_name, storage_root, sub)


def _triggering_round(ctx) -> dict:
    """Extra ({root, round, uri}) of the newest stage-1 round event that triggered this run; {} for manual runs."""
    events = ctx.get("triggering_asset_events") or {}
    newest = sorted((e for evs in events.values() for e in evs), key=lambda e: e.timestamp)
    return dict(newest[-1].extra or {}) if newest else {}


def _ctx() -> tuple:
    """(params, storage root, stage-2 output dir) of the running task.

    An asset-triggered run curates with the round that triggered it, in that round's storage root,
    unless the params name a root or a round explicitly.
    """
    from synpref.stage2 import run_dir

    ctx = get_current_context()
    params = dict(ctx["params"])
    source = _triggering_round(ctx)
    if source and not params["root"]:
        params["root"] = source.get("root", "")
    if source and params["round"] == "latest":
        params["round"] = source.get("round", "latest")
    root = storage_root(params)
    return params, root, run_dir(root, params["run_name"] or round_name(ctx))


def _config(params: dict):
    from synpref.stage2 import Stage2Config

    return Stage2Config(band=params["band"], recycle_policy=params["recycle_policy"], shard_size=params["shard_size"], samples=params["samples"],
                        merge_policy=params["merge_policy"], max_examples=params["max_examples"], budget_usd=params["budget_usd"], seed=params["seed"])


@dag(
    dag_id="synpref_stage2",
    schedule=[BEST_RM] if os.environ.get("SYNPREF_STAGE2_SCHEDULE") == "asset" else None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=TAGS + ["stage2"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "root": root_param(),
        "input_uri": Param(None, type=["null", "string"], title="Input URI", section="Data",
                           description="In-the-wild pairs: a file/directory in any reader format, or an existing pool directory. Empty: <root>/wild/."),
        "benchmark_uri": Param(None, type=["null", "string"], title="Benchmark prompts URI", section="Data",
                               description="Decontamination list. Empty: <root>/benchmarks/prompts.txt if present."),
        "run_name": Param(None, type=["null", "string"], title="Run name", section="Data",
                          description="Output under <root>/stage2/<run name>/. Empty: the run's date."),
        "round": Param("latest", type="string", title="Stage-1 round", section="Consistency filtering",
                       description="Round (YYYY-MM-DD) supplying the best RM and gold RM; 'latest' = newest completed."),
        "band": Param(0.0, type="number", minimum=0.0, maximum=0.5, title="Band around 0.5", section="Consistency filtering",
                      description="Pairs with p_best in (0.5, 0.5+band] also go to LLM re-annotation."),
        "recycle_policy": Param("both_rms_reject", enum=["both_rms_reject", "all_discarded"], title="Recycle policy", section="Consistency filtering",
                                description="both_rms_reject: flip pairs both RMs reject (seed rule); all_discarded: flip every discarded pair (paper)."),
        "shard_size": Param(20000, type="integer", minimum=100, title="Shard size", section="Data"),
        **annotation_params(),
    },
)
def synpref_stage2():
    @task
    def resolve_source_round() -> str:
        from synpref.stage2 import resolve_round

        params, root, out = _ctx()
        if (out / "manifest.json").exists():  # re-run: incomplete until re-exported
            (out / "manifest.json").unlink()
        return resolve_round(root, params["round"])

    @task
    def list_input_files(rnd: str) -> list[list]:
        from synpref.stage2 import prepare_inputs
        from synpref.storage import list_files

        params, root, out = _ctx()
        for stale in list_files(out / "prepared" / "_staging"):
            stale.unlink()
        files, _ = prepare_inputs(sub(root, params["input_uri"], "wild"))
        return [[i, f] for i, f in enumerate(files)]

    @task(max_active_tis_per_dagrun=8)
    def prepare_file(item: list) -> dict:
        from synpref.stage2 import step_prepare_file

        _, _, out = _ctx()
        return step_prepare_file(out, item[0], item[1])

    @task(trigger_rule="none_failed")
    def finalize_prepare(file_counts: list[dict]) -> list[str]:
        from synpref.stage2 import prepare_inputs, step_finalize_prepare

        params, root, out = _ctx()
        _, pool = prepare_inputs(sub(root, params["input_uri"], "wild"))
        bench = sub(root, params["benchmark_uri"], "benchmarks/prompts.txt")
        return step_finalize_prepare(out, _config(params), bench if bench.exists() else None, pool)

    @task(queue=TRAIN_QUEUE, max_active_tis_per_dagrun=4)
    def score_shard(shard_uri: str, rnd: str) -> dict:
        from synpref.stage2 import step_score

        params, root, out = _ctx()
        return {"shard_uri": shard_uri, **step_score(root, out, rnd, shard_uri, _config(params))}

    @task
    def annotator_ids(rnd: str) -> list[str]:
        params, _, _ = _ctx()
        return list(params["annotators"])

    @task(pool=LLM_POOL, max_active_tis_per_dagrun=8)
    def annotate_shard(conn_id: str, score: dict, rnd: str) -> dict:
        from synpref.stage2 import step_annotate_shard

        params, root, out = _ctx()
        n_tasks = len(params["annotators"]) * max(1, len(get_current_context()["ti"].xcom_pull(task_ids="finalize_prepare") or []))
        return step_annotate_shard(root, out, rnd, score["shard_uri"], annotator_from_connection(conn_id), _config(params), n_tasks)

    @task(trigger_rule="none_failed", max_active_tis_per_dagrun=4)
    def decide_shard(score: dict, rnd: str) -> dict:
        from synpref.stage2 import step_decide

        params, root, out = _ctx()
        return step_decide(root, out, rnd, score["shard_uri"], list(params["annotators"]), _config(params))

    @task(trigger_rule="none_failed")
    def check_conservation(decisions: list[dict], shards: list[str]) -> dict:
        from synpref.stage2 import step_check_conservation

        _, _, out = _ctx()
        return step_check_conservation(out, shards)

    @task(outlets=[CURATED_DATASET])
    def export_dataset(counts: dict, rnd: str, outlet_events=None) -> dict:
        from synpref.stage2 import step_export

        params, _, out = _ctx()
        ctx = get_current_context()
        manifest = step_export(out, rnd, counts, _config(params), dict(params), date=round_name(ctx))
        outlet_events[CURATED_DATASET].extra = {"uri": str(out), "round": rnd, **counts}
        return {"out": str(out), **manifest["counts"]}

    rnd = resolve_source_round()
    shards = finalize_prepare(prepare_file.expand(item=list_input_files(rnd)))
    scores = score_shard.partial(rnd=rnd).expand(shard_uri=shards)
    annotations = annotate_shard.partial(rnd=rnd).expand(conn_id=annotator_ids(rnd), score=scores)
    decisions = decide_shard.partial(rnd=rnd).expand(score=scores)
    annotations >> decisions
    export_dataset(check_conservation(decisions, shards), rnd)


synpref_stage2()
