"""Stage 2: large-scale automatic curation (paper §3.3, Figure 3 right), sharded and bounded in memory.

prepare (pre-processing into shards, here) → score (``stage2.score``: the best-RM and gold-RM logits per shard; the
decision rule fitted to the shard, stored with it, routes pairs to the judges) → judge (``stage2.judge``: LLM
re-annotation with few-shot gold examples, per shard, annotators in sequence) → decide (``stage2.decide``:
``consistency.decide_shard``, keep / recycle / drop per shard; the conservation check) → export
(``stage2.export``: quality estimates, then the TRL-ready Parquet's card and manifest). The run's lifecycle (its
output checked, its writer lock) is here too.

Every step takes layouts, never paths: a shard step and the estimate/export steps take the run's ``Stage2Run``
(storage root, output, source round, settings), built once by the caller; the run-wide steps take the output's
``Stage2Layout``. Each step's docstring names what it reads and writes in the layout's names. The DAG, the
pipeline and the harness import the steps from here.
"""

from __future__ import annotations

from synpref.io.layout import PoolLayout, Stage2Layout
from synpref.io.preprocess import clear_staging, finalize_pool, normalize_file, plan_run
from synpref.io.readers import scan_inputs
from synpref.io.storage import PathLike, StorageError, WriterLock, as_path, read_json
from synpref.records import PoolSource
from synpref.settings import PrepareConfig, Stage2Config
from synpref.stage2.context import Stage2Run, run_shards
from synpref.stage2.decide import step_check_conservation, step_decide
from synpref.stage2.export import judging_bill, step_estimate, step_export
from synpref.stage2.judge import merged_verdicts, step_annotate_shard
from synpref.stage2.score import step_score

__all__ = [
    "Stage2Run",
    "begin_run",
    "end_run",
    "judging_bill",
    "merged_verdicts",
    "prepare_inputs",
    "run_shards",
    "step_annotate_shard",
    "step_check_conservation",
    "step_decide",
    "step_estimate",
    "step_export",
    "step_finalize_prepare",
    "step_prepare_file",
    "step_score",
]

# --- prepare -------------------------------------------------------------------------------


def prepare_inputs(input_uri: PathLike, run: Stage2Layout | None = None) -> tuple[list[str], str | None]:
    """(raw input files, None) or ([], pool dir) when the input is an existing pool (has a pool manifest).

    With ``run``, the input paths skipped (and why) are recorded for the run's pool manifest (``prepared``)."""
    manifest = PoolLayout(input_uri).manifest
    if manifest.exists() and read_json(manifest).get("kind") == "pool":  # a pool, not a stage-2 run's output
        return [], str(as_path(input_uri))
    scan = scan_inputs(input_uri)
    if run is not None:
        plan_run(run.prepared, scan.files, scan.skipped)
    return scan.files, None


def step_prepare_file(run: Stage2Layout, index: int, file_uri: str, split: list[int] | None = None) -> dict:
    """The map step of the run's own input preparation: one file, or one range of a large JSON-lines file
    → ``prepared`` staging."""
    return normalize_file(file_uri, index, run.prepared, split=split)


def step_finalize_prepare(
    run: Stage2Layout, cfg: Stage2Config, benchmark_uri: PathLike | None = None, source_pool: str | None = None
) -> list[str]:
    """Global dedup/decontam/shards of the ``prepared`` staging (or adopt an existing pool: ``prepared.source``)
    → the run's pool shards; returns their URIs."""
    prepared = run.prepared
    if source_pool:
        PoolSource(source_pool=source_pool).write(prepared.source)
        return PoolLayout(source_pool).shard_uris()
    if prepared.source.exists():
        prepared.source.unlink()
    finalize_pool(prepared, benchmark_uri, PrepareConfig(shard_size=cfg.shard_size))
    return prepared.shard_uris()


# --- the run's lifecycle ---------------------------------------------------------------------


STAGE2_ENTRIES = {"prepared", "shards", "estimates.json", ".writer.lock"}  # what only a stage-2 output holds


def check_output(run: Stage2Layout) -> None:
    """Refuse an output that is not a stage-2 run's (a round, the pool, a root, any other folder), before
    anything in it is touched: a new or empty folder, or a stage-2 output (finished or not)."""
    if not run.dir.exists():
        return
    if run.manifest.exists():
        try:
            kind = read_json(run.manifest).get("kind")
        except (ValueError, AttributeError):
            kind = None
        if kind != "stage2_run":
            raise StorageError(
                f"{run.dir} is not a stage-2 output (its manifest.json is a {kind or 'foreign'} manifest): "
                "nothing was changed; choose a new or empty folder for --out"
            )
        return
    names = {p.name for p in run.dir.iterdir()}
    if names and not names & STAGE2_ENTRIES:
        raise StorageError(
            f"{run.dir} is not empty and is not a stage-2 output: nothing was changed; "
            "choose a new or empty folder for --out"
        )


def begin_run(run: Stage2Layout, lock: WriterLock | None = None) -> Stage2Layout:
    """Check the output is a stage-2 run's, take its writer lock (this process's unless ``lock``), then drop
    its manifest and the staging of a previous run: a (re-)run is incomplete until re-exported."""
    check_output(run)
    (lock or WriterLock.for_process(run.lock)).acquire()
    if run.manifest.exists():
        run.manifest.unlink()
    clear_staging(run.prepared)
    return run


def end_run(run: Stage2Layout, lock: WriterLock | None = None) -> None:
    """Release the run's writer lock (after the export, or when an in-process run stops)."""
    (lock or WriterLock.for_process(run.lock)).release()
