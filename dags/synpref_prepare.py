"""
# synpref_prepare — raw preference data → the unverified pool

Pre-processing from the paper's appendix C as a streaming map/reduce: memory is bounded by a batch
and a partition, never by the input's size (tasks map over files and partitions, never over pairs).

1. `list_inputs` — every `.jsonl/.json/.parquet/.csv` (optionally `.gz`/`.zst`) under the input URI
   (TRL conversational, prompt/chosen/rejected, HH-RLHF text or our own schema) as work items (a
   JSON-lines file over 64 MiB: one item per 64 MiB range), and the number of hash partitions (one
   per 64 MiB of input);
2. `normalize` (mapped, one task per item) — structural checks in batches; bad records are
   quarantined with a reason, never dropped silently; valid pairs are hash-partitioned by content;
3. `list_partitions` → `reduce_partition` (mapped, one task per partition) — global de-duplication
   (exact and mirrored copies share a partition), 13-gram decontamination against the benchmark
   prompts; each partition's kept pairs become its shards;
4. `write_pool` — the partitions one after the other: Parquet shards under `<root>/pool/`, one table
   per rule, the quarantine, and a manifest (written last) whose counts satisfy
   `input = pool + duplicates + contaminated + quarantined` (checked; a mismatch fails).

Docs: `docs/concepts.md` (the pool and its layout), `docs/getting-started.md` (input formats), `docs/configuration.md`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from synpref.settings import PrepareConfig
from synpref_common import DEFAULT_ARGS, ROOT_PARAM, TAGS, existing, optional_param, path_or, setting_params, storage


def _pool(params: dict):
    from synpref.io.layout import PoolLayout

    store = storage(params)
    return store, PoolLayout(path_or(params["pool_uri"], store.pool.dir))


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
        "root": ROOT_PARAM,
        "input_uri": optional_param("Input URI", "A file or directory of raw pairs. Empty: <root>/raw/.", "Data"),
        "benchmark_uri": optional_param(
            "Benchmark prompts URI",
            "Decontamination list: .txt (one prompt per line) or JSONL with 'prompt'. "
            "Empty: <root>/benchmarks/prompts.txt if present.",
            "Data",
        ),
        "pool_uri": optional_param("Pool URI", "Output directory. Empty: <root>/pool/.", "Data"),
        **setting_params(PrepareConfig),
    },
)
def synpref_prepare():
    @task
    def list_inputs(params: dict | None = None) -> list[list]:
        from synpref.io.preprocess import clear_staging, map_items, plan_run
        from synpref.io.readers import scan_inputs

        store, pool = _pool(params)
        scan = scan_inputs(path_or(params["input_uri"], store.raw))
        clear_staging(pool)  # this task owns the staging dir of the run
        plan_run(pool, scan.files, scan.skipped)
        return map_items(scan.files)

    @task(max_active_tis_per_dagrun=8)
    def normalize(item: list, params: dict | None = None) -> dict:
        from synpref.io.preprocess import normalize_file

        index, file_uri, split = item
        return normalize_file(file_uri, index, _pool(params)[1], split=split)

    @task
    def list_partitions(file_counts: list[dict], params: dict | None = None) -> list[int]:
        from synpref.io.preprocess import partitions

        return partitions(_pool(params)[1])

    @task(max_active_tis_per_dagrun=8)
    def reduce_partition(partition: int, params: dict | None = None) -> dict:
        from synpref.io.preprocess import reduce_partition
        from synpref.settings import from_flat

        store, pool = _pool(params)
        bench = existing(path_or(params["benchmark_uri"], store.benchmark_prompts))
        return {"partition": partition, **reduce_partition(pool, partition, bench, from_flat(PrepareConfig, params))}

    @task
    def write_pool(reduced: list[dict], params: dict | None = None) -> dict:
        from synpref.io.preprocess import write_pool
        from synpref.settings import from_flat

        _, pool = _pool(params)
        manifest = write_pool(pool, from_flat(PrepareConfig, params))
        return {"pool_uri": str(pool.dir), **manifest.counts}

    write_pool(reduce_partition.expand(partition=list_partitions(normalize.expand(item=list_inputs()))))


synpref_prepare()
