"""Curation reports: per-round numbers of stage 1 and the funnel of stage 2 (with accuracies
against a hidden truth when the data is synthetic)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .gold import is_validation
from .stage1 import completed_rounds, round_dir
from .storage import PathLike, as_path, read_json, read_parquet
from .synthetic import label_accuracy


def round_report(root: PathLike, rnd: str, truth: pa.Table | None = None) -> dict:
    out = round_dir(root, rnd)
    manifest = read_json(out / "manifest.json")
    ev = read_parquet(out / "gold_eval.parquet").to_pylist()
    val = [e for e in ev if is_validation(e["pair_id"])]
    silver = read_parquet(out / "silver.parquet")
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
    return report


def all_round_reports(root: PathLike, truth: pa.Table | None = None) -> list[dict]:
    return [round_report(root, r, truth) for r in completed_rounds(root)]


def stage2_report(out_dir: PathLike, truth: pa.Table | None = None) -> dict:
    from .stage2 import accuracy_report

    manifest = read_json(as_path(out_dir) / "manifest.json")
    report = {"round": manifest["round"], **manifest["counts"]}
    if truth is not None:
        report["label_accuracy_vs_truth"] = accuracy_report(out_dir, truth)
    return report


def fmt(x) -> str:
    """A report value for a table cell: 3 decimals for floats, n/a for missing."""
    return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
