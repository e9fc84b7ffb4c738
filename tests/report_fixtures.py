"""Published rounds and a stage-2 run made of manifests and summaries only (what the report reads), at any
size: for the report tests, the Curation plugin tests and ``benchmarks/report_speed.py``. Numbers are
made up; the structure is the pipeline's (``step_publish``, ``step_export``, ``decision_summary``)."""

from __future__ import annotations

import random

import pyarrow as pa

from synpref.io.layout import DECISIONS, PoolLayout, StorageLayout
from synpref.io.storage import write_parquet
from synpref.models.reward_model import EVAL_SCHEMA
from synpref.records import PoolManifest, RoundManifest, ShardDecided, Stage2Manifest
from synpref.schema import PAIR_SCHEMA
from synpref.settings import HIST_BINS

CATEGORIES = ("math", "coding", "safety", "factual_qa", "instruction_following")
JUDGES = ("judge-a", "judge-b", "judge-c")


def fake_round(store: StorageLayout, rnd: str, index: int, gold: int = 200, seed: int = 0) -> None:
    r = random.Random(f"{seed}:{rnd}")
    out = store.round(rnd)
    acc = min(0.95, 0.7 + 0.02 * index)
    ids = [f"{i:032x}" for i in range(gold)]
    evals = [
        {
            "pair_id": p,
            "task_category": CATEGORIES[i % 5],
            "reward_diff": 0.0,
            "p": 0.6,
            "log_p": -0.5,
            "correct": r.random() < acc,
        }
        for i, p in enumerate(ids)
    ]
    write_parquet(pa.Table.from_pylist(evals, schema=EVAL_SCHEMA), out.gold_eval)
    write_parquet(PAIR_SCHEMA.empty_table(), out.silver)
    validation = [{**_pair(p), "task_category": CATEGORIES[i % 5]} for i, p in enumerate(ids) if i % 5 == 0]
    write_parquet(pa.Table.from_pylist(validation, schema=PAIR_SCHEMA), out.gold_validation)
    judges = {
        j: {
            "accuracy": 0.8 + 0.05 * k,
            "ci_low": 0.7 + 0.05 * k,
            "ci_high": 0.9 + 0.03 * k,
            "n": 64,
            "significant": True,
            "pairs": 64,
            "abstained": k,
            "position_bias": 0.1 * k,
        }
        for k, j in enumerate(JUDGES)
    }
    calibration = {"weight": 1.0, "n": gold // 5, "ci_low": 0.6, "ci_high": 0.9, "significant": True}
    calibration |= {"ece_before": 0.1, "ece_after": 0.05, "brier_before": 0.2, "brier_after": 0.15}
    intake = {k: 0 for k in ("inbox_verifications", "inbox_quarantined", "inbox_conflicts", "inbox_unknown_pairs")}
    intake |= {"gold": gold, "gold_train": gold - gold // 5, "gold_validation": gold // 5, "discarded": 0}
    retrieved = 300 + 10 * index
    steps = {
        "intake": {"previous_round": "0000-seed", "silver_source": "seed/silver", "silver_in": 1000, **intake},
        "train_best_rm": {"uri": str(out.best_rm)},
        "train_gold_rm": {"uri": str(out.gold_rm)},
        "evaluate": {
            "best_rm_gold_accuracy": acc,
            "per_category": {c: {"accuracy": acc - 0.05 * k, "pairs": gold // 5} for k, c in enumerate(CATEGORIES)},
            "errors": 0,
            "gold_rm_validation_accuracy": acc - 0.03,
            "calibration": {"gold": calibration, "best": calibration},
        },
        "retrieve": {
            "pool_pairs": 4000,
            "gold_pairs": gold,
            "retrieved": retrieved,
            "k_distribution": {"2": 30, "4": 50, "8": 20 + index},
            "pulled_by_rm_errors": 20 + index,
            "index": {},
        },
        "merge": {
            "silver_total": 1000 + 300 * index,
            "review_queue": 40,
            "verdicts": {},
            "annotator_stats": {},
            "judges": {"annotators": judges},
            "usage": {},
            "cost_usd": 1.5,
            "tokens": 200_000,
        },
        "rm_benchmarks": {"benchmarks": {"rewardbench": _benchmark(acc, index)}, "regressed": []},
    }
    summary = {
        "silver_source": "seed/silver",
        **{
            k: intake[k]
            for k in ("inbox_verifications", "inbox_quarantined", "inbox_conflicts", "inbox_unknown_pairs")
        },
        "gold": gold,
        "silver": 1000 + 300 * index,
        "review_queue": 40,
        "retrieved": retrieved,
        "best_rm_gold_accuracy": acc,
        "gold_rm_validation_accuracy": acc - 0.03,
        "cost_usd": 1.5,
        "tokens": 200_000,
        "judges": {j: {k: v[k] for k in ("accuracy", "ci_low", "ci_high", "n")} for j, v in judges.items()},
        "warnings": [],
    }
    manifest = {"kind": "stage1_round", "round": rnd, "previous_round": "0000-seed", "steps": steps}
    RoundManifest.model_validate({**manifest, "summary": summary, "params": {}, "artifacts": []}).write(out.manifest)


def _benchmark(acc: float, index: int) -> dict:
    """A round's made-up RewardBench score (the shape ``step_rm_benchmarks`` records)."""
    overall = {"accuracy": acc - 0.1, "ci_low": acc - 0.15, "ci_high": acc - 0.05, "pairs": 300}
    sections = {"Chat": acc, "Reasoning": acc - 0.2}
    rm = {"overall": overall, "subsets": {"math-prm": overall}, "rewardbench": {"sections": sections, "score": acc}}
    previous = {"difference": 0.02, "ci_low": -0.01, "ci_high": 0.05} if index else None
    scores = {"uri": "rewardbench.jsonl", "pairs": 300, "skipped": 0, "best_rm": rm, "gold_rm": rm}
    return {**scores, "previous_round": "earlier" if index else None, "vs_previous": previous}


def _pair(pair_id: str) -> dict:
    return {f: None for f in PAIR_SCHEMA.names} | {
        "pair_id": pair_id,
        "conversation": [{"role": "user", "content": "q"}],
        "chosen": "a",
        "rejected": "b",
        "flipped": False,
    }


def fake_rounds(store: StorageLayout, n: int, gold: int = 200) -> list[str]:
    names = [f"2026-{1 + i // 28:02d}-{1 + i % 28:02d}" for i in range(n)]
    for i, rnd in enumerate(names):
        fake_round(store, rnd, i, gold + 20 * i)
    return names


def fake_stage2(store: StorageLayout, name: str, shards: int, pairs_per_shard: int) -> None:
    run = store.stage2(name)
    pool = PoolLayout(run.prepared.dir)
    shard_names = [pool.shard_name(i) for i in range(shards)]
    PoolManifest(
        kind="pool",
        counts={"input": shards * pairs_per_shard, "pool": shards * pairs_per_shard, "quarantined": 0},
        shards=[{"name": s, "count": pairs_per_shard} for s in shard_names],
        files=[],
        skipped_files=[],
    ).write(pool.manifest)
    share = {"kept": 0.7, "recycled": 0.1, "dropped": 0.2}
    for s in shard_names:
        n = {d: int(pairs_per_shard * share[d]) for d in DECISIONS}
        hist = {d: [n[d] // HIST_BINS] * HIST_BINS for d in DECISIONS}
        cats = {c: {d: n[d] // 5 for d in DECISIONS} for c in CATEGORIES}
        ShardDecided(
            shard=s,
            input=pairs_per_shard,
            **n,
            summary={"p_best": hist, "p_gold": hist, "categories": cats},
            canaries=0,
            routed_to_llm=0,
            rule={"kind": "paper"},
            fitted={},
            fingerprint="0" * 16,
        ).write(run.shard(s).success)
    total = shards * pairs_per_shard
    counts = {
        "input": total + 300,
        "kept": int(total * 0.7),
        "recycled": int(total * 0.1),
        "dropped": int(total * 0.2),
        "quarantined": 100,
        "duplicates": 150,
        "contaminated": 50,
        "routed_to_llm": int(total * 0.3),
    }
    q = {"estimate": 0.97, "ci_low": 0.95, "ci_high": 0.99}
    quality = {
        "canaries": 128,
        "label_accuracy_of_input": 0.7,
        "kept_precision": q,
        "retention": q,
        "recycled_precision": q,
    }
    Stage2Manifest.model_validate(
        {
            "kind": "stage2_run",
            "run": name,
            "round": "2026-01-01",
            "counts": counts,
            "quality_estimates": quality,
            "config": {"decision_rule": "reliability"},
            "params": {},
            "splits": {d: [] for d in DECISIONS},
            "tables": [],
            "dataset_card": "README.md",
            "judging": {
                "annotators": {
                    "judge-a": {
                        "requests": 1200,
                        "prompt_tokens": 900_000,
                        "completion_tokens": 40_000,
                        "cost_usd": 0.51,
                        "verdicts": "auto",
                        "stopped": {"logprobs": 1200},
                        "samples": 1200,
                    }
                },
                "requests_per_input_pair": 0.3,
                "tokens_per_input_pair": 235.0,
                "cost_usd": 0.51,
                "cost_per_1k_curated_usd": 0.1457,
            },
        }
    ).write(run.manifest)
