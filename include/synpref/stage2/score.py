"""Stage 2, score: every signal's logit per pair of a shard, the decision rule fitted to the shard and its
routing, the shard's canaries and the few-shot gold examples of what goes to the judges (``step_score``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from synpref.io.layout import RoundLayout, Stage2Layout
from synpref.io.storage import (
    PathLike,
    as_path,
    read_bytes,
    read_parquet,
    write_parquet,
)
from synpref.llm.annotation import (
    examples_table,
    few_shot_examples,
)
from synpref.progress import log, shard_position
from synpref.records import (
    PoolManifest,
    ShardScores,
)
from synpref.schema import has_attributes
from synpref.settings import Stage2Config
from synpref.stage2.canaries import CANARY_SCHEMA, canary_rows
from synpref.stage2.consistency import (
    RewardModelSignal,
    RuleBase,
    Signal,
    configured_rule,
    score_rows,
    scores_schema,
)
from synpref.stage2.context import Stage2Run, gold_by_id, run_shards


def round_signals(rnd: RoundLayout) -> list[Signal]:
    """The paper's two signals: the round's best RM and gold RM."""
    return [RewardModelSignal("best", rnd.best_rm), RewardModelSignal("gold", rnd.gold_rm)]


def shard_fingerprint(ctx: Stage2Run, shard_uri: PathLike) -> str:
    """Identity of a shard's inputs: the config, the round (its manifest's bytes) and the shard's own bytes.
    A finished shard is skipped only when this matches: a changed input or round is scored again."""
    parts = [read_bytes(ctx.round.manifest), read_bytes(shard_uri)]
    digests = [hashlib.sha256(b).hexdigest() for b in parts]
    blob = json.dumps([ctx.cfg.model_dump(), ctx.rnd, *digests], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def step_score(
    ctx: Stage2Run, shard_uri: PathLike, signals: list[Signal] | None = None, rule: RuleBase | None = None
) -> ShardScores:
    """Every signal's logit for every pair of one shard (gold pairs are marked, never scored: they keep their
    label), the decision rule fitted to the shard and its routing; the shard's canaries, built and scored once.

    Reads the shard, the round's ``best_rm``, ``gold_rm``, ``gold``, ``gold_validation`` (canaries) and
    ``calibration``/``judges``; writes the shard's ``scores``, ``canary_pairs``, ``canary_scores``, ``examples``,
    then ``scores_marker`` (skipped when its fingerprint matches)."""
    store, run, rnd, cfg = ctx.store, ctx.run, ctx.rnd, ctx.cfg
    shard = run.shard(shard_uri)
    log.info("score: %s", shard_position(shard.name, run_shards(run)))
    fingerprint = shard_fingerprint(ctx, shard_uri)
    if shard.scores_marker.exists():
        done = ShardScores.read(shard.scores_marker)
        if done.fingerprint == fingerprint:
            return done
    signals = round_signals(store.round(rnd)) if signals is None else signals
    rows = read_parquet(shard_uri).to_pylist()
    gold = gold_by_id(ctx)
    gold_ids = set(gold)
    to_score = [r for r in rows if r["pair_id"] not in gold_ids]
    table_rows = _scored(rows, to_score, signals, _label_conflicts(run))
    fitted = (rule or configured_rule(cfg, store.round(rnd))).fit(table_rows)
    for row in table_rows:
        row["routed_to_llm"] = not row["in_gold"] and fitted.needs_judges(row)
    schema = scores_schema([s.name for s in signals])
    write_parquet(pa.Table.from_pylist(table_rows, schema=schema), shard.scores)
    canaries = _canaries(ctx, shard_uri, rows)
    write_parquet(pa.Table.from_pylist(canaries, schema=CANARY_SCHEMA), shard.canary_pairs)
    canary_table = _scored(canaries, canaries, signals, set())
    for row in canary_table:
        row["routed_to_llm"] = fitted.needs_judges(row)
    write_parquet(pa.Table.from_pylist(canary_table, schema=schema), shard.canary_scores)
    pairs, asked = routed_pairs(rows, table_rows, fitted), routed_canaries(canaries, canary_table)
    examples = _few_shot(list(gold.values()), pairs, asked, cfg, store.gold_embedding_cache(rnd))
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


def _canaries(ctx: Stage2Run, shard_uri: PathLike, rows: list[dict]) -> list[dict]:
    """The canaries assigned to this shard, each with its gold pair id (see ``synpref.stage2.canaries``)."""
    held_out = ctx.round.gold_validation
    if not ctx.cfg.canaries or not held_out.exists():
        return []
    pool = ctx.run.pool()
    name = as_path(shard_uri).name
    names = [s.name for s in PoolManifest.read(pool.manifest).shards] if pool.is_complete() else [name]
    with_attributes = sum(map(has_attributes, rows)) * 2 > len(rows)
    return canary_rows(read_parquet(held_out).to_pylist(), name, names, ctx.cfg.canaries, with_attributes)


def routed_pairs(rows: list[dict], scores: list[dict], rule: RuleBase) -> list[dict]:
    """The shard's pairs routed to the judges, least certain first (a budget then skips the most certain)."""
    priority = {}
    for s in scores:
        if s["routed_to_llm"]:
            confidence = rule.decide(s, None).confidence
            priority[s["pair_id"]] = abs(confidence - 0.5) if confidence is not None else 0.0
    return sorted((r for r in rows if r["pair_id"] in priority), key=lambda r: priority[r["pair_id"]])  # stable


def routed_canaries(canaries: list[dict], canary_scores: list[dict]) -> list[dict]:
    routed = {s["pair_id"] for s in canary_scores if s["routed_to_llm"]}
    return [c for c in canaries if c["pair_id"] in routed]


def _few_shot(gold: list[dict], pairs: list[dict], canaries: list[dict], cfg: Stage2Config, cache: Any) -> dict:
    """Few-shot gold examples of every pair and canary sent to the judges (the same for every annotator); a
    canary never sees its own gold pair among its examples."""
    examples = few_shot_examples(pairs, gold, cfg.max_examples, cache)
    sources = {c["source_pair_id"] for c in canaries}
    blind = [g for g in gold if g["pair_id"] not in sources]
    return examples | few_shot_examples(canaries, blind, cfg.max_examples, cache)
