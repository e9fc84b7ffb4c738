"""Stage 2, judge: LLM re-annotation of a shard's routed pairs and canaries, annotators in sequence
(``step_annotate_shard``), and their verdicts merged per pair (``merged_verdicts``)."""

from __future__ import annotations

from synpref.io.layout import RoundLayout, ShardLayout
from synpref.io.storage import (
    PathLike,
    read_json,
    read_parquet,
    write_json,
    write_parquet,
)
from synpref.llm.annotation import (
    Settled,
    asking,
    judge_in_sequence,
    merge_samples,
    read_examples,
    task_budget,
    with_samples,
)
from synpref.llm.client import AnnotatorConfig, PendingRequest
from synpref.models.reliability import counted_samples, uninformative_judges
from synpref.progress import log, shard_position
from synpref.records import (
    ShardScores,
)
from synpref.stage2.consistency import (
    RuleBase,
    load_rule,
)
from synpref.stage2.context import Stage2Run, gold_by_id, run_shards
from synpref.stage2.score import routed_canaries, routed_pairs


def judge_accuracy(rnd: RoundLayout) -> dict[str, float] | None:
    """Each annotator's accuracy measured on the round's gold probes (for the ``weighted`` merge)."""
    if not rnd.judges.exists():
        return None
    judges = read_json(rnd.judges)["annotators"]
    return {name: j["accuracy"] for name, j in judges.items() if j["accuracy"] is not None}


def fitted_rule(shard: ShardLayout) -> RuleBase:
    """The decision rule as the scoring step fitted it to the shard (annotate and decide read it, never refit it
    to the scores)."""
    return load_rule(ShardScores.read(shard.scores_marker).rule)


def step_annotate_shard(
    ctx: Stage2Run,
    shard_uri: PathLike,
    annotators: list[AnnotatorConfig],
    n_tasks: int = 1,
    pending: list[PendingRequest] | None = None,
) -> dict:
    """LLM re-annotation (no humans) of one shard's routed pairs (and canaries) with the few-shot gold examples
    the score step retrieved for them (no encoder here: these tasks are many and only wait on HTTP).

    Batch-mode annotators' requests missing from the cache are appended to ``pending`` (``synpref.llm.batch``):
    nothing is written then, and the result says how many are pending; run it again once they are answered.

    With ``judges_in_sequence`` the annotators are asked one after another (the rule's ``judge_priority``
    first) and a pair goes to the next only while the rule says it is open (``RuleBase.settled``).

    Reads the shard's ``scores_marker`` (the fitted rule), ``scores``, ``canary_pairs``, ``canary_scores``,
    ``examples`` and the round's ``judges``; writes per annotator the shard's ``samples`` and ``usage``."""
    store, run, cfg = ctx.store, ctx.run, ctx.cfg
    shard = run.shard(shard_uri)
    log.info("annotate: %s", shard_position(shard.name, run_shards(run)))
    rule = fitted_rule(shard)
    scores = read_parquet(shard.scores).to_pylist()
    pairs = routed_pairs(read_parquet(shard_uri).to_pylist(), scores, rule)
    canary_scores = read_parquet(shard.canary_scores).to_pylist()
    canaries = routed_canaries(read_parquet(shard.canary_pairs).to_pylist(), canary_scores)
    examples = read_examples(shard.examples, list(gold_by_id(ctx).values()))  # chosen once, by the score step
    judges = read_json(ctx.round.judges) if ctx.round.judges.exists() else {}
    annotators = [asking(with_samples(cfg, a), judges) for a in annotators]  # as the round's probe measured them
    settled = None
    if cfg.judges_in_sequence:
        annotators = sorted(annotators, key=lambda a: (-rule.judge_priority(a.name), a.name))
        settled = _settled_by(rule, scores + canary_scores, ctx.round)
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


def merged_verdicts(shard: ShardLayout, annotator_names: list[str], policy: str, rnd: RoundLayout) -> dict[str, dict]:
    """The judges' samples of one shard merged per pair (every annotator that judged it)."""
    samples = [read_parquet(shard.samples(a)) for a in sorted(annotator_names) if shard.samples(a).exists()]
    samples = counted_samples(samples, read_json(rnd.judges) if rnd.judges.exists() else {})
    merged = merge_samples(samples, policy, judge_accuracy(rnd)).to_pylist() if samples else []
    return {m["pair_id"]: m for m in merged}
