"""Stage 2: large-scale automatic curation (paper §3.3, Figure 3 right), sharded and bounded in memory.

prepare (pre-processing into shards) → score (the signals: best-RM and gold-RM p, per shard) →
route (the decision rule: p_best ≤ 0.5 + band → LLM re-annotation with few-shot gold examples, per
annotator × shard) → decide (keep / recycle / drop, per shard) → conservation check → export
(TRL-ready Parquet, dataset card, manifest). Paths: ``layout.Stage2Layout``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa

from .annotation import few_shot_examples, judge, merge_samples, template
from .consistency import DecisionRule, RewardModelSignal, Signal, score_rows, scores_schema
from .layout import DECISIONS, PoolLayout, RoundLayout, Stage2Layout, StorageLayout, layout
from .llm_client import AnnotatorConfig
from .preprocess import (
    DROPPED_SCHEMA,
    FILTERS,
    ConservationError,
    check_conservation,
    clear_staging,
    finalize_pool,
    normalize_file,
)
from .readers import input_files
from .recycle import recycled
from .schema import PAIR_SCHEMA, to_trl
from .settings import PrepareConfig, Stage2Config
from .storage import (
    PathLike,
    as_path,
    list_files,
    read_json,
    read_parquet,
    write_bytes,
    write_json,
    write_parquet,
)

DECISION_FIELDS = [
    pa.field("decision", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("p_best", pa.float64()),
    pa.field("p_gold", pa.float64()),
    pa.field("routed_to_llm", pa.bool_()),
    pa.field("llm_verdict", pa.string()),
    pa.field("votes_agree", pa.int32()),
    pa.field("votes_disagree", pa.int32()),
    pa.field("votes_abstain", pa.int32()),
]
QUARANTINED_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("decision", pa.string()),
        ("reason", pa.string()),
        ("source_file", pa.string()),
        ("record_index", pa.int64()),
        ("raw", pa.string()),
    ]
)


def round_signals(rnd: RoundLayout) -> list[Signal]:
    """The paper's two signals: the round's best RM and gold RM."""
    return [RewardModelSignal("best", rnd.best_rm), RewardModelSignal("gold", rnd.gold_rm)]


def _run(out_dir: PathLike | Stage2Layout) -> Stage2Layout:
    return out_dir if isinstance(out_dir, Stage2Layout) else Stage2Layout(out_dir)


# --- prepare -------------------------------------------------------------------------------


def prepare_inputs(input_uri: PathLike) -> tuple[list[str], str | None]:
    """(raw input files, None) or ([], pool dir) when the input is an existing pool (has a pool manifest)."""
    manifest = PoolLayout(input_uri).manifest
    if manifest.exists() and read_json(manifest).get("kind") == "pool":
        return [], str(as_path(input_uri))
    return input_files(input_uri), None


def step_prepare_file(out_dir: PathLike | Stage2Layout, index: int, file_uri: str) -> dict:
    return normalize_file(file_uri, index, _run(out_dir).prepared)


def step_finalize_prepare(
    out_dir: PathLike | Stage2Layout,
    cfg: Stage2Config,
    benchmark_uri: PathLike | None = None,
    source_pool: str | None = None,
) -> list[str]:
    """Global dedup/decontam/shards of the input (or adopt an existing pool); returns shard URIs."""
    prepared = _run(out_dir).prepared
    if source_pool:
        write_json({"source_pool": source_pool}, prepared.source)
        return PoolLayout(source_pool).shard_uris()
    if prepared.source.exists():
        prepared.source.unlink()
    finalize_pool(prepared, benchmark_uri, PrepareConfig(shard_size=cfg.shard_size))
    return prepared.shard_uris()


# --- per shard -----------------------------------------------------------------------------


def _gold(store: StorageLayout, rnd: str) -> dict[str, dict]:
    return {g["pair_id"]: g for g in read_parquet(store.round(rnd).gold).to_pylist()}


def step_score(
    root: PathLike | StorageLayout,
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    shard_uri: PathLike,
    cfg: Stage2Config = Stage2Config(),
    signals: list[Signal] | None = None,
    rule: DecisionRule | None = None,
) -> dict:
    """Every signal's p for every pair of one shard; gold pairs are marked, never scored (they keep their label)."""
    store = layout(root)
    shard = _run(out_dir).shard(shard_uri)
    fingerprint = cfg.fingerprint(store, rnd)
    if shard.scores_marker.exists() and read_json(shard.scores_marker).get("fingerprint") == fingerprint:
        return read_json(shard.scores_marker)
    signals = round_signals(store.round(rnd)) if signals is None else signals
    rule = rule or cfg.rule()
    rows = read_parquet(shard_uri).to_pylist()
    gold_ids = set(_gold(store, rnd))
    to_score = [r for r in rows if r["pair_id"] not in gold_ids]
    scores = score_rows(signals, to_score)
    schema = scores_schema([s.name for s in signals])
    position = {r["pair_id"]: i for i, r in enumerate(to_score)}
    table_rows = []
    for r in rows:
        i = position.get(r["pair_id"])
        row: dict[str, Any] = {"pair_id": r["pair_id"], "in_gold": i is None, "routed_to_llm": False}
        if i is not None:
            row.update({col: float(values[i]) for col, values in scores.items()})
            row["routed_to_llm"] = rule.needs_judges(row)
        table_rows.append(row)
    write_parquet(pa.Table.from_pylist(table_rows, schema=schema), shard.scores)
    info = {
        "shard": shard.name,
        "pairs": len(rows),
        "in_gold": len(rows) - len(to_score),
        "routed_to_llm": sum(t["routed_to_llm"] for t in table_rows),
        "fingerprint": fingerprint,
    }
    write_json(info, shard.scores_marker)
    return info


def _routed(run: Stage2Layout, shard_uri: PathLike) -> list[dict]:
    scores = read_parquet(run.shard(shard_uri).scores, ["pair_id", "routed_to_llm"]).to_pylist()
    wanted = {s["pair_id"] for s in scores if s["routed_to_llm"]}
    return [r for r in read_parquet(shard_uri).to_pylist() if r["pair_id"] in wanted]


def step_annotate_shard(
    root: PathLike | StorageLayout,
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    shard_uri: PathLike,
    annotator: AnnotatorConfig,
    cfg: Stage2Config = Stage2Config(),
    n_tasks: int = 1,
) -> dict:
    """LLM re-annotation (no humans) of one shard's routed pairs by one annotator, few-shot gold examples retrieved."""
    store, run = layout(root), _run(out_dir)
    annotator = cfg.for_annotator(annotator)
    pairs = _routed(run, shard_uri)
    examples = few_shot_examples(pairs, list(_gold(store, rnd).values()), cfg.max_examples)
    samples, usage = judge(pairs, examples, annotator, store.llm_cache, cfg, cfg.budget(n_tasks))
    shard = run.shard(shard_uri)
    write_parquet(samples, shard.samples(annotator.name))
    write_json(usage[annotator.name]["work"], shard.usage(annotator.name))
    counts = {k: usage[annotator.name][k] for k in ("requests", "cache_hits", "errors")}
    return {"shard": shard.name, "annotator": annotator.name, "pairs": len(pairs), **counts}


def _decision_schema() -> pa.Schema:
    base = to_trl(PAIR_SCHEMA.empty_table()).schema
    for f in DECISION_FIELDS:
        base = base.append(f)
    return base


def _decided_row(r: dict, s: dict, gold: dict[str, dict], rule: DecisionRule, m: dict) -> tuple[str, dict]:
    """(decision, the pair as it is exported) for one pair: gold pairs keep their human label."""
    verdict = m.get("verdict")
    if s["in_gold"]:
        g = gold[r["pair_id"]]
        label = {"chosen": g["chosen"], "rejected": g["rejected"], "flipped": g["flipped"], "provenance": "human"}
        decision, reason, row = "kept", "human-verified gold pair (label from gold)", {**r, **label}
    else:
        decision, reason = rule.decide(s, verdict)
        if decision == "recycled":
            row = recycled(r)
        elif decision == "kept":
            row = {**r, "provenance": "llm" if s["routed_to_llm"] else "rm"}
        else:
            row = r
    trl = to_trl(pa.Table.from_pylist([row], schema=PAIR_SCHEMA)).to_pylist()[0]
    votes = {k: m.get(k) for k in ("votes_agree", "votes_disagree", "votes_abstain")}
    evidence = {"p_best": s.get("p_best"), "p_gold": s.get("p_gold"), "routed_to_llm": s["routed_to_llm"]}
    return decision, {**trl, "decision": decision, "reason": reason, **evidence, "llm_verdict": verdict, **votes}


def step_decide(
    root: PathLike | StorageLayout,
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    shard_uri: PathLike,
    annotator_names: list[str],
    cfg: Stage2Config = Stage2Config(),
    rule: DecisionRule | None = None,
) -> dict:
    """The decision rule over one shard (keep / recycle / drop, each with a reason); marker last."""
    store, run = layout(root), _run(out_dir)
    shard = run.shard(shard_uri)
    rows = read_parquet(shard_uri).to_pylist()
    scores = {s["pair_id"]: s for s in read_parquet(shard.scores).to_pylist()}
    samples = [read_parquet(shard.samples(a)) for a in sorted(annotator_names) if shard.samples(a).exists()]
    merged = {m["pair_id"]: m for m in merge_samples(samples, cfg.merge_policy).to_pylist()} if samples else {}
    gold, rule = _gold(store, rnd), rule or cfg.rule()
    out: dict[str, list[dict]] = {d: [] for d in DECISIONS}
    for r in rows:
        decision, row = _decided_row(r, scores[r["pair_id"]], gold, rule, merged.get(r["pair_id"], {}))
        out[decision].append(row)
    schema = _decision_schema()
    for decision, decided in out.items():
        write_parquet(pa.Table.from_pylist(decided, schema=schema), run.part(decision, shard.name))
    counts = {k: len(v) for k, v in out.items()}
    check_conservation(len(rows), counts, where=f"shard {shard.name}")
    info = {
        "shard": shard.name,
        "input": len(rows),
        **counts,
        "routed_to_llm": sum(s["routed_to_llm"] for s in scores.values()),
        "fingerprint": cfg.fingerprint(store, rnd),
    }
    write_json(info, shard.success)
    return info


# --- whole run -----------------------------------------------------------------------------


def step_check_conservation(out_dir: PathLike | Stage2Layout, shard_uris: list[str]) -> dict:
    """Fail loudly unless input = kept + recycled + dropped + quarantined + each rule's drops (per shard, overall)."""
    run = _run(out_dir)
    pool_manifest = read_json(run.pool().manifest)
    pc = pool_manifest["counts"]
    totals: Counter = Counter()
    for uri in shard_uris:
        marker = run.shard(uri).success
        if not marker.exists():
            raise ConservationError(f"shard {as_path(uri).name} has no decisions (missing {marker})")
        info = read_json(marker)
        check_conservation(info["input"], {k: info[k] for k in DECISIONS}, where=f"shard {info['shard']}")
        expected = next(s["count"] for s in pool_manifest["shards"] if s["name"] == as_path(uri).name)
        if expected != info["input"]:
            raise ConservationError(
                f"shard {info['shard']}: decided {info['input']} pairs but the shard holds {expected}"
            )
        totals.update({k: info[k] for k in (*DECISIONS, "routed_to_llm")})
    counts = {
        "input": pc["input"],
        **{d: totals[d] for d in DECISIONS},
        "quarantined": pc["quarantined"],
        **{f.name: pc[f.name] for f in FILTERS},
    }
    check_conservation(
        counts["input"], {k: v for k, v in counts.items() if k != "input"}, where=f"stage2 run {run.dir}"
    )
    return {**counts, "routed_to_llm": totals["routed_to_llm"], "shards": len(shard_uris)}


def _quarantined_table(run: Stage2Layout) -> pa.Table:
    """One table of every input line set aside before scoring: quarantined, then each rule's drops."""
    pool = run.pool()
    rows = [
        {
            "pair_id": None,
            "decision": "quarantined",
            "reason": q["reason"],
            "source_file": q["source_file"],
            "record_index": q["record_index"],
            "raw": q["raw"],
        }
        for q in read_parquet(pool.quarantine).to_pylist()
    ]
    for f in FILTERS:
        t = read_parquet(pool.table(f.name)) if pool.table(f.name).exists() else DROPPED_SCHEMA.empty_table()
        rows += [
            {
                "pair_id": r["pair_id"],
                "decision": f.decision,
                "reason": r["reason"],
                "source_file": r["source"],
                "record_index": None,
                "raw": None,
            }
            for r in t.to_pylist()
        ]
    return pa.Table.from_pylist(rows, schema=QUARANTINED_SCHEMA)


def step_export(
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    counts: dict,
    cfg: Stage2Config,
    params: dict | None = None,
    date: str = "",
) -> dict:
    """Quarantined table, dataset card and manifest (last)."""
    run = _run(out_dir)
    write_parquet(_quarantined_table(run), run.quarantined)
    card = template("dataset_card.md").format(
        run=run.name,
        round=rnd,
        recycle_policy=cfg.recycle_policy,
        band=cfg.band,
        date=date,
        params=json.dumps(params or cfg.model_dump(), sort_keys=True, default=str),
        **counts,
    )
    write_bytes(run.dataset_card, card.encode())
    manifest = {
        "kind": "stage2_run",
        "run": run.name,
        "round": rnd,
        "counts": counts,
        "config": cfg.model_dump(),
        "params": params or {},
        "splits": {d: sorted(p.name for p in list_files(run.split_dir(d), (".parquet",))) for d in DECISIONS},
        "tables": [run.quarantined.name],
        "dataset_card": run.dataset_card.name,
    }
    write_json(manifest, run.manifest)
    return manifest


def begin_run(out_dir: PathLike | Stage2Layout) -> Stage2Layout:
    """A (re-)run is incomplete until re-exported: drop its manifest and the staging of a previous run."""
    run = _run(out_dir)
    if run.manifest.exists():
        run.manifest.unlink()
    clear_staging(run.prepared)
    return run


def run_stage2(
    root: PathLike | StorageLayout,
    out_dir: PathLike | Stage2Layout,
    input_uri: PathLike,
    annotators: list[AnnotatorConfig],
    rnd: str = "latest",
    cfg: Stage2Config = Stage2Config(),
    benchmark_uri: PathLike | None = None,
    params: dict | None = None,
) -> dict:
    """The whole stage by hand (the CLI), same steps as the DAG."""
    store = layout(root)
    rnd = store.resolve_round(rnd)
    run = begin_run(out_dir)
    files, pool = prepare_inputs(input_uri)
    for i, f in enumerate(files):
        step_prepare_file(run, i, f)
    shards = step_finalize_prepare(run, cfg, benchmark_uri, pool)
    n_tasks = max(1, len(annotators) * len(shards))
    for shard in shards:
        step_score(store, run, rnd, shard, cfg)
        for a in annotators:
            step_annotate_shard(store, run, rnd, shard, a, cfg, n_tasks)
        step_decide(store, run, rnd, shard, [a.name for a in annotators], cfg)
    counts = step_check_conservation(run, shards)
    return step_export(run, rnd, counts, cfg, params)
