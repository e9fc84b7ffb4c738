"""Each stage's steps in the DAG's order, in one process (the CLI, the harness, the tests).

The DAG files run the same ``step_*`` functions as Airflow tasks (mapped over shards and annotators);
here they run one after the other, and nothing between them is re-implemented. The HTML report is
written after the manifest, as the DAGs' report tasks do.
"""

from __future__ import annotations

from typing import Any

from synpref.io.layout import StorageLayout, layout
from synpref.io.preprocess import map_items
from synpref.io.storage import PathLike, WriterLock, as_path
from synpref.llm.client import AnnotatorConfig
from synpref.progress import log
from synpref.reporting.report import write_round_report, write_stage2_report
from synpref.settings import Stage1Config, Stage2Config
from synpref.stage1.steps import (
    sign_off_required,
    step_annotate,
    step_attributes,
    step_embed_shard,
    step_evaluate,
    step_intake,
    step_merge,
    step_publish,
    step_retrieve,
    step_rm_benchmarks,
    step_train,
)
from synpref.stage2.downstream import step_downstream
from synpref.stage2.steps import (
    Stage2Run,
    begin_run,
    end_run,
    prepare_inputs,
    step_annotate_shard,
    step_check_conservation,
    step_decide,
    step_estimate,
    step_export,
    step_finalize_prepare,
    step_prepare_file,
    step_score,
)


def run_round(
    root: PathLike | StorageLayout,
    rnd: str,
    annotators: list[AnnotatorConfig],
    cfg: Stage1Config = Stage1Config(),
    attribute_annotator: AnnotatorConfig | None = None,
    inbox: PathLike | None = None,
    params: dict | None = None,
) -> dict[str, Any]:
    """A whole stage-1 round: the manifest (as JSON) and the report's path under ``report``. One writer per
    round: a second in-process run of the same date is refused while this one runs."""
    store = layout(root)
    lock = WriterLock.for_process(store.round(rnd).lock)
    lock.acquire()
    try:
        attributes_by = attribute_annotator or (annotators[0] if annotators else None)
        step_intake(store, rnd, inbox, cfg, attributes_by)
        for shard in store.pool.shard_uris():
            step_attributes(store, rnd, shard, attributes_by, cfg)
            step_embed_shard(store, rnd, as_path(shard).name)
        step_train(store, rnd, "best", cfg)
        step_train(store, rnd, "gold", cfg)
        step_evaluate(store, rnd)
        step_rm_benchmarks(store, rnd, cfg.benchmark_uris)
        step_retrieve(store, rnd, cfg)
        for a in annotators:
            step_annotate(store, rnd, a, cfg, len(annotators))
        step_merge(store, rnd, [a.name for a in annotators], cfg)
        required = sign_off_required(store, rnd, cfg)
        if required:  # in process there is no one to ask: say so loudly (the DAG waits for a human)
            log.warning("round %s: %s (the DAG would wait for a sign-off; published anyway)", rnd, required)
        manifest = step_publish(store, rnd, params)
        return {**manifest.dump(), "report": write_round_report(store, rnd)}
    finally:
        lock.release()


def run_stage2(
    root: PathLike | StorageLayout,
    out_dir: PathLike,
    input_uri: PathLike,
    annotators: list[AnnotatorConfig],
    rnd: str = "latest",
    cfg: Stage2Config = Stage2Config(),
    benchmark_uri: PathLike | None = None,
    params: dict | None = None,
) -> dict[str, Any]:
    """The whole of stage 2: the manifest (as JSON) and the report's path under ``report``."""
    store = layout(root)
    ctx = Stage2Run.at(store, out_dir, store.resolve_round(rnd), cfg)
    run = begin_run(ctx.run)  # refuses an output that is not a stage-2 run's, or one another writer holds
    try:
        files, pool = prepare_inputs(input_uri, run)
        for i, f, split in map_items(files):
            step_prepare_file(run, i, f, split)
        shards = step_finalize_prepare(run, cfg, benchmark_uri, pool)
        for shard in shards:
            step_score(ctx, shard)
            step_annotate_shard(ctx, shard, annotators, max(1, len(shards)))
            step_decide(ctx, shard, [a.name for a in annotators])
        counts = step_check_conservation(run, shards)
        step_downstream(ctx)
        step_estimate(ctx, counts, annotators)
        manifest = step_export(ctx, counts, params)
        return {**manifest.dump(), "report": write_stage2_report(run)}
    finally:
        end_run(run)
