"""Blind canaries: stage-2 quality you can see without a truth.

Held-out gold pairs (gold-validation: neither RM trained on them) go through stage 2 like any pair,
each in both orientations — as verified (its label is right) and flipped (its label is wrong) — with
ids the judges cannot connect to gold (``canary:<n>:<orientation>``), and their own gold pair kept out
of their few-shot examples. Their decisions estimate, with 95% intervals:

- retention ``P(kept | label right)`` and the flip rates ``P(kept | label wrong)``,
  ``P(recycled | label wrong)``, ``P(recycled | label right)``;
- the share of right labels in the run's input, from its kept share:
  ``kept = π·P(kept | right) + (1 − π)·P(kept | wrong)``;
- kept precision ``π·P(kept | right) / P(kept)`` and recycled precision likewise, their intervals
  from the rates' Wilson intervals taken at their least / most favourable ends (π's own uncertainty
  is not included).
Canaries are scored, judged and decided with the shard they are assigned to, and never exported or
counted as input.
"""

from __future__ import annotations

import pyarrow as pa

from synpref.models.reliability import wilson_interval
from synpref.records import Interval, QualityEstimates
from synpref.schema import ATTRIBUTE_FIELDS, PAIR_SCHEMA, flip
from synpref.seeding import seeded_int, seeded_sample

PREFIX = "canary:"
CANARY_SCHEMA = PAIR_SCHEMA.append(pa.field("source_pair_id", pa.string()))  # the gold pair it was made from
OUTCOME_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("source_pair_id", pa.string()),
        ("label_right", pa.bool_()),
        ("decision", pa.string()),
        ("confidence", pa.float64()),
        ("routed_to_llm", pa.bool_()),
    ]
)


def canary_rows(
    gold_validation: list[dict], shard_name: str, shard_names: list[str], n: int, with_attributes: bool
) -> list[dict]:
    """This shard's canaries (up to ``n`` held-out gold pairs in all, spread over the shards, both
    orientations; ``CANARY_SCHEMA``: each with its gold pair id). Attributes are kept only when the shard's
    pairs have them, so that canaries look like the data they measure."""
    chosen = seeded_sample(gold_validation, n, "canary")
    rows = []
    blank = {} if with_attributes else {f: None for f in ATTRIBUTE_FIELDS}
    for i, g in enumerate(chosen):
        if shard_names[seeded_int("canary", g["pair_id"]) % len(shard_names)] != shard_name:
            continue
        base = {**{k: g[k] for k in PAIR_SCHEMA.names}, **blank, "source": "canary", "provenance": "unverified"}
        for orientation, row in (("0", base), ("1", flip(base))):
            pid = f"{PREFIX}{i}:{orientation}"
            rows.append({**row, "pair_id": pid, "round": None, "source_pair_id": g["pair_id"]})
    return rows


def is_canary(pair_id: str) -> bool:
    return pair_id.startswith(PREFIX)


def label_right(pair_id: str) -> bool:
    """As verified (``:0``) or flipped (``:1``)."""
    return pair_id.endswith(":0")


def _rate(outcomes: list[dict], right: bool, decision: str) -> tuple[float | None, float, float]:
    rows = [o for o in outcomes if o["label_right"] is right]
    k = sum(o["decision"] == decision for o in rows)
    low, high = wilson_interval(k, len(rows))
    return (k / len(rows) if rows else None), low, high


def _precision(prior: float, hit: float, false: float, of_right: bool) -> float | None:
    """Precision of a decision from its rate on right labels (``hit`` if keeping) and on wrong ones."""
    good, bad = (prior * hit, (1 - prior) * false) if of_right else ((1 - prior) * hit, prior * false)
    return good / (good + bad) if good + bad > 0 else None


def estimates(outcomes: list[dict], kept_share: float) -> QualityEstimates:
    """Estimated retention, kept precision and recycled precision of a run, with 95% intervals."""
    if not outcomes:
        return QualityEstimates(canaries=0)
    tpr, tpr_lo, tpr_hi = _rate(outcomes, True, "kept")
    fpr, fpr_lo, fpr_hi = _rate(outcomes, False, "kept")
    rw, rw_lo, rw_hi = _rate(outcomes, False, "recycled")
    rr, rr_lo, rr_hi = _rate(outcomes, True, "recycled")
    prior = (kept_share - fpr) / (tpr - fpr) if tpr is not None and fpr is not None and tpr > fpr else 0.5
    prior = min(max(prior, 0.01), 0.99)

    def interval(point, worst, best) -> Interval:
        return Interval(estimate=point, ci_low=worst, ci_high=best)

    kept = interval(
        _precision(prior, tpr, fpr, True),
        _precision(prior, tpr_lo, fpr_hi, True),
        _precision(prior, tpr_hi, fpr_lo, True),
    )
    recycled = interval(
        _precision(prior, rw, rr, False),
        _precision(prior, rw_lo, rr_hi, False),
        _precision(prior, rw_hi, rr_lo, False),
    )
    return QualityEstimates(
        canaries=len(outcomes),
        label_accuracy_of_input=round(prior, 6),
        retention=interval(tpr, tpr_lo, tpr_hi),
        kept_precision=kept,
        recycled_precision=recycled,
    )
