"""
# synpref_prepare — raw preference data → the unverified pool

Pre-processing from the paper's appendix C, mapped over **input files** (never over pairs):

1. `list_inputs` — every `.jsonl/.json/.parquet/.csv` under the input URI (TRL conversational,
   prompt/chosen/rejected, HH-RLHF text or our own schema);
2. `normalize` (mapped, one task per file) — structural checks; bad records are quarantined with
   a reason, never dropped silently;
3. `finalize_pool` — global de-duplication, 13-gram decontamination against the benchmark
   prompts, Parquet shards under `<root>/pool/`, and a manifest (written last) whose counts
   satisfy `input = pool + duplicates + contaminated + quarantined` (checked; a mismatch fails).
"""
from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from synpref_common import DEFAULT_ARGS, TAGS, root_param, storage_root, sub


@dag(
    dag_id="synpref_prepare",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=TAGS + ["prepare"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "root": root_param(),
        "input_uri": Param(None, type=["null", "string"], title="Input URI", section="Data",
                           description="A file or directory of raw pairs. Empty: <root>/raw/."),
        "benchmark_uri": Param(None, type=["null", "string"], title="Benchmark prompts URI", section="Data",
                               description="Decontamination list: .txt (one prompt per line) or JSONL with 'prompt'. Empty: <root>/benchmarks/prompts.txt if present."),
        "pool_uri": Param(None, type=["null", "string"], title="Pool URI", section="Data", description="Output directory. Empty: <root>/pool/."),
        "shard_size": Param(20000, type="integer", minimum=100, title="Shard size", section="Data",
                            description="Pairs per pool shard (the unit of every mapped task downstream)."),
    },
)
def synpref_prepare():
    @task
    def list_inputs(params: dict | None = None) -> list[list]:
        from synpref.readers import input_files
        from synpref.storage import list_files

        root = storage_root(params)
        staging = sub(root, params["pool_uri"], "pool") / "_staging"
        for stale in list_files(staging):  # this task owns the staging dir of the run
            stale.unlink()
        files = input_files(sub(root, params["input_uri"], "raw"))
        return [[i, f] for i, f in enumerate(files)]

    @task(max_active_tis_per_dagrun=8)
    def normalize(item: list, params: dict | None = None) -> dict:
        from synpref.preprocess import normalize_file

        index, file_uri = item
        staging = sub(storage_root(params), params["pool_uri"], "pool") / "_staging"
        return normalize_file(file_uri, index, staging)

    @task
    def finalize_pool(file_counts: list[dict], params: dict | None = None) -> dict:
        from synpref.preprocess import PrepareConfig, finalize_pool

        root = storage_root(params)
        pool = sub(root, params["pool_uri"], "pool")
        bench = sub(root, params["benchmark_uri"], "benchmarks/prompts.txt")
        manifest = finalize_pool(pool / "_staging", pool, bench if bench.exists() else None, PrepareConfig(shard_size=params["shard_size"]))
        return {"pool_uri": str(pool), **manifest["counts"]}

    finalize_pool(normalize.expand(item=list_inputs()))


synpref_prepare()
