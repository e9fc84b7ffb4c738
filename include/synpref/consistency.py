"""Stage-2 consistency filtering (paper §3.3): best RM vs gold RM vs LLM judges.

- ``p_best > 0.5 + band`` → the best RM agrees with the label (no LLM call);
  otherwise the pair is routed to LLM re-annotation.
- **keep** iff the gold RM agrees AND (the best RM agrees OR the LLM judges agree);
- everything else is discarded → recycled (flipped) or dropped, per the recycle policy.
Every pair gets exactly one decision and a reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .recycle import RecyclePolicy, should_recycle

Decision = Literal["kept", "recycled", "dropped"]


@dataclass(frozen=True)
class ConsistencyConfig:
    band: float = 0.0
    recycle_policy: RecyclePolicy = "both_rms_reject"


def best_rm_agrees(p_best: float, band: float = 0.0) -> bool:
    return p_best > 0.5 + band


def needs_llm(p_best: float, band: float = 0.0) -> bool:
    """Route to LLM re-annotation: the best RM disagrees or is within ``band`` of 0.5."""
    return not best_rm_agrees(p_best, band)


def decide(p_best: float, p_gold: float, llm_verdict: str | None, cfg: ConsistencyConfig = ConsistencyConfig()) -> tuple[Decision, str]:
    """(decision, reason) for one pair."""
    gold_ok = p_gold > 0.5
    best_ok = best_rm_agrees(p_best, cfg.band)
    llm_ok = llm_verdict == "agree"
    if gold_ok and best_ok:
        return "kept", "gold RM and best RM agree"
    if gold_ok and llm_ok:
        return "kept", "gold RM and LLM judges agree (best RM did not)"
    if not gold_ok:
        why = "gold RM disagrees" + ("" if best_ok or llm_ok else ", best RM and LLM judges do not agree either")
    else:
        why = "best RM and LLM judges do not agree (" + (f"LLM {llm_verdict}" if llm_verdict else "no LLM verdict") + ")"
    if should_recycle(p_best, p_gold, cfg.recycle_policy):
        return "recycled", f"{why}; flipped ({cfg.recycle_policy})"
    return "dropped", why
