"""Stage 2, decide: the decision protocol over a shard (keep / recycle / drop, each with a reason; the
canaries' outcomes) and the run's conservation check."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa

from synpref.io.layout import DECISIONS, Stage2Layout
from synpref.io.preprocess import (
    FILTERS,
    ConservationError,
    check_conservation,
)
from synpref.io.storage import (
    PathLike,
    as_path,
    read_parquet,
    write_parquet,
)
from synpref.progress import log, shard_position
from synpref.records import (
    DecisionSummary,
    PoolManifest,
    ShardDecided,
    ShardScores,
)
from synpref.schema import PAIR_SCHEMA, to_trl
from synpref.settings import HIST_BINS
from synpref.stage2.canaries import OUTCOME_SCHEMA, label_right
from synpref.stage2.consistency import (
    Decided,
    decide_shard,
    p_of,
)
from synpref.stage2.context import Stage2Run, gold_by_id, run_shards
from synpref.stage2.judge import fitted_rule, merged_verdicts
from synpref.stage2.recycle import recycled

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
    pa.field("confidence", pa.float64()),
    pa.field("evidence", pa.string()),
]


def _decision_schema() -> pa.Schema:
    base = to_trl(PAIR_SCHEMA.empty_table()).schema
    for f in DECISION_FIELDS:
        base = base.append(f)
    return base


def _exported(r: dict, s: dict, decided: Decided, gold: dict[str, dict]) -> dict:
    """The pair as it is exported: gold pairs keep their human label, recycled pairs are flipped."""
    if s["in_gold"]:
        g = gold[r["pair_id"]]
        return {**r, "chosen": g["chosen"], "rejected": g["rejected"], "flipped": g["flipped"], "provenance": "human"}
    if decided.decision == "recycled":
        return recycled(r)
    if decided.decision == "kept":
        return {**r, "provenance": "llm" if s["routed_to_llm"] else "rm"}
    return r


def _decision_columns(s: dict, decided: Decided, m: dict) -> dict:
    """Why a pair got its decision: the rule's reason, the RMs' p (for display), the judges' votes."""
    evidence = json.dumps(decided.evidence, sort_keys=True) if decided.evidence else None
    return {
        "decision": decided.decision,
        "reason": decided.reason,
        "p_best": p_of(s, "best"),
        "p_gold": p_of(s, "gold"),
        "routed_to_llm": s["routed_to_llm"],
        "llm_verdict": m.get("verdict"),
        **{k: m.get(k) for k in ("votes_agree", "votes_disagree", "votes_abstain")},
        "confidence": decided.confidence,
        "evidence": evidence,
    }


def _decided_table(pairs: list[dict], columns: list[dict], schema: pa.Schema) -> pa.Table:
    """One decision's part: the pairs in TRL form (converted once per table) with their decision columns."""
    trl = to_trl(pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA))
    for f in DECISION_FIELDS:
        trl = trl.append_column(f, pa.array([c[f.name] for c in columns], type=f.type))
    return trl.cast(schema)


def decision_summary(decided: dict[str, list[dict]]) -> DecisionSummary:
    """What the report needs of a shard, so it never reads the pairs: p histograms and categories by decision.
    ``decided``: decision → the decision columns of its pairs plus their ``task_category``."""
    hist: dict[str, dict[str, list[int]]] = {k: {} for k in ("p_best", "p_gold")}
    categories: dict[str, dict[str, int]] = {}
    for decision, rows in decided.items():
        for k in hist:
            counts = [0] * HIST_BINS
            for r in rows:
                if r.get(k) is not None:
                    counts[min(HIST_BINS - 1, int(r[k] * HIST_BINS))] += 1
            hist[k][decision] = counts
        for r in rows:
            by = categories.setdefault(r.get("task_category") or "unknown", {})
            by[decision] = by.get(decision, 0) + 1
    return DecisionSummary(**hist, categories={c: categories[c] for c in sorted(categories)})


def step_decide(ctx: Stage2Run, shard_uri: PathLike, annotator_names: list[str]) -> ShardDecided:
    """The decision protocol (``decide_shard``) over one shard: keep / recycle / drop, each with a reason,
    the canaries' outcomes; marker last.

    Reads the shard, its ``scores``, ``canary_scores``, ``canary_pairs``, ``samples`` and ``scores_marker`` and
    the round's ``gold`` and ``judges``; writes its ``part`` of each decision, its ``canaries`` (outcomes), then
    its ``success`` marker."""
    run = ctx.run
    shard = run.shard(shard_uri)
    log.info("decide: %s", shard_position(shard.name, run_shards(run)))
    rows = read_parquet(shard_uri).to_pylist()
    scores = read_parquet(shard.scores).to_pylist()
    canary_scores = read_parquet(shard.canary_scores).to_pylist()
    merged = merged_verdicts(shard, annotator_names, ctx.cfg.merge_policy, ctx.round)
    result = decide_shard(scores, merged, fitted_rule(shard), canary_scores)
    stale = [s["pair_id"] for s in scores if s["routed_to_llm"] != result.routed[s["pair_id"]]]
    stale += [c["pair_id"] for c in canary_scores if c["routed_to_llm"] != result.canaries_routed[c["pair_id"]]]
    if stale:
        raise ConservationError(f"shard {shard.name}: {len(stale)} pairs routed unlike their stored scores")
    by_id, gold = {s["pair_id"]: s for s in scores}, gold_by_id(ctx)
    out: dict[str, tuple[list[dict], list[dict]]] = {d: ([], []) for d in DECISIONS}
    for r in rows:
        s, decided = by_id[r["pair_id"]], result.decided[r["pair_id"]]
        pairs, columns = out[decided.decision]
        pairs.append(_exported(r, s, decided, gold))
        columns.append(_decision_columns(s, decided, merged.get(r["pair_id"], {})))
    schema = _decision_schema()
    for decision, (pairs, columns) in out.items():
        write_parquet(_decided_table(pairs, columns, schema), run.part(decision, shard.name))
    counts = {d: len(pairs) for d, (pairs, _) in out.items()}
    check_conservation(len(rows), counts, where=f"shard {shard.name}")
    sources = {c["pair_id"]: c["source_pair_id"] for c in read_parquet(shard.canary_pairs).to_pylist()}
    outcomes = [
        {
            "pair_id": pid,
            "source_pair_id": sources[pid],
            "decision": d.decision,
            "confidence": d.confidence,
            "routed_to_llm": result.canaries_routed[pid],
            "label_right": label_right(pid),
        }
        for pid, d in result.canaries.items()
    ]
    write_parquet(pa.Table.from_pylist(outcomes, schema=OUTCOME_SCHEMA), shard.canaries)
    summary = {d: [{**c, "task_category": p["task_category"]} for p, c in zip(*out[d])] for d in DECISIONS}
    record = ShardDecided(
        shard=shard.name,
        input=len(rows),
        **counts,
        summary=decision_summary(summary),
        canaries=len(outcomes),
        routed_to_llm=sum(s["routed_to_llm"] for s in scores),
        rule=result.rule.model_dump(mode="json"),
        fitted=result.rule.summary(),
        fingerprint=ShardScores.read(shard.scores_marker).fingerprint,
    )
    record.write(shard.success)
    return record


def step_check_conservation(run: Stage2Layout, shard_uris: list[str]) -> dict:
    """Fail loudly unless input = kept + recycled + dropped + quarantined + each rule's drops (per shard, overall):
    reads the pool's ``manifest`` and every shard's ``success`` marker."""
    pool_manifest = PoolManifest.read(run.pool().manifest)
    pc = pool_manifest.counts
    held = {s.name: s.count for s in pool_manifest.shards}
    totals: Counter = Counter()
    for uri in shard_uris:
        marker = run.shard(uri).success
        if not marker.exists():
            raise ConservationError(f"shard {as_path(uri).name} has no decisions (missing {marker})")
        info = ShardDecided.read(marker)
        decided = {d: getattr(info, d) for d in DECISIONS}
        check_conservation(info.input, decided, where=f"shard {info.shard}")
        expected = held.get(as_path(uri).name)
        if expected != info.input:
            raise ConservationError(f"shard {info.shard}: decided {info.input} pairs but the shard holds {expected}")
        totals.update({**decided, "routed_to_llm": info.routed_to_llm})
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
