"""Silver set and the human review queue (paper §3.2 step 3, end of a round).

A judged pair joins silver with provenance ``llm`` when the calibrated confidence in one of its labels reaches
``silver_precision`` (``models.reliability.label_confidence``: every judge weighed by its probe accuracy, over the
pool's estimated share of right labels) — as stored, or flipped. Contested or failed ones (merged ``abstain``) that
do not reach it go to the review queue for the humans' next day, ordered objective and low-controversiality first;
decided ones below it stay in the pool (a later round, with better-measured judges, may settle them). A seeded
spot-check sample of new silver pairs is queued too so humans keep auditing the LLM labels. Pairs skipped by the
budget are deferred (back to the pool for a later round). Without confidences (``silver_precision`` 0.5), every
decided merged verdict joins silver, as the paper merges.

Two ablation modes (``retrieved_to``) bypass the judges: ``silver`` adds every retrieved pair with its stored,
unverified label (no curation); ``humans`` queues every retrieved pair for human verification (human curation
only). ``review_order: random`` orders the queue by a seeded hash instead of the attributes.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from synpref.schema import PAIR_SCHEMA, flip
from synpref.seeding import seeded_rank, seeded_sample
from synpref.settings import RetrievedTo, ReviewOrder

QUEUE_SCHEMA = PAIR_SCHEMA.append(pa.field("queue_reason", pa.string()))
_OBJ = {"objective": 0, "subjective": 1}
_CONTRO = {"low": 0, "medium": 1, "high": 2}


def review_priority(row: dict) -> tuple:
    """Humans see objective, low-controversiality pairs first."""
    return (
        _OBJ.get(row.get("preference_objectivity") or "", 2),
        _CONTRO.get(row.get("controversiality") or "", 3),
        row["pair_id"],
    )


def _silver_label(verdict: str, confidence: float | None, precision: float) -> str | None:
    """The label a judged pair joins silver with (``agree``: as stored, ``disagree``: flipped), or None. Without a
    confidence, the merged verdict as it is."""
    if confidence is None:
        return verdict if verdict in ("agree", "disagree") else None
    return "agree" if confidence >= precision else "disagree" if 1 - confidence >= precision else None


def merge_into_silver(
    previous_silver: list[dict],
    retrieved: list[dict],
    verdicts: pa.Table,
    round_name: str,
    spot_check: int = 0,
    seed: int = 0,
    retrieved_to: RetrievedTo = "judges",
    review_order: ReviewOrder = "priority",
    confidence: dict[str, float] | None = None,
    silver_precision: float = 0.5,
) -> tuple[list[dict], list[dict], dict]:
    """(silver, review queue, counts). Every retrieved pair lands in exactly one of: silver, queue, deferred
    (``verdicts`` are read only when ``retrieved_to`` is ``judges``). ``confidence``: P(stored label right) per
    pair; a pair joins silver only when it, or its complement, reaches ``silver_precision``."""
    by_id = {r["pair_id"]: r for r in retrieved}
    added, queue, counts = [], [], Counter()
    if retrieved_to == "silver":
        added = [{k: r.get(k) for k in PAIR_SCHEMA.names} | {"round": round_name} for r in retrieved]
        counts["silver_as_given"] = len(added)
    elif retrieved_to == "humans":
        queue = [{k: r.get(k) for k in PAIR_SCHEMA.names} | {"queue_reason": "human_curation"} for r in retrieved]
        counts["queued_for_humans"] = len(queue)
    for v in verdicts.select(["pair_id", "verdict", "status"]).to_pylist() if retrieved_to == "judges" else []:
        row = {k: by_id[v["pair_id"]].get(k) for k in PAIR_SCHEMA.names}
        row.update(provenance="llm", round=round_name)
        label = _silver_label(v["verdict"], (confidence or {}).get(v["pair_id"]), silver_precision)
        if v["status"] == "not_annotated_budget":
            counts["deferred_budget"] += 1
        elif label == "agree":
            added.append(row)
            counts["silver_agree"] += 1
        elif label == "disagree":
            added.append(flip(row))
            counts["silver_flipped"] += 1
        elif v["verdict"] == "abstain":
            queue.append({**row, "queue_reason": "abstain_error" if v["status"] == "abstain_error" else "contested"})
            counts["queued_contested"] += 1
        else:
            counts["deferred_low_confidence"] += 1
    if sum(counts.values()) != len(retrieved):
        raise RuntimeError(f"silver merge lost pairs: {dict(counts)} vs {len(retrieved)} retrieved")
    spots = seeded_sample(added, spot_check, "spot", seed)
    queue += [{**r, "queue_reason": "spot_check"} for r in spots]
    counts["queued_spot_check"] = len(spots)
    queue.sort(
        key=review_priority if review_order == "priority" else lambda r: seeded_rank("review", seed, r["pair_id"])
    )
    known = {r["pair_id"] for r in added}
    silver = [r for r in previous_silver if r["pair_id"] not in known] + added
    silver.sort(key=lambda r: r["pair_id"])
    counts["silver_total"] = len(silver)
    counts["review_queue"] = len(queue)
    return silver, queue, dict(counts)
