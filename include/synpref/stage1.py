"""Stage 1: one human-in-the-loop curation round (paper §3.2, Figure 3, left).

A round is named by its date. It reads the newest completed round before it (or the seed,
round 0) and writes only under ``<root>/rounds/<round>/``, its manifest last. Each ``step_*``
function is one Airflow task (the DAG maps the per-shard/per-annotator ones) and one piece of
``run_round`` (the CLI). Steps record their counts in ``steps/<step>.json``; ``step_publish``
gathers them into the manifest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from . import gold as gold_mod
from .adaptive_retrieval import RetrievalConfig, adaptive_retrieve, embed_rows, k_for_p, nearest_examples
from .annotation import AnnotateSettings, annotator_stats, judge, merge_samples, status_counts
from .attributes import generate_attributes
from .llm_client import AnnotatorConfig, Budget
from .preprocess import pool_shards
from .reward_model import RewardModel, RMConfig, evaluate, train_reward_model
from .schema import PAIR_SCHEMA, has_attributes
from .silver import QUEUE_SCHEMA, merge_into_silver
from .storage import PathLike, as_path, list_files, read_json, read_parquet, write_bytes, write_json, write_jsonl, write_manifest, write_parquet

SEED_ROUND = "0000-seed"


@dataclass
class Stage1Config:
    k_max: int = 8
    samples: int | None = None  # overrides every annotator's self-consistency samples when set
    merge_policy: str = "majority"
    max_examples: int = 8
    best_rm: RMConfig = field(default_factory=RMConfig)
    gold_rm: RMConfig = field(default_factory=RMConfig)
    budget_usd: float | None = None
    seed: int = 0
    spot_check: int = 20
    validation_fraction: float = 0.2
    ivf_threshold: int = 200_000

    def annotate_settings(self) -> AnnotateSettings:
        return AnnotateSettings(seed=self.seed, max_examples=self.max_examples, merge_policy=self.merge_policy, budget_usd=self.budget_usd)


# --- layout ------------------------------------------------------------------------------

def round_dir(root: PathLike, rnd: str):
    return as_path(root) / "rounds" / rnd


def _round_dirs(root: PathLike) -> list:
    d = as_path(root) / "rounds"
    return list(d.iterdir()) if d.exists() else []


def completed_rounds(root: PathLike) -> list[str]:
    return sorted(p.name for p in _round_dirs(root) if (p / "manifest.json").exists())


def rounds_in_progress(root: PathLike, rnd: str) -> list[str]:
    """Rounds dated before ``rnd`` that have started (their prefix exists) but are not published yet."""
    return sorted(p.name for p in _round_dirs(root) if p.name < rnd and p.name != SEED_ROUND and not (p / "manifest.json").exists())


def begin_round(root: PathLike, rnd: str) -> list[str]:
    """Start ``rnd`` unless earlier rounds are still in progress (then return them and start nothing).

    Starting writes ``rounds/<rnd>/started.json``, so a later round checking right after this one
    started (before it wrote anything else) waits for it too.
    """
    pending = rounds_in_progress(root, rnd)
    if not pending:
        write_json({"round": rnd}, round_dir(root, rnd) / "started.json")
    return pending


def previous_round(root: PathLike, rnd: str) -> str | None:
    """The newest completed round strictly before ``rnd`` (None → the seed)."""
    earlier = [r for r in completed_rounds(root) if r < rnd and r != SEED_ROUND]
    return earlier[-1] if earlier else None


def _rows(uri) -> list[dict]:
    return read_parquet(uri).to_pylist() if as_path(uri).exists() else []


def _read_any(directory, stem: str) -> list[dict]:
    """``<dir>/<stem>.parquet`` or ``.jsonl`` via the readers (seed data may come in any format)."""
    from .readers import read_pairs

    for ext in (".parquet", ".jsonl", ".json", ".csv"):
        p = as_path(directory) / f"{stem}{ext}"
        if p.exists():
            res = read_pairs(p, source=f"seed-{stem}")
            if res.quarantine:
                raise ValueError(f"seed file {p} has invalid records: {res.quarantine[0]['reason']}")
            return [r.model_dump() for r in res.records]
    return []


def _step_record(root: PathLike, rnd: str, step: str, info: dict) -> dict:
    write_json(info, round_dir(root, rnd) / "steps" / f"{step}.json")
    return info


def _write_table(rows: list[dict], schema: pa.Schema, uri) -> str:
    return write_parquet(pa.Table.from_pylist(rows, schema=schema), uri)


# --- steps -------------------------------------------------------------------------------

def step_intake(root: PathLike, rnd: str, inbox: PathLike | None = None, cfg: Stage1Config = Stage1Config()) -> dict:
    """Human-verification intake: inbox/<round>/ → cumulative gold, gold-train/validation, discarded."""
    root = as_path(root)
    out = round_dir(root, rnd)
    if (out / "manifest.json").exists():  # the round is being re-run: it is incomplete until re-published
        (out / "manifest.json").unlink()
    prev = previous_round(root, rnd)
    if prev is None:
        seed = root / "seed"
        history = gold_mod.seed_history(_read_any(seed, "gold"))
        silver = [{**r, "provenance": "seed", "round": SEED_ROUND} for r in _read_any(seed, "silver")]
    else:
        history = _rows(round_dir(root, prev) / "human_verifications.parquet")
        silver = _rows(round_dir(root, prev) / "silver.parquet")
    intake = gold_mod.read_inbox(inbox if inbox is not None else root / "inbox" / rnd)
    new = [{**v, "round": rnd} for v in intake.verifications]
    history = history + new
    parts = gold_mod.build_gold(history, cfg.validation_fraction)
    for name, table in gold_mod.tables(parts, history, intake.quarantine).items():
        write_parquet(table, out / f"{name}.parquet")
    # silver carried into this round; the best RM never trains on gold pairs
    gold_ids = {g["pair_id"] for g in parts["gold"]}
    _write_table([s for s in silver if s["pair_id"] not in gold_ids], PAIR_SCHEMA, out / "silver_in.parquet")
    labels = {lab: sum(v["human_label"] == lab for v in new) for lab in gold_mod.HUMAN_LABELS}
    return _step_record(root, rnd, "intake", {
        "previous_round": prev or SEED_ROUND, "inbox_verifications": len(new), "inbox_quarantined": len(intake.quarantine),
        **{f"inbox_{k}": v for k, v in labels.items()}, "gold": len(parts["gold"]), "gold_train": len(parts["gold_train"]),
        "gold_validation": len(parts["gold_validation"]), "discarded": len(parts["discarded"]),
        "silver_in": sum(s["pair_id"] not in gold_ids for s in silver),
    })


def step_attributes(root: PathLike, rnd: str, shard_uri: str, annotator: AnnotatorConfig | None, cfg: Stage1Config = Stage1Config()) -> dict:
    """Preference attributes for one pool shard (LLM, cached); writes rounds/<r>/pool_attributes/<shard>."""
    root = as_path(root)
    rows = read_parquet(shard_uri).to_pylist()
    name = as_path(shard_uri).name
    if annotator is None:
        from .attributes import ATTRIBUTE_STATUS_SCHEMA

        table = pa.Table.from_pylist([{**r, "attributes_status": "present" if has_attributes(r) else "attributes_missing"} for r in rows],
                                     schema=ATTRIBUTE_STATUS_SCHEMA)
        usage = {}
    else:
        table, usage = generate_attributes(rows, annotator, root / "cache" / "llm", cfg.seed)
    write_parquet(table, round_dir(root, rnd) / "pool_attributes" / name)
    statuses = table.column("attributes_status").to_pylist()
    return {"shard": name, "pairs": len(rows), **{s: statuses.count(s) for s in ("present", "generated", "attributes_missing")}, "usage": usage}


def step_embed_shard(root: PathLike, rnd: str, shard_name: str) -> dict:
    """Embeddings of one attributed pool shard, cached by pair_id + text under <root>/cache/embeddings/."""
    root = as_path(root)
    rows = read_parquet(round_dir(root, rnd) / "pool_attributes" / shard_name).to_pylist()
    embed_rows(rows, root / "cache" / "embeddings" / shard_name)
    return {"shard": shard_name, "pairs": len(rows)}


def step_train(root: PathLike, rnd: str, which: str, cfg: Stage1Config = Stage1Config()) -> dict:
    """``best``: BT RM on silver, checkpoint by gold accuracy → rm/. ``gold``: on gold-train, chosen on gold-validation → gold_rm/."""
    out = round_dir(root, rnd)
    if which == "best":
        train, select, rm_cfg, dest = _rows(out / "silver_in.parquet"), _rows(out / "gold.parquet"), cfg.best_rm, out / "rm"
    else:
        train, select, rm_cfg, dest = _rows(out / "gold_train.parquet"), _rows(out / "gold_validation.parquet"), cfg.gold_rm, out / "gold_rm"
    metrics = train_reward_model(train, select, rm_cfg, dest)
    return _step_record(root, rnd, f"train_{which}_rm", {"uri": str(dest), **{k: v for k, v in metrics.items() if k != "history"}})


def step_evaluate(root: PathLike, rnd: str) -> dict:
    """p = σ(r_w − r_l) of the best RM for every gold pair; accuracy overall/per category; errors."""
    out = round_dir(root, rnd)
    gold_rows = _rows(out / "gold.parquet")
    rm = RewardModel(out / "rm")
    table, metrics = evaluate(rm, gold_rows)
    rm.close()
    write_parquet(table, out / "gold_eval.parquet")
    gold_rm = RewardModel(out / "gold_rm")
    _, gold_rm_metrics = evaluate(gold_rm, _rows(out / "gold_validation.parquet"))
    gold_rm.close()
    info = {"best_rm_gold_accuracy": metrics["accuracy"], "per_category": metrics["per_category"], "errors": len(metrics["errors"]),
            "gold_rm_validation_accuracy": gold_rm_metrics["accuracy"]}
    write_json({**metrics, "gold_rm_validation": gold_rm_metrics}, out / "gold_eval_metrics.json")
    return _step_record(root, rnd, "evaluate", info)


def _labelled_ids(root, rnd: str) -> set[str]:
    out = round_dir(root, rnd)
    ids = set()
    for name in ("gold", "silver_in", "discarded", "human_verifications"):
        p = out / f"{name}.parquet"
        if p.exists():
            ids.update(read_parquet(p, ["pair_id"]).column("pair_id").to_pylist())
    prev = previous_round(root, rnd)
    if prev and (round_dir(root, prev) / "review_queue" / "queue.parquet").exists():
        ids.update(read_parquet(round_dir(root, prev) / "review_queue" / "queue.parquet", ["pair_id"]).column("pair_id").to_pylist())
    return ids


def step_retrieve(root: PathLike, rnd: str, cfg: Stage1Config = Stage1Config()) -> dict:
    """Error-driven adaptive retrieval from the attributed pool; few-shot gold examples per retrieved pair."""
    root = as_path(root)
    out = round_dir(root, rnd)
    shards = list_files(out / "pool_attributes", (".parquet",))
    pool_rows, pool_vecs = [], []
    for s in shards:
        rows = read_parquet(s).to_pylist()
        pool_rows += rows
        pool_vecs.append(embed_rows(rows, root / "cache" / "embeddings" / s.name))
    import numpy as np

    vecs = np.concatenate(pool_vecs) if pool_vecs else np.zeros((0, 384), np.float32)
    gold_rows = _rows(out / "gold.parquet")
    p_by_id = {r["pair_id"]: r["p"] for r in _rows(out / "gold_eval.parquet")}
    gold_vecs = embed_rows(gold_rows)
    table = adaptive_retrieve([g["pair_id"] for g in gold_rows], [p_by_id[g["pair_id"]] for g in gold_rows], gold_vecs,
                              [r["pair_id"] for r in pool_rows], vecs, _labelled_ids(root, rnd), RetrievalConfig(cfg.k_max, cfg.ivf_threshold))
    write_parquet(table, out / "retrieval.parquet")
    wanted = set(table.column("pair_id").to_pylist())
    index = {r["pair_id"]: i for i, r in enumerate(pool_rows)}
    retrieved = [pool_rows[index[pid]] for pid in sorted(wanted)]
    _write_table([{k: r[k] for k in PAIR_SCHEMA.names} for r in retrieved], PAIR_SCHEMA, out / "retrieved.parquet")
    examples = nearest_examples(vecs[[index[pid] for pid in sorted(wanted)]] if wanted else np.zeros((0, 384), np.float32),
                                sorted(wanted), gold_rows, gold_vecs, cfg.max_examples)
    write_parquet(pa.table({"pair_id": list(examples), "examples": [[e["pair_id"] for e in v] for v in examples.values()]}), out / "examples.parquet")
    k_dist = Counter(k_for_p(p_by_id[g["pair_id"]], cfg.k_max) for g in gold_rows)
    return _step_record(root, rnd, "retrieve", {
        "pool_pairs": len(pool_rows), "gold_pairs": len(gold_rows), "retrieved": len(wanted),
        "k_distribution": {str(k): k_dist[k] for k in sorted(k_dist)},
        "pulled_by_rm_errors": sum(1 for k in (table.column("k").to_pylist() if table.num_rows else []) if k == cfg.k_max)})


def _examples_for(out) -> dict[str, list[dict]]:
    gold_by_id = {g["pair_id"]: g for g in _rows(out / "gold.parquet")}
    ex = read_parquet(out / "examples.parquet").to_pylist() if (out / "examples.parquet").exists() else []
    return {r["pair_id"]: [gold_by_id[e] for e in r["examples"] if e in gold_by_id] for r in ex}


def step_annotate(root: PathLike, rnd: str, annotator: AnnotatorConfig, cfg: Stage1Config = Stage1Config(), n_annotators: int = 1) -> dict:
    """Preference-aware annotation of the retrieved pairs by ONE annotator (the DAG maps over annotators)."""
    root = as_path(root)
    out = round_dir(root, rnd)
    if cfg.samples:
        annotator = annotator.model_copy(update={"samples": cfg.samples})
    pairs = _rows(out / "retrieved.parquet")
    budget = Budget(cfg.budget_usd / n_annotators if cfg.budget_usd is not None else None)
    samples, usage = judge(pairs, _examples_for(out), annotator, root / "cache" / "llm", cfg.annotate_settings(), budget)
    write_parquet(samples, out / "annotations" / annotator.name / "samples.parquet")
    write_json({"annotator": annotator.model_dump(), "usage": usage[annotator.name]["work"]}, out / "annotations" / annotator.name / "usage.json")
    return {"annotator": annotator.name, "pairs": len(pairs), **{k: usage[annotator.name][k] for k in ("requests", "cache_hits", "errors", "new_cost_usd")}}


def step_merge(root: PathLike, rnd: str, annotator_names: list[str], cfg: Stage1Config = Stage1Config(),
               accuracy: dict[str, float] | None = None) -> dict:
    """Merge annotators → silver (agreeing labels) + review queue (contested) for the humans' next day."""
    root = as_path(root)
    out = round_dir(root, rnd)
    sample_tables = [read_parquet(out / "annotations" / n / "samples.parquet") for n in sorted(annotator_names)]
    retrieved = _rows(out / "retrieved.parquet")
    merged = merge_samples(sample_tables, cfg.merge_policy, accuracy, [r["pair_id"] for r in retrieved])
    write_parquet(merged, out / "verdicts.parquet")
    silver, queue, counts = merge_into_silver(_rows(out / "silver_in.parquet"), retrieved, merged, rnd, cfg.spot_check, cfg.seed)
    _write_table(silver, PAIR_SCHEMA, out / "silver.parquet")
    _write_table(queue, QUEUE_SCHEMA, out / "review_queue" / "queue.parquet")
    write_jsonl(queue, out / "review_queue" / "queue.jsonl")
    write_bytes(out / "review_queue" / "tasks.json", gold_mod.dumps_tasks(queue).encode())
    samples_all = pa.concat_tables(sample_tables) if sample_tables else None
    usage = {n: read_json(out / "annotations" / n / "usage.json")["usage"] for n in sorted(annotator_names)}
    info = {**counts, "verdicts": status_counts(merged), "annotator_stats": annotator_stats(samples_all) if samples_all else {},
            "usage": usage, "cost_usd": round(sum(u.get("cost_usd", 0) for u in usage.values()), 6),
            "tokens": sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values())}
    return _step_record(root, rnd, "merge", info)


def step_publish(root: PathLike, rnd: str, params: dict | None = None) -> dict:
    """Round manifest (counts at every step, metrics, artifact list) — written LAST."""
    out = round_dir(root, rnd)
    steps = {p.name[:-5]: read_json(p) for p in list_files(out / "steps", (".json",))}
    for required in ("intake", "train_best_rm", "train_gold_rm", "evaluate", "retrieve", "merge"):
        if required not in steps:
            raise RuntimeError(f"round {rnd}: step {required} has not completed; refusing to publish")
    artifacts = sorted(str(p.path)[len(str(out.path)) + 1 :] for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {"kind": "stage1_round", "round": rnd, "previous_round": steps["intake"]["previous_round"], "steps": steps,
                "params": params or {}, "artifacts": artifacts,
                "summary": {"gold": steps["intake"]["gold"], "silver": steps["merge"]["silver_total"],
                            "best_rm_gold_accuracy": steps["evaluate"]["best_rm_gold_accuracy"],
                            "gold_rm_validation_accuracy": steps["evaluate"]["gold_rm_validation_accuracy"],
                            "retrieved": steps["retrieve"]["retrieved"], "review_queue": steps["merge"]["review_queue"],
                            "cost_usd": steps["merge"]["cost_usd"], "tokens": steps["merge"]["tokens"]}}
    write_manifest(out, manifest)
    return manifest


def run_round(root: PathLike, rnd: str, annotators: list[AnnotatorConfig], cfg: Stage1Config = Stage1Config(),
              attribute_annotator: AnnotatorConfig | None = None, inbox: PathLike | None = None, params: dict | None = None) -> dict:
    """A whole round by hand (the CLI): the same steps, in the DAG's order."""
    root = as_path(root)
    step_intake(root, rnd, inbox, cfg)
    for shard in pool_shards(root / "pool"):
        step_attributes(root, rnd, shard, attribute_annotator or (annotators[0] if annotators else None), cfg)
        step_embed_shard(root, rnd, as_path(shard).name)
    step_train(root, rnd, "best", cfg)
    step_train(root, rnd, "gold", cfg)
    step_evaluate(root, rnd)
    step_retrieve(root, rnd, cfg)
    for a in annotators:
        step_annotate(root, rnd, a, cfg, len(annotators))
    step_merge(root, rnd, [a.name for a in annotators], cfg)
    return step_publish(root, rnd, params)
