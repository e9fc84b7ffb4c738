"""Stage-2 consistency filtering (paper §3.3): signals score pairs, a decision rule decides.

A **signal** is evidence about a pair's stored label: log-odds that it is right (a reward model's
``r(x, y_w) − r(x, y_l)``). Each signal ``<name>`` gives the columns ``p_<name>`` / ``log_p_<name>``
of a shard's scores; a new signal (another RM, a heuristic) is one class with ``name`` and
``logits(rows)``. A **decision rule** reads a pair's scores (and the LLM judges' merged judgement)
and routes it to the judges or decides it; a new rule is one class with ``prepare``,
``needs_judges`` and ``decide``.

- ``PaperRule`` — the paper's rule, as published: the best RM agrees (``p_best > 0.5 + band``) or
  the pair goes to the judges; **keep** iff the gold RM agrees AND (the best RM agrees OR the
  judges agree); the rest is recycled or dropped by the recycle policy.
- ``ReliabilityRule`` (default) — every source counts by its reliability measured on gold: the RMs
  by their calibrated, jointly weighted reward differences, each judge by the log-odds of its
  accuracy, over the shard's estimated share of right labels (the prior). A source that is not
  significantly better than chance counts zero, so it can neither keep nor veto. Pairs whose
  confidence from the prior and the RMs is below ``rm_only_confidence`` (stricter than the target: RM
  calibration comes from gold, not from the wild) go to the judges. After judging, a shard keeps its most
  certain pairs down to the confidence at which the kept set's expected precision (the mean
  confidence of what it keeps) still reaches the target, never below ``min_confidence`` per pair;
  a pair is flipped when the confidence in the flipped label reaches the target and the judges
  disagree with the stored label (positive evidence); the rest is dropped.
Every pair gets exactly one decision, a reason, and (reliability rule) its confidence and evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa

from .recycle import should_recycle
from .reliability import estimate_prior, judge_weight, logit, sigmoid, verdict_sign
from .reward_model import RewardModel, p_from_diff
from .settings import RecyclePolicy
from .storage import read_json

Decision = Literal["kept", "recycled", "dropped"]


@dataclass(frozen=True)
class Decided:
    decision: Decision
    reason: str
    confidence: float | None = None  # P(stored label is right) after all evidence
    evidence: dict[str, float] = field(default_factory=dict)  # log-odds contributed by each source


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
    """pair_id, in_gold, p_<signal>..., log_p_<signal>..., routed_to_llm, label_conflict."""
    return pa.schema(
        [("pair_id", pa.string()), ("in_gold", pa.bool_())]
        + [(f"p_{n}", pa.float64()) for n in signal_names]
        + [(f"log_p_{n}", pa.float64()) for n in signal_names]
        + [("routed_to_llm", pa.bool_()), ("label_conflict", pa.bool_())]
    )


def score_rows(signals: list[Signal], rows: list[dict]) -> dict[str, np.ndarray]:
    """``p_<name>`` and ``log_p_<name>`` of every signal over ``rows``."""
    out: dict[str, np.ndarray] = {}
    for s in signals:
        logits = s.logits(rows) if rows else np.zeros(0)
        out[f"p_{s.name}"], out[f"log_p_{s.name}"] = p_from_diff(logits)
    return out


def signal_logit(scores: dict, name: str) -> float:
    """The raw logit of a signal, recovered exactly from its stored log p (log p = −softplus(−d))."""
    log_p = scores[f"log_p_{name}"]
    return log_p - math.log(-math.expm1(log_p)) if log_p < 0 else 40.0


class DecisionRule(Protocol):
    """Routes scored pairs to the LLM judges, then decides them. ``scores`` is a row of the scores table;
    ``judgement`` the merged verdict row (``verdict``, ``annotator_verdicts``) or None when not judged.
    ``prepare`` sees a whole shard first: its scores before routing, its scores and judgements before
    deciding; it returns what it fitted (recorded with the shard)."""

    def prepare(self, scores: list[dict], judgements: dict[str, dict] | None = None) -> dict: ...

    def needs_judges(self, scores: dict) -> bool: ...

    def decide(self, scores: dict, judgement: dict | None) -> Decided: ...


class PaperRule:
    """Skywork-Reward-V2 §3.3: keep iff gold RM agrees AND (best RM agrees OR LLM judges agree)."""

    def __init__(self, band: float, recycle_policy: RecyclePolicy) -> None:
        self.band, self.recycle_policy = band, recycle_policy

    def prepare(self, scores: list[dict], judgements: dict[str, dict] | None = None) -> dict:
        return {}

    def best_rm_agrees(self, p_best: float) -> bool:
        return p_best > 0.5 + self.band

    def needs_judges(self, scores: dict) -> bool:
        """Route to LLM re-annotation: the best RM disagrees or is within ``band`` of 0.5."""
        return not self.best_rm_agrees(scores["p_best"])

    def decide(self, scores: dict, judgement: dict | None) -> Decided:
        p_best, p_gold = scores["p_best"], scores["p_gold"]
        llm_verdict = (judgement or {}).get("verdict")
        gold_ok = p_gold > 0.5
        best_ok = self.best_rm_agrees(p_best)
        llm_ok = llm_verdict == "agree"
        if gold_ok and best_ok:
            return Decided("kept", "gold RM and best RM agree")
        if gold_ok and llm_ok:
            return Decided("kept", "gold RM and LLM judges agree (best RM did not)")
        if not gold_ok:
            why = "gold RM disagrees" + ("" if best_ok or llm_ok else ", best RM and LLM judges do not agree either")
        else:
            verdict = f"LLM {llm_verdict}" if llm_verdict else "no LLM verdict"
            why = f"best RM and LLM judges do not agree ({verdict})"
        flip = (
            llm_verdict == "disagree"
            if self.recycle_policy == "positive_evidence"
            else should_recycle(p_best, p_gold, self.recycle_policy)
        )
        if flip:
            return Decided("recycled", f"{why}; flipped ({self.recycle_policy})")
        return Decided("dropped", why)


class ReliabilityRule:
    """Reliability-weighted, precision-targeted decisions (see the module docstring)."""

    def __init__(
        self,
        rm_weights: dict[str, float],
        judges: dict[str, dict],
        target_precision: float,
        recycle_policy: RecyclePolicy,
        min_confidence: float,
        rm_only_confidence: float,
    ) -> None:
        self.rm_weights = {k: v for k, v in rm_weights.items() if v > 0}
        self.judges = judges.get("annotators", {})
        self.judge_shrink = judges.get("shrink", 1.0)
        self.target = target_precision
        self.recycle_policy = recycle_policy
        self.min_confidence = min(min_confidence, target_precision)
        self.rm_only_confidence = max(rm_only_confidence, target_precision)
        self.prior = 0.5
        self.keep_threshold = target_precision

    @classmethod
    def for_round(
        cls,
        rnd: Any,
        target_precision: float,
        recycle_policy: RecyclePolicy,
        min_confidence: float,
        rm_only_confidence: float,
    ) -> ReliabilityRule:
        """With the round's calibration (``calibration.json``) and judge reliability (``judges.json``)."""
        if not rnd.calibration.exists():
            raise FileNotFoundError(
                f"{rnd.calibration} is missing: round {rnd.name} predates the reliability rule; "
                "re-run the round or choose decision_rule=paper"
            )
        weights = read_json(rnd.calibration)["joint_weights"]
        judges = read_json(rnd.judges) if rnd.judges.exists() else {}
        return cls(weights, judges, target_precision, recycle_policy, min_confidence, rm_only_confidence)

    def rm_evidence(self, scores: dict) -> dict[str, float]:
        return {f"rm_{n}": w * signal_logit(scores, n) for n, w in self.rm_weights.items()}

    def prepare(self, scores: list[dict], judgements: dict[str, dict] | None = None) -> dict:
        """The prior (estimated share of right labels among the shard's scored pairs) and, once judged,
        the keep threshold: the lowest confidence at which the kept set's mean confidence reaches the target."""
        scored = [s for s in scores if not s.get("in_gold")]
        self.prior = estimate_prior(np.array([sum(self.rm_evidence(s).values()) for s in scored]))
        self.keep_threshold = self.target
        if judgements is not None:
            confidences = [self._confidence(self._evidence(s, judgements.get(s["pair_id"]))) for s in scored]
            self.keep_threshold = self.set_threshold(confidences)
        return {"prior_label_accuracy": round(self.prior, 6), "keep_threshold": round(self.keep_threshold, 6)}

    def set_threshold(self, confidences: list[float]) -> float:
        """Lowest per-pair confidence (≥ min_confidence) whose kept set (every pair at or above it, ties
        included) still has mean confidence ≥ target."""
        ranked = np.sort(np.array([c for c in confidences if c >= self.min_confidence]))[::-1]
        if len(ranked) == 0:
            return self.target
        mean = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
        boundary = np.append(ranked[:-1] > ranked[1:], True)  # a cut never splits tied confidences
        ok = np.nonzero((mean >= self.target) & boundary)[0]
        return float(min(self.target, ranked[ok[-1]])) if len(ok) else self.target

    def _confidence(self, evidence: dict[str, float]) -> float:
        return float(sigmoid(sum(evidence.values())))

    def prior_evidence(self, scores: dict) -> float:
        """The stored label's prior log-odds; none when the input also held its mirrored copy (a label conflict)."""
        return 0.0 if scores.get("label_conflict") else logit(self.prior)

    def needs_judges(self, scores: dict) -> bool:
        """Judges are asked unless the prior and the RMs alone give the stored label ``rm_only_confidence``."""
        evidence = {"prior": self.prior_evidence(scores), **self.rm_evidence(scores)}
        return self._confidence(evidence) < self.rm_only_confidence

    def judge_evidence(self, judgement: dict | None) -> dict[str, float]:
        out = {}
        for v in (judgement or {}).get("annotator_verdicts") or []:
            sign, unanimous = verdict_sign(v["agree"], v["disagree"])
            if sign:
                weight = judge_weight(self.judges.get(v["annotator"]), unanimous)
                out[f"judge_{v['annotator']}"] = sign * weight * self.judge_shrink
        return out

    def _evidence(self, scores: dict, judgement: dict | None) -> dict[str, float]:
        return {"prior": self.prior_evidence(scores), **self.rm_evidence(scores), **self.judge_evidence(judgement)}

    def decide(self, scores: dict, judgement: dict | None) -> Decided:
        evidence = self._evidence(scores, judgement)
        conf = self._confidence(evidence)
        evidence = {k: round(v, 4) for k, v in evidence.items()}
        judged = sum(v for k, v in evidence.items() if k.startswith("judge_"))
        if conf >= self.keep_threshold:
            why = f"confidence {conf:.3f} in the label (keep threshold {self.keep_threshold:.3f})"
            return Decided("kept", why, conf, evidence)
        if self._flip(conf, judged, scores):
            return Decided("recycled", f"confidence {1 - conf:.3f} in the flipped label; flipped", conf, evidence)
        why = "no judge verdict" if not judged else f"confidence {conf:.3f} is below the target either way"
        return Decided("dropped", why, conf, evidence)

    def _flip(self, conf: float, judged: float, scores: dict) -> bool:
        if self.recycle_policy == "positive_evidence":
            return 1 - conf >= self.target and judged < 0
        return should_recycle(scores.get("p_best", 0.5), scores.get("p_gold", 0.5), self.recycle_policy)
