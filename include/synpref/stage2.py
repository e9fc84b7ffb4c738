"""Stage 2: large-scale automatic curation (paper §3.3, Figure 3 right), sharded and bounded in memory.

prepare (pre-processing into shards) → score (best-RM and gold-RM p, per shard) → route
(p_best ≤ 0.5 + band → LLM re-annotation with few-shot gold examples, per annotator × shard)
→ decide (keep / recycle / drop, per shard) → conservation check → export (TRL-ready Parquet,
dataset card, manifest). Layout under ``<root>/stage2/<run>/``:

    prepared/                      shards + quarantine/duplicates/contaminated (+ manifest)
    shards/<shard>/scores.parquet, annotations/<annotator>/samples.parquet, decisions.parquet, _SUCCESS.json
    kept/part-<shard>.parquet      recycled/part-<shard>.parquet      dropped/part-<shard>.parquet
    quarantined.parquet            README.md (dataset card)           manifest.json (last)
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass

import pyarrow as pa

from .annotation import AnnotateSettings, few_shot_examples, judge, merge_samples
from .consistency import ConsistencyConfig, decide, needs_llm
from .llm_client import AnnotatorConfig, Budget
from .preprocess import DROPPED_SCHEMA, ConservationError, PrepareConfig, check_conservation, finalize_pool, normalize_file, pool_shards
from .readers import input_files
from .recycle import recycled
from .reward_model import RewardModel, p_from_diff, reward_diffs
from .schema import PAIR_SCHEMA, to_trl
from .stage1 import SEED_ROUND, completed_rounds, round_dir
from .storage import PathLike, as_path, list_files, read_bytes, read_json, read_parquet, write_bytes, write_json, write_manifest, write_parquet

SCORES_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("in_gold", pa.bool_()), ("p_best", pa.float64()), ("p_gold", pa.float64()),
    ("log_p_best", pa.float64()), ("log_p_gold", pa.float64()), ("routed_to_llm", pa.bool_()),
])
DECISION_FIELDS = [
    pa.field("decision", pa.string()), pa.field("reason", pa.string()), pa.field("p_best", pa.float64()), pa.field("p_gold", pa.float64()),
    pa.field("routed_to_llm", pa.bool_()), pa.field("llm_verdict", pa.string()), pa.field("votes_agree", pa.int32()),
    pa.field("votes_disagree", pa.int32()), pa.field("votes_abstain", pa.int32()),
]
QUARANTINED_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("decision", pa.string()), ("reason", pa.string()), ("source_file", pa.string()),
    ("record_index", pa.int64()), ("raw", pa.string()),
])


@dataclass(frozen=True)
class Stage2Config:
    band: float = 0.0
    recycle_policy: str = "both_rms_reject"
    shard_size: int = 20_000
    samples: int | None = None
    merge_policy: str = "majority"
    max_examples: int = 8
    budget_usd: float | None = None
    seed: int = 0

    def consistency(self) -> ConsistencyConfig:
        return ConsistencyConfig(self.band, self.recycle_policy)  # type: ignore[arg-type]

    def fingerprint(self, root: PathLike, rnd: str) -> str:
        """Identity of a shard's inputs (config + the round's manifest): a finished shard is skipped only when it matches."""
        round_manifest = hashlib.sha256(read_bytes(round_dir(root, rnd) / "manifest.json")).hexdigest()
        return hashlib.sha256(json.dumps([asdict(self), rnd, round_manifest], sort_keys=True).encode()).hexdigest()[:16]


def run_dir(root: PathLike, run: str):
    """The default output directory of a stage-2 run: ``<root>/stage2/<run>``."""
    return as_path(root) / "stage2" / run


def resolve_round(root: PathLike, rnd: str = "latest") -> str:
    rounds = [r for r in completed_rounds(root) if r != SEED_ROUND]
    if rnd in ("", "latest"):
        if not rounds:
            raise FileNotFoundError(f"no completed stage-1 round under {as_path(root) / 'rounds'}: run synpref_stage1 first")
        return rounds[-1]
    if rnd not in rounds:
        raise FileNotFoundError(f"stage-1 round {rnd} is not completed (have: {rounds})")
    return rnd


def _unlink(path) -> None:
    if path.exists():
        path.unlink()


def _shard_dir(out_dir: PathLike, shard_uri: str):
    return as_path(out_dir) / "shards" / as_path(shard_uri).name.removesuffix(".parquet")


# --- prepare -------------------------------------------------------------------------------

def prepare_inputs(input_uri: PathLike) -> tuple[list[str], str | None]:
    """(raw input files, None) or ([], pool dir) when the input is an existing pool (has a pool manifest)."""
    manifest = as_path(input_uri) / "manifest.json"
    if manifest.exists() and read_json(manifest).get("kind") == "pool":
        return [], str(as_path(input_uri))
    return input_files(input_uri), None


def step_prepare_file(out_dir: PathLike, index: int, file_uri: str) -> dict:
    return normalize_file(file_uri, index, as_path(out_dir) / "prepared" / "_staging")


def step_finalize_prepare(out_dir: PathLike, cfg: Stage2Config, benchmark_uri: PathLike | None = None, source_pool: str | None = None) -> list[str]:
    """Global dedup/decontam/shards of the input (or adopt an existing pool); returns shard URIs."""
    prepared = as_path(out_dir) / "prepared"
    if source_pool:
        write_json({"source_pool": source_pool}, prepared / "source.json")
        return pool_shards(source_pool)
    _unlink(prepared / "source.json")
    finalize_pool(prepared / "_staging", prepared, benchmark_uri, PrepareConfig(shard_size=cfg.shard_size))
    return pool_shards(prepared)


def _prepared_dir(out_dir: PathLike):
    src = as_path(out_dir) / "prepared" / "source.json"
    return as_path(read_json(src)["source_pool"]) if src.exists() else as_path(out_dir) / "prepared"


# --- per shard -----------------------------------------------------------------------------

def _gold(root, rnd: str) -> dict[str, dict]:
    return {g["pair_id"]: g for g in read_parquet(round_dir(root, rnd) / "gold.parquet").to_pylist()}


def step_score(root: PathLike, out_dir: PathLike, rnd: str, shard_uri: str, cfg: Stage2Config = Stage2Config()) -> dict:
    """Best-RM and gold-RM p for every pair of one shard; gold pairs are marked, never scored by the gold RM."""
    out = _shard_dir(out_dir, shard_uri)
    marker = out / "scores.json"
    if marker.exists() and read_json(marker).get("fingerprint") == cfg.fingerprint(root, rnd):
        return read_json(marker)
    rows = read_parquet(shard_uri).to_pylist()
    gold_ids = set(_gold(root, rnd))
    to_score = [r for r in rows if r["pair_id"] not in gold_ids]
    best, gold_rm = RewardModel(round_dir(root, rnd) / "rm"), RewardModel(round_dir(root, rnd) / "gold_rm")
    d_best, d_gold = reward_diffs([best, gold_rm], to_score)
    best.close(), gold_rm.close()
    p_best, lp_best = p_from_diff(d_best)
    p_gold, lp_gold = p_from_diff(d_gold)
    scored = {r["pair_id"]: i for i, r in enumerate(to_score)}
    table_rows = []
    for r in rows:
        i = scored.get(r["pair_id"])
        if i is None:
            table_rows.append({"pair_id": r["pair_id"], "in_gold": True, "p_best": None, "p_gold": None, "log_p_best": None, "log_p_gold": None, "routed_to_llm": False})
        else:
            table_rows.append({"pair_id": r["pair_id"], "in_gold": False, "p_best": float(p_best[i]), "p_gold": float(p_gold[i]),
                               "log_p_best": float(lp_best[i]), "log_p_gold": float(lp_gold[i]), "routed_to_llm": needs_llm(float(p_best[i]), cfg.band)})
    table = pa.Table.from_pylist(table_rows, schema=SCORES_SCHEMA)
    write_parquet(table, out / "scores.parquet")
    info = {"shard": out.name, "pairs": len(rows), "in_gold": len(rows) - len(to_score),
            "routed_to_llm": sum(t["routed_to_llm"] for t in table_rows), "fingerprint": cfg.fingerprint(root, rnd)}
    write_json(info, marker)
    return info


def _routed(out_dir: PathLike, shard_uri: str) -> list[dict]:
    scores = read_parquet(_shard_dir(out_dir, shard_uri) / "scores.parquet", ["pair_id", "routed_to_llm"]).to_pylist()
    wanted = {s["pair_id"] for s in scores if s["routed_to_llm"]}
    return [r for r in read_parquet(shard_uri).to_pylist() if r["pair_id"] in wanted]


def step_annotate_shard(root: PathLike, out_dir: PathLike, rnd: str, shard_uri: str, annotator: AnnotatorConfig, cfg: Stage2Config = Stage2Config(),
                        n_tasks: int = 1) -> dict:
    """LLM re-annotation (no humans) of one shard's routed pairs by one annotator, few-shot gold examples retrieved."""
    root = as_path(root)
    if cfg.samples:
        annotator = annotator.model_copy(update={"samples": cfg.samples})
    pairs = _routed(out_dir, shard_uri)
    examples = few_shot_examples(pairs, list(_gold(root, rnd).values()), cfg.max_examples)
    settings = AnnotateSettings(seed=cfg.seed, max_examples=cfg.max_examples, merge_policy=cfg.merge_policy)  # type: ignore[arg-type]
    budget = Budget(cfg.budget_usd / n_tasks if cfg.budget_usd is not None else None)
    samples, usage = judge(pairs, examples, annotator, root / "cache" / "llm", settings, budget)
    out = _shard_dir(out_dir, shard_uri) / "annotations" / annotator.name
    write_parquet(samples, out / "samples.parquet")
    write_json(usage[annotator.name]["work"], out / "usage.json")
    return {"shard": out.parent.parent.name, "annotator": annotator.name, "pairs": len(pairs), **{k: usage[annotator.name][k] for k in ("requests", "cache_hits", "errors")}}


def _decision_schema() -> pa.Schema:
    base = to_trl(PAIR_SCHEMA.empty_table()).schema
    for f in DECISION_FIELDS:
        base = base.append(f)
    return base


def step_decide(root: PathLike, out_dir: PathLike, rnd: str, shard_uri: str, annotator_names: list[str], cfg: Stage2Config = Stage2Config()) -> dict:
    """keep iff gold RM agrees AND (best RM agrees OR LLM judges agree); recycle/drop the rest. Marker last."""
    root = as_path(root)
    sdir = _shard_dir(out_dir, shard_uri)
    name = sdir.name
    rows = read_parquet(shard_uri).to_pylist()
    scores = {s["pair_id"]: s for s in read_parquet(sdir / "scores.parquet").to_pylist()}
    samples = [read_parquet(sdir / "annotations" / a / "samples.parquet") for a in sorted(annotator_names)
               if (sdir / "annotations" / a / "samples.parquet").exists()]
    merged = {m["pair_id"]: m for m in merge_samples(samples, cfg.merge_policy).to_pylist()} if samples else {}  # type: ignore[arg-type]
    gold = _gold(root, rnd)
    out: dict[str, list[dict]] = {"kept": [], "recycled": [], "dropped": []}
    for r in rows:
        s = scores[r["pair_id"]]
        m = merged.get(r["pair_id"], {})
        verdict = m.get("verdict")
        if s["in_gold"]:
            g = gold[r["pair_id"]]
            row, decision, reason = {**r, "chosen": g["chosen"], "rejected": g["rejected"], "flipped": g["flipped"], "provenance": "human"}, "kept", "human-verified gold pair (label from gold)"
        else:
            decision, reason = decide(s["p_best"], s["p_gold"], verdict, cfg.consistency())
            if decision == "recycled":
                row = recycled(r)
            elif decision == "kept":
                row = {**r, "provenance": "llm" if s["routed_to_llm"] else "rm"}
            else:
                row = r
        trl = to_trl(pa.Table.from_pylist([row], schema=PAIR_SCHEMA)).to_pylist()[0]
        out[decision].append({**trl, "decision": decision, "reason": reason, "p_best": s["p_best"], "p_gold": s["p_gold"],
                              "routed_to_llm": s["routed_to_llm"], "llm_verdict": verdict, "votes_agree": m.get("votes_agree"),
                              "votes_disagree": m.get("votes_disagree"), "votes_abstain": m.get("votes_abstain")})
    schema = _decision_schema()
    for decision, decided in out.items():
        write_parquet(pa.Table.from_pylist(decided, schema=schema), as_path(out_dir) / decision / f"part-{name}.parquet")
    counts = {k: len(v) for k, v in out.items()}
    check_conservation(len(rows), counts, where=f"shard {name}")
    info = {"shard": name, "input": len(rows), **counts, "routed_to_llm": sum(s["routed_to_llm"] for s in scores.values()),
            "fingerprint": cfg.fingerprint(root, rnd)}
    write_json(info, sdir / "_SUCCESS.json")
    return info


# --- whole run -----------------------------------------------------------------------------

def step_check_conservation(out_dir: PathLike, shard_uris: list[str]) -> dict:
    """Fail loudly unless input = kept + recycled + dropped + quarantined + duplicates + contaminated (per shard and overall)."""
    pool_manifest = read_json(_prepared_dir(out_dir) / "manifest.json")
    pc = pool_manifest["counts"]
    totals = Counter()
    for uri in shard_uris:
        marker = _shard_dir(out_dir, uri) / "_SUCCESS.json"
        if not marker.exists():
            raise ConservationError(f"shard {as_path(uri).name} has no decisions (missing {marker})")
        info = read_json(marker)
        check_conservation(info["input"], {k: info[k] for k in ("kept", "recycled", "dropped")}, where=f"shard {info['shard']}")
        expected = next(s["count"] for s in pool_manifest["shards"] if s["name"] == as_path(uri).name)
        if expected != info["input"]:
            raise ConservationError(f"shard {info['shard']}: decided {info['input']} pairs but the shard holds {expected}")
        totals.update({k: info[k] for k in ("kept", "recycled", "dropped", "routed_to_llm")})
    counts = {"input": pc["input"], "kept": totals["kept"], "recycled": totals["recycled"], "dropped": totals["dropped"],
              "quarantined": pc["quarantined"], "duplicates": pc["duplicates"], "contaminated": pc["contaminated"]}
    check_conservation(counts["input"], {k: v for k, v in counts.items() if k != "input"}, where=f"stage2 run {out_dir}")
    return {**counts, "routed_to_llm": totals["routed_to_llm"], "shards": len(shard_uris)}


def _quarantined_table(prepared) -> pa.Table:
    rows = [{"pair_id": None, "decision": "quarantined", "reason": q["reason"], "source_file": q["source_file"],
             "record_index": q["record_index"], "raw": q["raw"]} for q in read_parquet(prepared / "quarantine.parquet").to_pylist()]
    for kind, decision in (("duplicates", "duplicate"), ("contaminated", "contaminated")):
        t = read_parquet(prepared / f"{kind}.parquet") if (prepared / f"{kind}.parquet").exists() else DROPPED_SCHEMA.empty_table()
        rows += [{"pair_id": r["pair_id"], "decision": decision, "reason": r["reason"],
                  "source_file": r["source"], "record_index": None, "raw": None} for r in t.to_pylist()]
    return pa.Table.from_pylist(rows, schema=QUARANTINED_SCHEMA)


DATASET_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: kept/*.parquet
  - split: recycled
    path: recycled/*.parquet
---
# SynPref curated preference dataset — stage-2 run `{run}`

Curated with the two-stage pipeline of Skywork-Reward-V2 (arXiv 2507.01352): best-RM / gold-RM
consistency filtering with LLM re-annotation of disagreements; discarded pairs recycled by flipping.

| split / table | pairs |
|---|---|
| kept (`train`) | {kept} |
| recycled (flipped) | {recycled} |
| dropped | {dropped} |
| quarantined | {quarantined} |
| duplicates | {duplicates} |
| contaminated | {contaminated} |
| **input** | **{input}** |

- Source stage-1 round (best RM and gold RM): `{round}`
- Recycle policy: `{recycle_policy}`; band around 0.5 routed to LLM judges: `{band}`
- Pairs routed to LLM re-annotation: {routed_to_llm}
- Parameters: `{params}`
- Date: {date}

Format: TRL conversational — `chosen` / `rejected` are full message lists; provenance columns:
`pair_id`, `source`, `provenance` (`rm`/`llm`/`human`/`recycled`), `flipped`, the 5 preference attributes,
`decision`, `reason`, `p_best`, `p_gold`, `llm_verdict`, votes.

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files={{"train": "kept/*.parquet", "recycled": "recycled/*.parquet"}})
```
"""


def step_export(out_dir: PathLike, rnd: str, counts: dict, cfg: Stage2Config, params: dict | None = None, date: str = "") -> dict:
    """Quarantined table, dataset card and manifest (last)."""
    out = as_path(out_dir)
    write_parquet(_quarantined_table(_prepared_dir(out_dir)), out / "quarantined.parquet")
    card = DATASET_CARD.format(run=out.name, round=rnd, recycle_policy=cfg.recycle_policy, band=cfg.band, date=date,
                               params=json.dumps(params or asdict(cfg), sort_keys=True, default=str), **counts)
    write_bytes(out / "README.md", card.encode())
    manifest = {"kind": "stage2_run", "run": out.name, "round": rnd, "counts": counts, "config": asdict(cfg), "params": params or {},
                "splits": {k: sorted(p.name for p in list_files(out / k, (".parquet",))) for k in ("kept", "recycled", "dropped")},
                "tables": ["quarantined.parquet"], "dataset_card": "README.md"}
    write_manifest(out, manifest)
    return manifest


def run_stage2(root: PathLike, out_dir: PathLike, input_uri: PathLike, annotators: list[AnnotatorConfig], rnd: str = "latest",
               cfg: Stage2Config = Stage2Config(), benchmark_uri: PathLike | None = None, params: dict | None = None) -> dict:
    """The whole stage by hand (the CLI), same steps as the DAG."""
    rnd = resolve_round(root, rnd)
    out = as_path(out_dir)
    _unlink(out / "manifest.json")
    files, pool = prepare_inputs(input_uri)
    for stale in list_files(out / "prepared" / "_staging"):
        stale.unlink()
    for i, f in enumerate(files):
        step_prepare_file(out_dir, i, f)
    shards = step_finalize_prepare(out_dir, cfg, benchmark_uri, pool)
    n_tasks = max(1, len(annotators) * len(shards))
    for shard in shards:
        step_score(root, out_dir, rnd, shard, cfg)
        for a in annotators:
            step_annotate_shard(root, out_dir, rnd, shard, a, cfg, n_tasks)
        step_decide(root, out_dir, rnd, shard, [a.name for a in annotators], cfg)
    counts = step_check_conservation(out_dir, shards)
    return step_export(out_dir, rnd, counts, cfg, params)


def accuracy_report(out_dir: PathLike, truth: pa.Table) -> dict:
    """Synthetic data only: label accuracy of the input vs the kept vs the recycled set against the hidden truth."""
    from .synthetic import label_accuracy

    out = as_path(out_dir)
    prepared = _prepared_dir(out_dir)

    def acc(tables: list[pa.Table]) -> float | None:
        if not tables:
            return None
        t = pa.concat_tables(tables)
        rows = [{"pair_id": r["pair_id"], "chosen": r["chosen"][-1]["content"]} for r in t.select(["pair_id", "chosen"]).to_pylist()]
        return label_accuracy(pa.Table.from_pylist(rows), truth)

    input_acc = label_accuracy(pa.concat_tables([read_parquet(s) for s in pool_shards(prepared)]).select(["pair_id", "chosen"]), truth)
    return {"input": input_acc, **{k: acc([read_parquet(p) for p in list_files(out / k, (".parquet",))]) for k in ("kept", "recycled", "dropped")}}
