"""Stage-2 consistency filtering (paper §3.3): signals score pairs, a fitted decision rule decides.

A **signal** is evidence about a pair's stored label: the log-odds that it is right (a reward model's
``r(x, y_w) − r(x, y_l)``). Each signal ``<name>`` gives the column ``logit_<name>`` of a shard's scores
(``p_<name>`` = σ(logit) is derived for display); a new signal (another RM, a heuristic) is one class
with ``name`` and ``logits(rows)``.

A **decision rule** is a value: its settings plus what it fitted to a shard. It is one subclass of
``RuleBase`` (a frozen pydantic model, stored as JSON with the shard and read back by ``load_rule``):
``needs_judges`` routes a scored pair to the LLM judges, ``decide`` decides it, and ``fit`` (optional)
returns the rule fitted to a whole shard — to its scores before routing, to its scores and judgements
before deciding. The protocol is one pure function, ``decide_shard(scores, verdicts, rule)``, used by
the DAG's decide task, the CLI and the curation-quality harness alike.

- ``PaperRule`` — the paper's rule, as published: the best RM agrees (``p_best > 0.5 + band``) or
  the pair goes to the judges; **keep** iff the gold RM agrees AND (the best RM agrees OR the
  judges agree); the rest is recycled or dropped by the recycle policy.
- ``ReliabilityRule`` (default) — every source counts by its reliability measured on gold: the RMs
  by their calibrated, jointly weighted reward differences, each judge by the log-odds of its
  accuracy, over the shard's estimated share of right labels (the prior, fitted by EM over every source's
  evidence: the RMs' on every pair, the judges' on the pairs they judged, so RMs at chance do not pull it to 0.5
  when the judges know better). An RM not significantly better than chance counts zero; a judge counts by its
  accuracy shrunk toward chance (``synpref.models.reliability``). Pairs whose
  confidence from the prior and the RMs is below ``rm_only_confidence`` (stricter than the target: RM
  calibration comes from gold, not from the wild) go to the judges. After judging, a shard keeps its most
  certain pairs down to the confidence at which the kept set's expected precision (the mean
  confidence of what it keeps) still reaches the target, never below ``min_confidence`` per pair;
  a pair is flipped when the confidence in the flipped label reaches the target and the judges
  disagree with the stored label (positive evidence); the rest is dropped.
Every pair gets exactly one decision, a reason, and (reliability rule) its confidence and evidence.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from synpref.io.storage import read_json
from synpref.models.reliability import (
    estimate_prior,
    judge_room,
    judge_weight,
    logit,
    shrink_for,
    sigmoid,
    weighed_verdicts,
)
from synpref.models.reward_model import RewardModel
from synpref.settings import RecyclePolicy, Stage2Config
from synpref.stage2.frontier import GRID, keepable
from synpref.stage2.recycle import should_recycle

Decision = Literal["kept", "recycled", "dropped"]
SETTLED_REASONS = {
    "confident": "the RMs and the judges so far give the label keep_stop_confidence",
    "confident_flipped": "the RMs and the judges so far give the flipped label flip_stop_confidence",
    "hopeless": "even if every remaining annotator agreed, neither keeping nor flipping could be reached",
    "no_informative_judge": "the remaining annotators count zero (uninformative on the gold probe)",
    "all_annotators": "every annotator was asked",
}


@dataclass(frozen=True)
class Decided:
    decision: Decision
    reason: str
    confidence: float | None = None  # P(stored label is right) after all evidence
    evidence: dict[str, float] = field(default_factory=dict)  # log-odds contributed by each source


GOLD_KEPT = Decided("kept", "human-verified gold pair (label from gold)")


class Signal(Protocol):
    """Evidence about stored labels: ``logits(rows)[i]`` = log-odds that row i's chosen is better."""

    name: str

    def logits(self, rows: list[dict]) -> np.ndarray: ...


class RewardModelSignal:
    """A trained Bradley-Terry RM as a signal: logit = r(x, chosen) − r(x, rejected).

    After scoring, ``device`` is where it ran and ``truncated`` how many pairs were cut to its max length."""

    def __init__(self, name: str, rm_dir: Any) -> None:
        self.name, self.rm_dir = name, rm_dir
        self.device: str | None = None
        self.truncated = 0

    def logits(self, rows: list[dict]) -> np.ndarray:
        rm = RewardModel(self.rm_dir)
        try:
            return rm.reward_diff(rows)
        finally:
            self.device, self.truncated = rm.device, self.truncated + rm.truncated
            rm.close()


def scores_schema(signal_names: list[str]) -> pa.Schema:
    """pair_id, in_gold, logit_<signal>..., routed_to_llm, label_conflict."""
    return pa.schema(
        [("pair_id", pa.string()), ("in_gold", pa.bool_())]
        + [(f"logit_{n}", pa.float64()) for n in signal_names]
        + [("routed_to_llm", pa.bool_()), ("label_conflict", pa.bool_())]
    )


def score_rows(signals: list[Signal], rows: list[dict]) -> dict[str, np.ndarray]:
    """``logit_<name>`` of every signal over ``rows``."""
    return {f"logit_{s.name}": np.asarray(s.logits(rows) if rows else np.zeros(0), dtype=np.float64) for s in signals}


def p_of(scores: Mapping[str, Any], name: str) -> float | None:
    """σ(logit) of a signal (None when the pair was not scored, e.g. a gold pair)."""
    value = scores.get(f"logit_{name}")
    return None if value is None else float(sigmoid(value))


class RuleBase(BaseModel):
    """A decision rule as a stored value: subclass it with a ``kind`` literal, ``needs_judges`` and ``decide``.

    ``scores`` is a row of the scores table (``logit_<signal>``, ``in_gold``, ``label_conflict``);
    ``judgement`` the merged verdict row (``verdict``, ``annotator_verdicts``) or None when not judged."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    registry: ClassVar[dict[str, type[RuleBase]]] = {}
    weighs_logprobs: ClassVar[bool] = False  # reads logprob verdicts' log-odds (judging in sequence asks again)
    default_recycle: ClassVar[RecyclePolicy] = "both_rms_reject"  # what ``recycle_policy: rule_default`` means
    kind: str

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["kind"].default
        if isinstance(default, str):
            RuleBase.registry[default] = cls

    @classmethod
    def from_config(cls, cfg: Stage2Config, rnd: Any) -> RuleBase:
        """The rule as a run's settings and its source round (``RoundLayout``) configure it (``configured_rule``):
        by default its own defaults; a rule that reads settings or the round overrides it."""
        return cls()

    @classmethod
    def recycle_policy_of(cls, cfg: Stage2Config) -> RecyclePolicy:
        """The run's ``recycle_policy``, ``rule_default`` resolved to this rule's ``default_recycle``."""
        return cls.default_recycle if cfg.recycle_policy == "rule_default" else cfg.recycle_policy

    def fit(self, scores: list[dict], judgements: Mapping[str, dict] | None = None) -> RuleBase:
        """The rule fitted to a shard's scores (and, once judged, its judgements); nothing to fit by default."""
        return self

    @abstractmethod
    def needs_judges(self, scores: dict) -> bool:
        """Whether a scored pair goes to the LLM judges."""

    @abstractmethod
    def decide(self, scores: dict, judgement: dict | None) -> Decided:
        """One pair's decision with its reason."""

    def summary(self) -> dict:
        """What it fitted, for the shard's records (rounded for reading)."""
        return {}

    def judge_priority(self, annotator: str) -> float:
        """Annotators judging in sequence are asked in descending priority (then by name)."""
        return 0.0

    def settled(self, scores: dict, judgement: dict | None, remaining: list[str]) -> str | None:
        """Why no further annotator is needed for this pair (a ``SETTLED_REASONS`` key), or None to ask the next
        one; ``remaining``: the annotators not asked yet. By default every annotator judges every routed pair."""
        return None


def load_rule(record: Mapping[str, Any]) -> RuleBase:
    """A stored rule back as its class (by ``kind``)."""
    kind = record.get("kind")
    if kind not in RuleBase.registry:
        raise ValueError(f"unknown decision rule kind {kind!r}; known: {sorted(RuleBase.registry)}")
    return RuleBase.registry[kind].model_validate(dict(record))


class PaperRule(RuleBase):
    """Skywork-Reward-V2 §3.3: keep iff gold RM agrees AND (best RM agrees OR LLM judges agree)."""

    kind: Literal["paper"] = "paper"
    band: float = 0.0
    recycle_policy: RecyclePolicy = "both_rms_reject"

    @classmethod
    def from_config(cls, cfg: Stage2Config, rnd: Any) -> PaperRule:
        return cls(band=cfg.band, recycle_policy=cls.recycle_policy_of(cfg))

    def best_rm_agrees(self, p_best: float | None) -> bool:
        return p_best is not None and p_best > 0.5 + self.band

    def needs_judges(self, scores: dict) -> bool:
        """Route to LLM re-annotation: the best RM disagrees or is within ``band`` of 0.5."""
        return not self.best_rm_agrees(p_of(scores, "best"))

    def decide(self, scores: dict, judgement: dict | None) -> Decided:
        p_best, p_gold = p_of(scores, "best"), p_of(scores, "gold")
        llm_verdict = (judgement or {}).get("verdict")
        gold_ok = p_gold is not None and p_gold > 0.5
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
            else should_recycle(_or_half(p_best), _or_half(p_gold), self.recycle_policy)
        )
        if flip:
            return Decided("recycled", f"{why}; flipped ({self.recycle_policy})")
        return Decided("dropped", why)


def _or_half(p: float | None) -> float:
    return 0.5 if p is None else p


class ReliabilityRule(RuleBase):
    """Reliability-weighted, precision-targeted decisions (see the module docstring).

    ``min_confidence`` ≤ ``target_precision`` ≤ ``rm_only_confidence`` and the stopping confidences (``Stage2Config``
    validates it)."""

    kind: Literal["reliability"] = "reliability"
    weighs_logprobs: ClassVar[bool] = True
    default_recycle: ClassVar[RecyclePolicy] = "positive_evidence"
    rm_weights: dict[str, float]  # significant RMs only: calibrated logit = weight · reward difference
    judges: dict[str, dict] = {}  # per annotator: its reliability on the gold probe (``judges.json``)
    judge_shrink: float = 1.0  # the factor of every judge's summed evidence (older rounds)
    judge_shrinks: list[float] = []  # the factor of k judges' summed evidence, k = 1, 2, ... (``shrink_for``)
    target_precision: float = 0.98
    recycle_policy: RecyclePolicy = "positive_evidence"
    min_confidence: float = 0.9
    rm_only_confidence: float = 0.995
    keep_stop_confidence: float = 0.99  # judges in sequence: where a keep stops asking (it keeps at the threshold)
    flip_stop_confidence: float = 0.995  # judges in sequence: where a flip stops asking (flips at the target)
    target_retention: float = 0.0  # below this estimated retention at the target, keep at a lower precision
    precision_floor: float = 0.9  # ... never below this one (``operating_point``)
    prior: float = 0.5  # fitted: estimated share of right labels among the shard's scored pairs
    operating_precision: float | None = None  # fitted once judged: None = the target (``operating_point``)
    keep_threshold: float | None = None  # fitted once judged: None = the precision kept to

    @classmethod
    def from_config(cls, cfg: Stage2Config, rnd: Any) -> ReliabilityRule:
        """With the round's calibration (``calibration.json``) and judge reliability (``judges.json``)."""
        if not rnd.calibration.exists():
            raise FileNotFoundError(
                f"{rnd.calibration} is missing: round {rnd.name} predates the reliability rule; "
                "re-run the round or choose decision_rule=paper"
            )
        weights = read_json(rnd.calibration)["joint_weights"]
        judges = read_json(rnd.judges) if rnd.judges.exists() else {}
        return cls(
            rm_weights={k: v for k, v in weights.items() if v > 0},
            judges=judges.get("annotators", {}),
            judge_shrink=judges.get("shrink", 1.0),
            judge_shrinks=judges.get("shrinks", []),
            target_precision=cfg.target_precision,
            recycle_policy=cls.recycle_policy_of(cfg),
            min_confidence=cfg.min_confidence,
            target_retention=cfg.target_retention,
            precision_floor=cfg.precision_floor,
            rm_only_confidence=cfg.rm_only_confidence,
            keep_stop_confidence=cfg.keep_stop_confidence,
            flip_stop_confidence=cfg.flip_stop_confidence,
        )

    def fit(self, scores: list[dict], judgements: Mapping[str, dict] | None = None) -> ReliabilityRule:
        """The prior over the shard's scored pairs (from the RMs' evidence and, given judgements, the judges' on the
        pairs they judged) and, given judgements, the keep threshold: the lowest confidence at which the kept set's
        mean confidence reaches the target. Routing depended on the RMs' evidence only, so the judged pairs are a
        selection the EM accounts for: each pair's posterior uses the evidence it has."""
        scored = [s for s in scores if not s.get("in_gold")]
        judged = judgements or {}
        evidence = [
            sum(self.rm_evidence(s).values()) + sum(self.judge_evidence(judged.get(s["pair_id"])).values())
            for s in scored
        ]
        update = {"prior": estimate_prior(np.array(evidence)), "keep_threshold": None, "operating_precision": None}
        fitted = self.model_copy(update=update)
        if judgements is None:
            return fitted
        confidences = np.array([_confidence(fitted.evidence(s, judgements.get(s["pair_id"]))) for s in scored])
        fitted = fitted.model_copy(update={"operating_precision": fitted.operating_point(confidences)})
        return fitted.model_copy(update={"keep_threshold": fitted.threshold(confidences)})

    def summary(self) -> dict:
        return {
            "prior_label_accuracy": round(self.prior, 6),
            "keep_threshold": round(self.keep, 6),
            "operating_precision": round(self.precision, 6),
        }

    @property
    def precision(self) -> float:
        """The estimated precision the kept set is held to: the target, or the fitted fallback operating point."""
        return self.target_precision if self.operating_precision is None else self.operating_precision

    @property
    def keep(self) -> float:
        return self.precision if self.keep_threshold is None else self.keep_threshold

    def retains(self, confidences: np.ndarray, precision: float) -> bool:
        """Whether the pairs kept at ``precision`` hold ``target_retention`` of the shard's estimated right labels
        (prior × pairs), counting each kept pair by its confidence."""
        n = keepable(confidences, precision, min(self.min_confidence, precision))
        return n > 0 and np.sort(confidences)[::-1][:n].sum() >= self.target_retention * self.prior * len(confidences)

    def operating_point(self, confidences: np.ndarray) -> float | None:
        """None when keeping at the target retains ``target_retention`` (or no retention is asked for); else the
        highest precision of the frontier's grid in [``precision_floor``, target) that does, None when none does
        (the run then keeps what reaches the target, and its frontier says what was reachable). Flips stay at the
        target: they rest on the judges alone, whose shared errors overstate a flip's confidence."""
        if not self.target_retention or self.retains(confidences, self.target_precision):
            return None
        lower = sorted((p for p in GRID if self.precision_floor <= p < self.target_precision), reverse=True)
        return next((p for p in lower if self.retains(confidences, p)), None)

    def rm_evidence(self, scores: dict) -> dict[str, float]:
        return {f"rm_{n}": w * scores[f"logit_{n}"] for n, w in self.rm_weights.items() if w > 0}

    def threshold(self, confidences: list[float]) -> float:
        """Lowest per-pair confidence (≥ min_confidence) whose kept set (every pair at or above it, ties
        included) still has mean confidence ≥ the precision it is held to (``frontier.keepable``)."""
        conf = np.asarray(confidences, dtype=np.float64)
        n = keepable(conf, self.precision, min(self.min_confidence, self.precision))
        return float(min(self.precision, np.sort(conf)[::-1][n - 1])) if n else self.precision

    def prior_evidence(self, scores: dict) -> float:
        """The stored label's prior log-odds; none when the input also held its mirrored copy (a label conflict)."""
        return 0.0 if scores.get("label_conflict") else logit(self.prior)

    def needs_judges(self, scores: dict) -> bool:
        """Judges are asked unless the prior and the RMs alone give the stored label ``rm_only_confidence``."""
        evidence = {"prior": self.prior_evidence(scores), **self.rm_evidence(scores)}
        return _confidence(evidence) < self.rm_only_confidence

    def judge_evidence(self, judgement: dict | None) -> dict[str, float]:
        verdicts = (judgement or {}).get("annotator_verdicts") or []
        return {f"judge_{name}": e for name, e in weighed_verdicts(self._judges(), verdicts).items()}

    def _judges(self) -> dict:
        """The judges as ``judges.json`` holds them."""
        return {"annotators": self.judges, "shrink": self.judge_shrink, "shrinks": self.judge_shrinks}

    def _shrink(self, count: int) -> float:
        return shrink_for(self._judges(), count)

    def evidence(self, scores: dict, judgement: dict | None) -> dict[str, float]:
        return {"prior": self.prior_evidence(scores), **self.rm_evidence(scores), **self.judge_evidence(judgement)}

    def decide(self, scores: dict, judgement: dict | None) -> Decided:
        evidence = self.evidence(scores, judgement)
        conf = _confidence(evidence)
        evidence = {k: round(v, 4) for k, v in evidence.items()}
        judged = sum(v for k, v in evidence.items() if k.startswith("judge_"))
        if conf >= self.keep:
            why = f"confidence {conf:.3f} in the label (keep threshold {self.keep:.3f})"
            return Decided("kept", why, conf, evidence)
        if self._flip(conf, judged, scores):
            return Decided("recycled", f"confidence {1 - conf:.3f} in the flipped label; flipped", conf, evidence)
        why = "no judge verdict" if not judged else f"confidence {conf:.3f} is below the target either way"
        return Decided("dropped", why, conf, evidence)

    def judge_priority(self, annotator: str) -> float:
        """The most reliable judge on the gold probe first: its unanimous verdict's log-odds weight."""
        return judge_weight(self.judges.get(annotator))

    def settled(self, scores: dict, judgement: dict | None, remaining: list[str]) -> str | None:
        """Stop asking judges once the evidence (with a judge's verdict in it) gives the label ``keep_stop_confidence``
        or, with the judges' disagreement, gives the flipped label ``flip_stop_confidence``; or once no outcome of
        the remaining annotators could reach a keep or a flip (at the target). Both stopping bars are above the
        target the decisions are made at: posteriors stay calibrated under optional stopping, so pairs stopped at
        the target have the target precision, but fixed sampling's extra votes carry its decisions well past it,
        and the harness's paired comparison showed stopping at the target losing kept accuracy and recycled
        precision against it beyond noise. A flip's bar is the stricter: it rests on the judges alone, whose errors
        gather on hard pairs. A pair may be kept on one vote, but flipped only on two or more sampled votes
        (replaying fixed-sampling worlds showed single-vote flips below the target precision); a logprob verdict
        weighs by its own calibrated probability (low on a pair the judge finds hard), so one may flip."""
        evidence = self.evidence(scores, judgement)
        total = sum(evidence.values())
        judged = sum(v for k, v in evidence.items() if k.startswith("judge_"))
        if total >= logit(self.keep_stop_confidence) and judged > 0:  # the RMs alone decide at rm_only_confidence
            return "confident"
        verdicts = (judgement or {}).get("annotator_verdicts") or []
        votes = sum(v["agree"] + v["disagree"] for v in verdicts)
        weighed = any(v.get("log_odds") for v in verdicts)  # a logprob verdict's weight is its own probability
        flip_ok = judged < 0 or self.recycle_policy != "positive_evidence"
        if -total >= logit(self.flip_stop_confidence) and (votes >= 2 or weighed) and flip_ok:
            return "confident_flipped"  # never on one sampled vote: a flip changes the label (see the docstring)
        answered = sum(1 for k, v in evidence.items() if k.startswith("judge_") and v)
        room = self._shrink(answered + len(remaining)) * sum(judge_room(self.judges.get(n)) for n in remaining)
        if room <= 0:
            return "no_informative_judge"
        judges_can_flip = self.recycle_policy == "positive_evidence" and total - room <= -logit(self.target_precision)
        if total + room < logit(self.min_confidence) and not judges_can_flip:
            return "hopeless"
        return None

    def _flip(self, conf: float, judged: float, scores: dict) -> bool:
        if self.recycle_policy == "positive_evidence":
            return 1 - conf >= self.target_precision and judged < 0
        p_best, p_gold = _or_half(p_of(scores, "best")), _or_half(p_of(scores, "gold"))
        return should_recycle(p_best, p_gold, self.recycle_policy)


def _confidence(evidence: dict[str, float]) -> float:
    return float(sigmoid(sum(evidence.values())))


def configured_rule(cfg: Stage2Config, rnd: Any) -> RuleBase:
    """The run's decision rule (``decision_rule``: a rule class's ``kind``), configured by its settings and the
    source round; not yet fitted to a shard."""
    return RuleBase.registry[cfg.decision_rule].from_config(cfg, rnd)


@dataclass(frozen=True)
class ShardDecisions:
    """``decide_shard``'s result: the rule as fitted to the judgements, and a decision per pair and canary."""

    rule: RuleBase
    decided: dict[str, Decided]
    routed: dict[str, bool]  # pair_id → sent to the judges
    canaries: dict[str, Decided]
    canaries_routed: dict[str, bool]


def decide_shard(
    scores: list[dict], verdicts: Mapping[str, dict], rule: RuleBase, canary_scores: list[dict] = ()
) -> ShardDecisions:
    """The stage-2 decision protocol for one shard, pure: ``rule`` is fitted to the shard's scores (as stored
    at scoring time), routes, is refitted to the verdicts of the pairs it routed, and decides every pair (gold
    pairs keep their human label) and every canary. Verdicts of pairs it did not route never count."""
    routed = {s["pair_id"]: not s["in_gold"] and rule.needs_judges(s) for s in scores}
    judgements = {pid: verdicts[pid] for pid, r in routed.items() if r and pid in verdicts}
    fitted = rule.fit(scores, judgements)
    decided = {
        s["pair_id"]: GOLD_KEPT if s["in_gold"] else fitted.decide(s, judgements.get(s["pair_id"])) for s in scores
    }
    canaries_routed = {c["pair_id"]: rule.needs_judges(c) for c in canary_scores}
    canaries = {
        c["pair_id"]: fitted.decide(c, verdicts.get(c["pair_id"]) if canaries_routed[c["pair_id"]] else None)
        for c in canary_scores
    }
    return ShardDecisions(fitted, decided, routed, canaries, canaries_routed)
