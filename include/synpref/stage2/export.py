"""Stage 2, export: the quarantined table, the judging bill, the canaries' quality estimates and the frontier
(``step_estimate``), then the dataset card and the manifest, last (``step_export``)."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa

from synpref.io.layout import DECISIONS, ShardLayout, Stage2Layout
from synpref.io.preprocess import (
    DROPPED_SCHEMA,
    FILTERS,
)
from synpref.io.storage import (
    list_files,
    read_json,
    read_parquet,
    remove_stale,
    write_bytes,
    write_parquet,
)
from synpref.llm.annotation import (
    requests_asked,
    template,
)
from synpref.llm.client import AnnotatorConfig
from synpref.records import (
    AnnotatorBill,
    DownstreamRecord,
    Frontier,
    Interval,
    JudgingBill,
    QualityEstimates,
    ShardDecided,
    Stage2Manifest,
    Stage2Preview,
)
from synpref.settings import Stage2Config
from synpref.stage2.canaries import estimates
from synpref.stage2.context import Stage2Run
from synpref.stage2.downstream import downstream_lines
from synpref.stage2.frontier import fallback_line, frontier, posterior_check

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


def step_estimate(ctx: Stage2Run, counts: dict, annotators: list[AnnotatorConfig] = ()) -> Stage2Preview:
    """Quarantined table, stale parts removed, and the canaries' quality estimates → ``estimates.json``
    (what a sign-off shows before the dataset is exported); → the preview manifest.

    Reads the pool's ``quarantine`` and rule tables, every shard's ``canaries``, ``samples``, ``usage`` and decided
    parts; writes ``quarantined``, then ``estimates``."""
    run, rnd, cfg = ctx.run, ctx.rnd, ctx.cfg
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
    kept = [r["confidence"] for r in rows if r["decision"] == "kept" and r["confidence"] is not None]
    posterior = round(sum(kept) / len(kept), 6) if kept else None
    update = {"fallback": fallback, "kept_posterior": posterior}
    return reachable.model_copy(update=update) if reachable.pairs else None


def step_export(ctx: Stage2Run, counts: dict, params: dict | None = None, date: str = "") -> Stage2Manifest:
    """Dataset card and manifest (last), from the estimates step's ``estimates``: writes ``dataset_card``, then
    ``manifest``."""
    run, rnd, cfg = ctx.run, ctx.rnd, ctx.cfg
    preview = Stage2Preview.read(run.estimates)
    downstream = DownstreamRecord.read(run.downstream) if run.downstream.exists() else None
    quality, judging = preview.quality_estimates, preview.judging
    card = template("dataset_card.md").format(
        run=run.name,
        round=rnd,
        decision_rule=cfg.decision_rule,
        target_precision=cfg.target_precision,
        recycle_policy=cfg.recycle_policy,
        band=cfg.band,
        quality=quality_lines(quality),
        frontier=frontier_lines(preview.frontier, quality),
        downstream=downstream_lines(downstream),
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
        **({"adjusted": cfg.adjusted()} if cfg.adjusted() else {}),
        **({"downstream": downstream} if downstream is not None else {}),
    )
    manifest.write(run.manifest)
    return manifest


def frontier_lines(reachable: Frontier | None, quality: QualityEstimates | None = None) -> str:
    """The frontier as a Markdown table of the dataset card (with the reason when the run published nothing, the
    fallback when shards kept below the target, and the canaries' check of the kept pairs' posteriors)."""
    if reachable is None:
        return "Not estimated: the decision rule gives no calibrated posteriors (the paper rule)."
    rows = "\n".join(f"| {p.precision:.2f} | {p.kept} | {p.recycled} |" for p in reachable.points)
    check = posterior_check(reachable.kept_posterior, quality.kept_precision if quality else None)
    why = "".join(f"**{line}.**\n\n" for line in (reachable.reason, reachable.fallback, check) if line)
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
