"""Evaluation against a hidden truth (synthetic data only): how accurate are labels, verdicts and curated sets.

Kept apart from the pipeline's steps: production code never needs a truth.
"""

from __future__ import annotations

import pyarrow as pa

from synpref.io.layout import DECISIONS, Stage2Layout
from synpref.io.storage import PathLike, list_files, read_parquet


def label_accuracy(pairs: pa.Table, truth: pa.Table) -> float | None:
    """Fraction of pairs whose stored chosen response is the truly better one (None if no overlap)."""
    better = {t["pair_id"]: t["better"] for t in truth.select(["pair_id", "better"]).to_pylist()}
    rows = [r for r in pairs.select(["pair_id", "chosen"]).to_pylist() if r["pair_id"] in better]
    if not rows:
        return None
    return sum(better[r["pair_id"]] == r["chosen"] for r in rows) / len(rows)


def truth_coverage(pair_ids: list[str], truth: pa.Table) -> dict:
    """How many of the pairs the truth covers: accuracies are over the covered ones only."""
    known = set(truth.column("pair_id").to_pylist())
    covered = sum(pid in known for pid in pair_ids)
    return {"pairs": len(pair_ids), "covered": covered, "share": covered / len(pair_ids) if pair_ids else None}


def truth_agree(rows: list[dict], truth: pa.Table) -> dict[str, bool]:
    """pair_id → True when the pair's stored chosen response is the truly better one."""
    better = {t["pair_id"]: t["better"] for t in truth.select(["pair_id", "better"]).to_pylist()}
    return {r["pair_id"]: better[r["pair_id"]] == r["chosen"] for r in rows if r["pair_id"] in better}


def merged_accuracy(merged: pa.Table, truth_agree: dict[str, bool]) -> dict:
    rows = [r for r in merged.select(["pair_id", "verdict"]).to_pylist() if r["pair_id"] in truth_agree]
    decided = [r for r in rows if r["verdict"] != "abstain"]
    correct = sum((r["verdict"] == "agree") == truth_agree[r["pair_id"]] for r in decided)
    return {
        "pairs": len(rows),
        "decided": len(decided),
        "accuracy": correct / len(decided) if decided else None,
        "coverage": len(decided) / len(rows) if rows else None,
    }


def _trl_accuracy(tables: list[pa.Table], truth: pa.Table) -> float | None:
    """Label accuracy of exported (TRL conversational) tables: the chosen response is the last message."""
    if not tables:
        return None
    t = pa.concat_tables(tables).select(["pair_id", "chosen"])
    rows = [{"pair_id": r["pair_id"], "chosen": r["chosen"][-1]["content"]} for r in t.to_pylist()]
    return label_accuracy(pa.Table.from_pylist(rows), truth) if rows else None  # an empty set has no accuracy


def accuracy_report(out_dir: PathLike | Stage2Layout, truth: pa.Table) -> dict:
    """Label accuracy of a stage-2 run's input vs its kept, recycled and dropped sets against the hidden truth."""
    run = out_dir if isinstance(out_dir, Stage2Layout) else Stage2Layout(out_dir)
    shards = pa.concat_tables([read_parquet(s) for s in run.pool().shard_uris()]).select(["pair_id", "chosen"])
    report = {
        "truth_coverage": truth_coverage(shards.column("pair_id").to_pylist(), truth),
        "input": label_accuracy(shards, truth),
    }
    for d in DECISIONS:
        report[d] = _trl_accuracy([read_parquet(p) for p in list_files(run.split_dir(d), (".parquet",))], truth)
    return report
