"""Curation reports: per-round numbers of stage 1 and the funnel of stage 2 (with accuracies
against a hidden truth when the data is synthetic)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .evaluation import accuracy_report, label_accuracy, truth_coverage
from .gold import is_validation
from .layout import Stage2Layout, StorageLayout, layout
from .storage import PathLike, read_json, read_parquet


def round_report(root: PathLike | StorageLayout, rnd: str, truth: pa.Table | None = None) -> dict:
    out = layout(root).round(rnd)
    manifest = read_json(out.manifest)
    ev = read_parquet(out.gold_eval).to_pylist()
    val = [e for e in ev if is_validation(e["pair_id"])]
    silver = read_parquet(out.silver)
    added = silver.filter(pc.and_(pc.equal(silver["provenance"], "llm"), pc.equal(silver["round"], rnd)))
    report = {
        "round": rnd,
        "previous_round": manifest["previous_round"],
        "gold": manifest["summary"]["gold"],
        "best_rm_gold_accuracy": manifest["summary"]["best_rm_gold_accuracy"],
        "best_rm_gold_validation_accuracy": sum(e["correct"] for e in val) / len(val) if val else None,
        "gold_rm_validation_accuracy": manifest["summary"]["gold_rm_validation_accuracy"],
        "retrieved": manifest["summary"]["retrieved"],
        "silver_added": added.num_rows,
        "silver_total": silver.num_rows,
        "review_queue": manifest["summary"]["review_queue"],
        "cost_usd": manifest["summary"]["cost_usd"],
    }
    if truth is not None:
        report["silver_added_accuracy_vs_truth"] = label_accuracy(added, truth)
        report["silver_added_truth_coverage"] = truth_coverage(added.column("pair_id").to_pylist(), truth)
    return report


def all_round_reports(root: PathLike | StorageLayout, truth: pa.Table | None = None) -> list[dict]:
    store = layout(root)
    return [round_report(store, r, truth) for r in store.completed_rounds()]


def stage2_report(out_dir: PathLike, truth: pa.Table | None = None) -> dict:
    manifest = read_json(Stage2Layout(out_dir).manifest)
    report = {"round": manifest["round"], **manifest["counts"]}
    if "quality_estimates" in manifest:
        report["quality_estimates"] = manifest["quality_estimates"]
    if truth is not None:
        report["label_accuracy_vs_truth"] = accuracy_report(out_dir, truth)
    return report


def fmt(x) -> str:
    """A report value for a table cell: 3 decimals for floats, n/a for missing."""
    return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
