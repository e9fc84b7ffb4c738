"""Stage 2: large-scale automatic curation (paper §3.3, Figure 3 right), sharded and bounded in memory.

prepare (pre-processing into shards) → score (the signals: best-RM and gold-RM logits per shard; the
decision rule fitted to the shard, stored with it, routes pairs to the judges — by default the
reliability rule: pairs whose RM-only confidence is below ``rm_only_confidence``) → annotate (LLM
re-annotation with few-shot gold examples, per shard, annotators in sequence) → decide (``consistency.decide_shard``:
keep / recycle / drop, per shard) → conservation check → quality estimates → export (TRL-ready
Parquet, dataset card, manifest). Paths: ``layout.Stage2Layout``; records: ``records``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import pyarrow as pa

from synpref.io.layout import DECISIONS, PoolLayout, RoundLayout, ShardLayout, Stage2Layout, StorageLayout, layout
from synpref.io.preprocess import (
    DROPPED_SCHEMA,
    FILTERS,
    ConservationError,
    check_conservation,
    clear_staging,
    finalize_pool,
    normalize_file,
    plan_run,
)
from synpref.io.readers import scan_inputs
from synpref.io.storage import (
    PathLike,
    StorageError,
    WriterLock,
    as_path,
    list_files,
    read_bytes,
    read_json,
    read_parquet,
    remove_stale,
    write_bytes,
    write_json,
    write_parquet,
)
from synpref.llm.annotation import (
    Settled,
    asking,
    examples_table,
    few_shot_examples,
    judge_in_sequence,
    merge_samples,
    read_examples,
    requests_asked,
    task_budget,
    template,
    with_samples,
)
from synpref.llm.client import AnnotatorConfig, PendingRequest
from synpref.models.reliability import counted_samples, uninformative_judges
from synpref.progress import log, shard_position
from synpref.records import (
    AnnotatorBill,
    DecisionSummary,
    Frontier,
    Interval,
    JudgingBill,
    PoolManifest,
    PoolSource,
    QualityEstimates,
    ShardDecided,
    ShardScores,
    Stage2Manifest,
    Stage2Preview,
)
from synpref.schema import PAIR_SCHEMA, has_attributes, to_trl
from synpref.settings import HIST_BINS, PrepareConfig, Stage2Config
from synpref.stage2.canaries import CANARY_SCHEMA, OUTCOME_SCHEMA, canary_rows, estimates, label_right
from synpref.stage2.consistency import (
    Decided,
    RewardModelSignal,
    RuleBase,
    Signal,
    configured_rule,
    decide_shard,
    load_rule,
    p_of,
    score_rows,
    scores_schema,
)
from synpref.stage2.frontier import fallback_line, frontier
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


def judge_accuracy(rnd: RoundLayout) -> dict[str, float] | None:
    """Each annotator's accuracy measured on the round's gold probes (for the ``weighted`` merge)."""
    if not rnd.judges.exists():
        return None
    judges = read_json(rnd.judges)["annotators"]
    return {name: j["accuracy"] for name, j in judges.items() if j["accuracy"] is not None}


def run_shards(out_dir: PathLike | Stage2Layout) -> list[str]:
    """Names of the run's shards (from its pool manifest): for "shard i of n" in the task logs."""
    pool = _run(out_dir).pool()
    return [as_path(u).name for u in pool.shard_uris()] if pool.is_complete() else []


def _run(out_dir: PathLike | Stage2Layout) -> Stage2Layout:
    return out_dir if isinstance(out_dir, Stage2Layout) else Stage2Layout(out_dir)


# --- prepare -------------------------------------------------------------------------------


def prepare_inputs(
    input_uri: PathLike, out_dir: PathLike | Stage2Layout | None = None
) -> tuple[list[str], str | None]:
    """(raw input files, None) or ([], pool dir) when the input is an existing pool (has a pool manifest).

    With ``out_dir``, the input paths skipped (and why) are recorded for the run's pool manifest."""
    manifest = PoolLayout(input_uri).manifest
    if manifest.exists() and read_json(manifest).get("kind") == "pool":  # a pool, not a stage-2 run's output
        return [], str(as_path(input_uri))
    scan = scan_inputs(input_uri)
    if out_dir is not None:
        plan_run(_run(out_dir).prepared, scan.files, scan.skipped)
    return scan.files, None


def step_prepare_file(
    out_dir: PathLike | Stage2Layout, index: int, file_uri: str, split: list[int] | None = None
) -> dict:
    """The map step of the run's own input preparation: one file, or one range of a large JSON-lines file."""
    return normalize_file(file_uri, index, _run(out_dir).prepared, split=split)


def step_finalize_prepare(
    out_dir: PathLike | Stage2Layout,
    cfg: Stage2Config,
    benchmark_uri: PathLike | None = None,
    source_pool: str | None = None,
) -> list[str]:
    """Global dedup/decontam/shards of the input (or adopt an existing pool); returns shard URIs."""
    prepared = _run(out_dir).prepared
    if source_pool:
        PoolSource(source_pool=source_pool).write(prepared.source)
        return PoolLayout(source_pool).shard_uris()
    if prepared.source.exists():
        prepared.source.unlink()
    finalize_pool(prepared, benchmark_uri, PrepareConfig(shard_size=cfg.shard_size))
    return prepared.shard_uris()


# --- per shard -----------------------------------------------------------------------------


def _gold(store: StorageLayout, rnd: str) -> dict[str, dict]:
    return {g["pair_id"]: g for g in read_parquet(store.round(rnd).gold).to_pylist()}


def shard_fingerprint(cfg: Stage2Config, store: StorageLayout, rnd: str, shard_uri: PathLike) -> str:
    """Identity of a shard's inputs: the config, the round (its manifest's bytes) and the shard's own bytes.
    A finished shard is skipped only when this matches: a changed input or round is scored again."""
    parts = [read_bytes(store.round(rnd).manifest), read_bytes(shard_uri)]
    digests = [hashlib.sha256(b).hexdigest() for b in parts]
    blob = json.dumps([cfg.model_dump(), rnd, *digests], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def step_score(
    root: PathLike | StorageLayout,
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    shard_uri: PathLike,
    cfg: Stage2Config = Stage2Config(),
    signals: list[Signal] | None = None,
    rule: RuleBase | None = None,
) -> ShardScores:
    """Every signal's logit for every pair of one shard (gold pairs are marked, never scored: they keep their
    label), the decision rule fitted to the shard and its routing; the shard's canaries, built and scored once."""
    store, run = layout(root), _run(out_dir)
    shard = run.shard(shard_uri)
    log.info("score: %s", shard_position(shard.name, run_shards(out_dir)))
    fingerprint = shard_fingerprint(cfg, store, rnd, shard_uri)
    if shard.scores_marker.exists():
        done = ShardScores.read(shard.scores_marker)
        if done.fingerprint == fingerprint:
            return done
    signals = round_signals(store.round(rnd)) if signals is None else signals
    rows = read_parquet(shard_uri).to_pylist()
    gold = _gold(store, rnd)
    gold_ids = set(gold)
    to_score = [r for r in rows if r["pair_id"] not in gold_ids]
    table_rows = _scored(rows, to_score, signals, _label_conflicts(run))
    fitted = (rule or configured_rule(cfg, store.round(rnd))).fit(table_rows)
    for row in table_rows:
        row["routed_to_llm"] = not row["in_gold"] and fitted.needs_judges(row)
    schema = scores_schema([s.name for s in signals])
    write_parquet(pa.Table.from_pylist(table_rows, schema=schema), shard.scores)
    canaries = _canaries(store, run, rnd, shard_uri, rows, cfg)
    write_parquet(pa.Table.from_pylist(canaries, schema=CANARY_SCHEMA), shard.canary_pairs)
    canary_table = _scored(canaries, canaries, signals, set())
    for row in canary_table:
        row["routed_to_llm"] = fitted.needs_judges(row)
    write_parquet(pa.Table.from_pylist(canary_table, schema=schema), shard.canary_scores)
    pairs, routed_canaries = _routed(rows, table_rows, fitted), _routed_canaries(canaries, canary_table)
    examples = _few_shot(list(gold.values()), pairs, routed_canaries, cfg, store.gold_embedding_cache(rnd))
    write_parquet(examples_table(examples), shard.examples)
    rms = [s for s in signals if isinstance(s, RewardModelSignal)]
    record = ShardScores(
        shard=shard.name,
        pairs=len(rows),
        in_gold=len(rows) - len(to_score),
        routed_to_llm=sum(t["routed_to_llm"] for t in table_rows),
        canaries=len(canaries),
        rule=fitted.model_dump(mode="json"),
        fitted=fitted.summary(),
        fingerprint=fingerprint,
        **({"device": rms[0].device, "truncated": sum(s.truncated for s in rms)} if rms else {}),
    )
    record.write(shard.scores_marker)
    return record


def _scored(rows: list[dict], to_score: list[dict], signals: list[Signal], conflicts: set[str]) -> list[dict]:
    """A scores row per pair: every signal's logit for the pairs in ``to_score`` (the others are gold pairs)."""
    logits = score_rows(signals, to_score)
    position = {r["pair_id"]: i for i, r in enumerate(to_score)}
    out = []
    for r in rows:
        i = position.get(r["pair_id"])
        row: dict[str, Any] = {"pair_id": r["pair_id"], "in_gold": i is None, "routed_to_llm": False}
        row["label_conflict"] = r["pair_id"] in conflicts
        if i is not None:
            row.update({col: float(values[i]) for col, values in logits.items()})
        out.append(row)
    return out


def _label_conflicts(run: Stage2Layout) -> set[str]:
    """Pairs whose mirrored copy was also in the input (``MirroredCopy``): their stored label carries no prior."""
    table = run.pool().table("label_conflicts")
    return set(read_parquet(table, ["pair_id"]).column("pair_id").to_pylist()) if table.exists() else set()


def _canaries(
    store: StorageLayout, run: Stage2Layout, rnd: str, shard_uri: PathLike, rows: list[dict], cfg: Stage2Config
) -> list[dict]:
    """The canaries assigned to this shard, each with its gold pair id (see ``synpref.stage2.canaries``)."""
    held_out = store.round(rnd).gold_validation
    if not cfg.canaries or not held_out.exists():
        return []
    pool = run.pool()
    name = as_path(shard_uri).name
    names = [s.name for s in PoolManifest.read(pool.manifest).shards] if pool.is_complete() else [name]
    with_attributes = sum(map(has_attributes, rows)) * 2 > len(rows)
    return canary_rows(read_parquet(held_out).to_pylist(), name, names, cfg.canaries, with_attributes)


def _fitted_rule(shard: ShardLayout) -> RuleBase:
    """The decision rule as the scoring step fitted it to the shard (annotate and decide read it, never refit it
    to the scores)."""
    return load_rule(ShardScores.read(shard.scores_marker).rule)


def _routed(rows: list[dict], scores: list[dict], rule: RuleBase) -> list[dict]:
    """The shard's pairs routed to the judges, least certain first (a budget then skips the most certain)."""
    priority = {}
    for s in scores:
        if s["routed_to_llm"]:
            confidence = rule.decide(s, None).confidence
            priority[s["pair_id"]] = abs(confidence - 0.5) if confidence is not None else 0.0
    return sorted((r for r in rows if r["pair_id"] in priority), key=lambda r: priority[r["pair_id"]])  # stable


def _routed_canaries(canaries: list[dict], canary_scores: list[dict]) -> list[dict]:
    routed = {s["pair_id"] for s in canary_scores if s["routed_to_llm"]}
    return [c for c in canaries if c["pair_id"] in routed]


def _few_shot(gold: list[dict], pairs: list[dict], canaries: list[dict], cfg: Stage2Config, cache: Any) -> dict:
    """Few-shot gold examples of every pair and canary sent to the judges (the same for every annotator); a
    canary never sees its own gold pair among its examples."""
    examples = few_shot_examples(pairs, gold, cfg.max_examples, cache)
    sources = {c["source_pair_id"] for c in canaries}
    blind = [g for g in gold if g["pair_id"] not in sources]
    return examples | few_shot_examples(canaries, blind, cfg.max_examples, cache)


def step_annotate_shard(
    root: PathLike | StorageLayout,
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    shard_uri: PathLike,
    annotators: list[AnnotatorConfig],
    cfg: Stage2Config = Stage2Config(),
    n_tasks: int = 1,
    pending: list[PendingRequest] | None = None,
) -> dict:
    """LLM re-annotation (no humans) of one shard's routed pairs (and canaries) with the few-shot gold examples
    the score step retrieved for them (no encoder here: these tasks are many and only wait on HTTP).

    Batch-mode annotators' requests missing from the cache are appended to ``pending`` (``synpref.llm.batch``):
    nothing is written then, and the result says how many are pending; run it again once they are answered.

    With ``judges_in_sequence`` the annotators are asked one after another (the rule's ``judge_priority``
    first) and a pair goes to the next only while the rule says it is open (``RuleBase.settled``)."""
    store, run = layout(root), _run(out_dir)
    shard = run.shard(shard_uri)
    log.info("annotate: %s", shard_position(shard.name, run_shards(out_dir)))
    rule = _fitted_rule(shard)
    scores = read_parquet(shard.scores).to_pylist()
    pairs = _routed(read_parquet(shard_uri).to_pylist(), scores, rule)
    canary_scores = read_parquet(shard.canary_scores).to_pylist()
    canaries = _routed_canaries(read_parquet(shard.canary_pairs).to_pylist(), canary_scores)
    examples = read_examples(shard.examples, list(_gold(store, rnd).values()))  # chosen once, by the score step
    judges = read_json(store.round(rnd).judges) if store.round(rnd).judges.exists() else {}
    annotators = [asking(with_samples(cfg, a), judges) for a in annotators]  # as the round's probe measured them
    settled = None
    if cfg.judges_in_sequence:
        annotators = sorted(annotators, key=lambda a: (-rule.judge_priority(a.name), a.name))
        settled = _settled_by(rule, scores + canary_scores, store.round(rnd))
    waiting = len(pending) if pending is not None else 0
    repeat = settled is not None and rule.weighs_logprobs
    tables, usage = judge_in_sequence(
        canaries + pairs,
        examples,
        annotators,
        store.llm_cache,
        cfg,
        task_budget(cfg, n_tasks),
        settled,
        pending,
        repeat,
    )
    if pending is not None and len(pending) > waiting:
        return {"shard": shard.name, "pending": len(pending) - waiting}
    for a in annotators:
        write_parquet(tables[a.name], shard.samples(a.name))
        write_json(usage[a.name]["work"], shard.usage(a.name))
    counts = {a.name: {k: usage[a.name][k] for k in ("requests", "cache_hits", "errors")} for a in annotators}
    return {"shard": shard.name, "pairs": len(pairs), "canaries": len(canaries), "annotators": counts}


def _settled_by(rule: RuleBase, scores: list[dict], rnd: RoundLayout) -> Settled:
    """``rule.settled`` over the verdicts that count (annotators measured uninformative on the probe count zero in
    the decide step, so they neither settle a pair nor keep it open)."""
    by_id = {s["pair_id"]: s for s in scores}
    zero = set(uninformative_judges(read_json(rnd.judges) if rnd.judges.exists() else {}))

    def settled(pair_id: str, judgement: dict, remaining: list[str]) -> str | None:
        counted = [v for v in judgement["annotator_verdicts"] if v["annotator"] not in zero]
        return rule.settled(
            by_id[pair_id], {**judgement, "annotator_verdicts": counted}, [n for n in remaining if n not in zero]
        )

    return settled


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


def merged_verdicts(shard: ShardLayout, annotator_names: list[str], policy: str, rnd: RoundLayout) -> dict[str, dict]:
    """The judges' samples of one shard merged per pair (every annotator that judged it)."""
    samples = [read_parquet(shard.samples(a)) for a in sorted(annotator_names) if shard.samples(a).exists()]
    samples = counted_samples(samples, read_json(rnd.judges) if rnd.judges.exists() else {})
    merged = merge_samples(samples, policy, judge_accuracy(rnd)).to_pylist() if samples else []
    return {m["pair_id"]: m for m in merged}


def step_decide(
    root: PathLike | StorageLayout,
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    shard_uri: PathLike,
    annotator_names: list[str],
    cfg: Stage2Config = Stage2Config(),
) -> ShardDecided:
    """The decision protocol (``decide_shard``) over one shard: keep / recycle / drop, each with a reason,
    the canaries' outcomes; marker last."""
    store, run = layout(root), _run(out_dir)
    shard = run.shard(shard_uri)
    log.info("decide: %s", shard_position(shard.name, run_shards(out_dir)))
    rows = read_parquet(shard_uri).to_pylist()
    scores = read_parquet(shard.scores).to_pylist()
    canary_scores = read_parquet(shard.canary_scores).to_pylist()
    merged = merged_verdicts(shard, annotator_names, cfg.merge_policy, store.round(rnd))
    result = decide_shard(scores, merged, _fitted_rule(shard), canary_scores)
    stale = [s["pair_id"] for s in scores if s["routed_to_llm"] != result.routed[s["pair_id"]]]
    stale += [c["pair_id"] for c in canary_scores if c["routed_to_llm"] != result.canaries_routed[c["pair_id"]]]
    if stale:
        raise ConservationError(f"shard {shard.name}: {len(stale)} pairs routed unlike their stored scores")
    by_id, gold = {s["pair_id"]: s for s in scores}, _gold(store, rnd)
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


# --- whole run -----------------------------------------------------------------------------


def step_check_conservation(out_dir: PathLike | Stage2Layout, shard_uris: list[str]) -> dict:
    """Fail loudly unless input = kept + recycled + dropped + quarantined + each rule's drops (per shard, overall)."""
    run = _run(out_dir)
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
    for name, decision in dict.fromkeys((f.name, f.decision) for f in FILTERS):
        t = read_parquet(pool.table(name)) if pool.table(name).exists() else DROPPED_SCHEMA.empty_table()
        rows += [
            {
                "pair_id": r["pair_id"],
                "decision": decision,
                "reason": r["reason"],
                "source_file": r["source"],
                "record_index": None,
                "raw": None,
            }
            for r in t.to_pylist()
        ]
    return pa.Table.from_pylist(rows, schema=QUARANTINED_SCHEMA)


BILL_SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cost_usd",
    "prompt_chars",
    "shared_prefix_chars",
)  # summed over shards (the usage files hold all but the requests)


def judging_bill(shards: list, counts: dict, annotators: list[AnnotatorConfig]) -> JudgingBill:
    """The run's LLM bill from every shard's samples (requests asked, why sampling stopped) and usage (tokens,
    cost at each annotator's price: the batch price in batch mode): per annotator, per input pair and per 1,000
    curated pairs."""
    configs = {a.name: a for a in annotators}
    bills: dict[str, dict] = {}
    settled: Counter = Counter()
    for shard in shards:
        for name in sorted(configs):
            if not shard.samples(name).exists():
                continue
            bill = bills.setdefault(name, dict.fromkeys((*BILL_SUMS, "samples"), 0))
            stops = bill.setdefault("stopped", Counter())
            table = read_parquet(shard.samples(name))
            bill["requests"] += requests_asked(table)
            bill["samples"] += table.num_rows
            for column, counter in (("stopped", stops), ("settled", settled)):
                if column in table.column_names:
                    counter.update(s for s in table.column(column).to_pylist() if s)
            if shard.usage(name).exists():
                work = read_json(shard.usage(name))
                for k in BILL_SUMS[1:]:
                    bill[k] += work.get(k, 0)
    per = {
        n: AnnotatorBill(
            **{k: b[k] for k in ("requests", "prompt_tokens", "completion_tokens", "cached_prompt_tokens")},
            cost_usd=round(b["cost_usd"], 6),
            stopped=dict(sorted(b["stopped"].items())),
            samples=b["samples"],
            shared_prefix_share=round(b["shared_prefix_chars"] / b["prompt_chars"], 4) if b["prompt_chars"] else None,
            verdicts=configs[n].verdicts,
            mode=configs[n].mode,
        )
        for n, b in sorted(bills.items())
    }
    inputs, curated = max(1, counts.get("input", 0)), counts.get("kept", 0) + counts.get("recycled", 0)
    cost = round(sum(b.cost_usd for b in per.values()), 6)
    return JudgingBill(
        annotators=per,
        requests_per_input_pair=round(sum(b.requests for b in per.values()) / inputs, 4),
        tokens_per_input_pair=round(sum(b.prompt_tokens + b.completion_tokens for b in per.values()) / inputs, 1),
        cost_usd=cost,
        cost_per_1k_curated_usd=round(1000 * cost / curated, 6) if curated else None,
        settled=dict(sorted(settled.items())),
    )


def step_estimate(
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    counts: dict,
    cfg: Stage2Config,
    annotators: list[AnnotatorConfig] = (),
) -> Stage2Preview:
    """Quarantined table, stale parts removed, and the canaries' quality estimates → ``estimates.json``
    (what a sign-off shows before the dataset is exported); → the preview manifest."""
    run = _run(out_dir)
    write_parquet(_quarantined_table(run), run.quarantined)
    shards = [run.shard(s) for s in run.pool().shard_uris()]
    for d in DECISIONS:  # a previous run of this --out over more shards must not leave parts behind
        remove_stale(run.split_dir(d), {run.part(d, s.name).name for s in shards})
    remove_stale(run.shards_dir, {s.name for s in shards})
    outcomes = [o for s in shards if s.canaries.exists() for o in read_parquet(s.canaries).to_pylist()]
    decided = sum(counts[d] for d in DECISIONS)
    quality = estimates(outcomes, counts["kept"] / decided if decided else 0.0)
    reachable = run_frontier(run, shards, cfg)
    preview = Stage2Preview(
        kind="stage2_preview",
        run=run.name,
        round=rnd,
        counts=counts,
        quality_estimates=quality,
        config=cfg.model_dump(),
        judging=judging_bill(shards, counts, list(annotators)),
        **({"frontier": reachable} if reachable is not None else {}),
    )
    preview.write(run.estimates)
    return preview


def run_frontier(run: Stage2Layout, shards: list[ShardLayout], cfg: Stage2Config) -> Frontier | None:
    """The run's estimated precision–retention frontier over its decided parts; None for a rule without posteriors
    (the paper rule)."""
    rows = [
        r
        for s in shards
        for d in DECISIONS
        if (part := run.part(d, s.name)).exists()
        for r in read_parquet(part, ["decision", "confidence", "evidence"]).to_pylist()
    ]
    curated = sum(r["decision"] != "dropped" for r in rows if r["confidence"] is not None)
    reachable = frontier(rows, cfg.target_precision, cfg.min_confidence, curated)
    kept_at = [
        ShardDecided.read(s.success).fitted.get("operating_precision", cfg.target_precision)
        for s in shards
        if s.success.exists()
    ]
    fallback = fallback_line(kept_at, cfg.target_precision, cfg.target_retention)
    return reachable.model_copy(update={"fallback": fallback}) if reachable.pairs else None


def step_export(
    out_dir: PathLike | Stage2Layout,
    rnd: str,
    counts: dict,
    cfg: Stage2Config,
    params: dict | None = None,
    date: str = "",
) -> Stage2Manifest:
    """Dataset card and manifest (last), from the estimates step's ``estimates.json``."""
    run = _run(out_dir)
    preview = Stage2Preview.read(run.estimates)
    quality, judging = preview.quality_estimates, preview.judging
    card = template("dataset_card.md").format(
        run=run.name,
        round=rnd,
        decision_rule=cfg.decision_rule,
        target_precision=cfg.target_precision,
        recycle_policy=cfg.recycle_policy,
        band=cfg.band,
        quality=quality_lines(quality),
        frontier=frontier_lines(preview.frontier),
        judging=bill_line(judging),
        date=date,
        params=json.dumps(params or cfg.model_dump(), sort_keys=True, default=str),
        **counts,
    )
    write_bytes(run.dataset_card, card.encode())
    manifest = Stage2Manifest(
        kind="stage2_run",
        run=run.name,
        round=rnd,
        counts=counts,
        quality_estimates=quality,
        config=cfg.model_dump(),
        params=params or {},
        splits={d: sorted(p.name for p in list_files(run.split_dir(d), (".parquet",))) for d in DECISIONS},
        tables=[run.quarantined.name],
        dataset_card=run.dataset_card.name,
        **({"judging": judging} if judging is not None else {}),
        **({"frontier": preview.frontier} if preview.frontier is not None else {}),
    )
    manifest.write(run.manifest)
    return manifest


def frontier_lines(reachable: Frontier | None) -> str:
    """The frontier as a Markdown table of the dataset card (with the reason when the run published nothing)."""
    if reachable is None:
        return "Not estimated: the decision rule gives no calibrated posteriors (the paper rule)."
    rows = "\n".join(f"| {p.precision:.2f} | {p.kept} | {p.recycled} |" for p in reachable.points)
    why = "".join(f"**{line}.**\n\n" for line in (reachable.reason, reachable.fallback) if line)
    return (
        f"{why}Estimated from the calibrated posteriors of {reachable.pairs} decided pairs (the model's; the canaries "
        f"above check them). This run's target: {reachable.target:.2f}.\n\n"
        f"| estimated precision | kept | flipped |\n|---|---|---|\n{rows}"
    )


def bill_line(judging: JudgingBill | None) -> str:
    """The judging bill in one line of the dataset card."""
    if judging is None or not judging.annotators:
        return "no judge was asked"
    per = "; ".join(
        f"{n}: {b.requests:,} requests ({b.verdicts} verdicts, {b.mode})" for n, b in judging.annotators.items()
    )
    per_1k = "n/a" if judging.cost_per_1k_curated_usd is None else f"${judging.cost_per_1k_curated_usd:.4f}"
    return (
        f"{judging.requests_per_input_pair:.2f} requests and {judging.tokens_per_input_pair:,.0f} tokens per input "
        f"pair; ${judging.cost_usd:.4f} in all, {per_1k} per 1,000 curated pairs ({per})"
    )


def quality_lines(quality: QualityEstimates) -> str:
    """The canary estimates as markdown lines for the dataset card."""
    if not quality.canaries:
        return "- No canaries (no held-out gold in the source round, or `canaries` = 0): no estimates."

    def fmt(q: Interval | None) -> str:
        if q is None or q.estimate is None:
            return "n/a"
        return f"{q.estimate:.3f} (95% interval {q.ci_low or 0:.3f}–{q.ci_high or 0:.3f})"

    return "\n".join(
        [
            f"- Blind canaries: {quality.canaries} (held-out gold pairs, both orientations; never exported)",
            f"- Estimated precision of the kept pairs: {fmt(quality.kept_precision)}",
            f"- Estimated retention of pairs with a right label: {fmt(quality.retention)}",
            f"- Estimated precision of the recycled (flipped) pairs: {fmt(quality.recycled_precision)}",
            f"- Estimated share of right labels in the input: {quality.label_accuracy_of_input:.3f}",
        ]
    )


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


def begin_run(out_dir: PathLike | Stage2Layout, lock: WriterLock | None = None) -> Stage2Layout:
    """Check the output is a stage-2 run's, take its writer lock (this process's unless ``lock``), then drop
    its manifest and the staging of a previous run: a (re-)run is incomplete until re-exported."""
    run = _run(out_dir)
    check_output(run)
    (lock or WriterLock.for_process(run.lock)).acquire()
    if run.manifest.exists():
        run.manifest.unlink()
    clear_staging(run.prepared)
    return run


def end_run(out_dir: PathLike | Stage2Layout, lock: WriterLock | None = None) -> None:
    """Release the run's writer lock (after the export, or when an in-process run stops)."""
    run = _run(out_dir)
    (lock or WriterLock.for_process(run.lock)).release()
