"""Stage-2 consistency filtering (paper §3.3): signals score pairs, a decision rule decides.

A **signal** is evidence about a pair's stored label: log-odds that it is right (a reward model's
``r(x, y_w) − r(x, y_l)``). Each signal ``<name>`` gives the columns ``p_<name>`` / ``log_p_<name>``
of a shard's scores; a new signal (another RM, a heuristic) is one class with ``name`` and
``logits(rows)``. A **decision rule** reads a pair's scores (and the merged LLM verdict) and
routes it to the judges or decides it; a new rule is one class with ``needs_judges`` and ``decide``.

``PaperRule`` is the paper's rule:
- ``p_best > 0.5 + band`` → the best RM agrees with the label (no LLM call);
  otherwise the pair is routed to LLM re-annotation;
- **keep** iff the gold RM agrees AND (the best RM agrees OR the LLM judges agree);
- everything else is discarded → recycled (flipped) or dropped, per the recycle policy.
Every pair gets exactly one decision and a reason.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from .recycle import should_recycle
from .reward_model import RewardModel, p_from_diff
from .settings import RecyclePolicy

Decision = Literal["kept", "recycled", "dropped"]


class Signal(Protocol):
    """Evidence about stored labels: ``logits(rows)[i]`` = log-odds that row i's chosen is better."""

    name: str

    def logits(self, rows: list[dict]) -> np.ndarray: ...


class RewardModelSignal:
    """A trained Bradley-Terry RM as a signal: logit = r(x, chosen) − r(x, rejected)."""

    def __init__(self, name: str, rm_dir: Any) -> None:
        self.name, self.rm_dir = name, rm_dir

    def logits(self, rows: list[dict]) -> np.ndarray:
        rm = RewardModel(self.rm_dir)
        try:
            return rm.reward_diff(rows)
        finally:
            rm.close()


def scores_schema(signal_names: list[str]) -> pa.Schema:
    """pair_id, in_gold, p_<signal>..., log_p_<signal>..., routed_to_llm."""
    return pa.schema(
        [("pair_id", pa.string()), ("in_gold", pa.bool_())]
        + [(f"p_{n}", pa.float64()) for n in signal_names]
        + [(f"log_p_{n}", pa.float64()) for n in signal_names]
        + [("routed_to_llm", pa.bool_())]
    )


def score_rows(signals: list[Signal], rows: list[dict]) -> dict[str, np.ndarray]:
    """``p_<name>`` and ``log_p_<name>`` of every signal over ``rows``."""
    out: dict[str, np.ndarray] = {}
    for s in signals:
        logits = s.logits(rows) if rows else np.zeros(0)
        out[f"p_{s.name}"], out[f"log_p_{s.name}"] = p_from_diff(logits)
    return out


class DecisionRule(Protocol):
    """Routes a scored pair to the LLM judges, then decides it. ``scores`` is its row of the scores table."""

    def needs_judges(self, scores: dict) -> bool: ...

    def decide(self, scores: dict, llm_verdict: str | None) -> tuple[Decision, str]: ...


class PaperRule:
    """Skywork-Reward-V2 §3.3: keep iff gold RM agrees AND (best RM agrees OR LLM judges agree)."""

    def __init__(self, band: float = 0.0, recycle_policy: RecyclePolicy = "both_rms_reject") -> None:
        self.band, self.recycle_policy = band, recycle_policy

    def best_rm_agrees(self, p_best: float) -> bool:
        return p_best > 0.5 + self.band

    def needs_judges(self, scores: dict) -> bool:
        """Route to LLM re-annotation: the best RM disagrees or is within ``band`` of 0.5."""
        return not self.best_rm_agrees(scores["p_best"])

    def decide(self, scores: dict, llm_verdict: str | None) -> tuple[Decision, str]:
        p_best, p_gold = scores["p_best"], scores["p_gold"]
        gold_ok = p_gold > 0.5
        best_ok = self.best_rm_agrees(p_best)
        llm_ok = llm_verdict == "agree"
        if gold_ok and best_ok:
            return "kept", "gold RM and best RM agree"
        if gold_ok and llm_ok:
            return "kept", "gold RM and LLM judges agree (best RM did not)"
        if not gold_ok:
            why = "gold RM disagrees" + ("" if best_ok or llm_ok else ", best RM and LLM judges do not agree either")
        else:
            why = (
                "best RM and LLM judges do not agree ("
                + (f"LLM {llm_verdict}" if llm_verdict else "no LLM verdict")
                + ")"
            )
        if should_recycle(p_best, p_gold, self.recycle_policy):
            return "recycled", f"{why}; flipped ({self.recycle_policy})"
        return "dropped", why
