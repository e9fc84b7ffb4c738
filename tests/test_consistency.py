"""The paper's decision rule, and how a new signal and a new rule plug into stage 2."""

import itertools

import numpy as np
import pytest

from synpref.consistency import Decided, PaperRule, ReliabilityRule, score_rows, scores_schema, signal_logit
from synpref.reward_model import p_from_diff
from synpref.settings import Stage2Config


@pytest.mark.parametrize("gold_ok,best_ok,llm_ok", list(itertools.product([True, False], repeat=3)))
@pytest.mark.parametrize("policy", ["both_rms_reject", "all_discarded"])
def test_decision_table(gold_ok, best_ok, llm_ok, policy):
    scores = {"p_gold": 0.9 if gold_ok else 0.1, "p_best": 0.9 if best_ok else 0.1}
    decided = PaperRule(0.0, policy).decide(scores, {"verdict": "agree" if llm_ok else "disagree"})
    decision, reason = decided.decision, decided.reason
    if gold_ok and (best_ok or llm_ok):
        assert decision == "kept"
    elif policy == "all_discarded" or (not gold_ok and not best_ok):
        assert decision == "recycled"
        assert "flipped" in reason
    else:
        assert decision == "dropped"
    assert reason


@pytest.mark.parametrize(
    "p_best,band,routed", [(0.5, 0.0, True), (0.51, 0.0, False), (0.55, 0.1, True), (0.61, 0.1, False)]
)
def test_band_routing(p_best, band, routed):
    assert PaperRule(band, "both_rms_reject").needs_judges({"p_best": p_best}) is routed


def test_inside_the_band_the_best_rm_does_not_count():
    assert PaperRule(0.1, "both_rms_reject").decide({"p_best": 0.55, "p_gold": 0.9}, None).decision == "dropped"


def test_scores_schema_keeps_the_paper_column_order():
    names = scores_schema(["best", "gold"]).names
    assert names == [
        "pair_id",
        "in_gold",
        "p_best",
        "p_gold",
        "log_p_best",
        "log_p_gold",
        "routed_to_llm",
        "label_conflict",
    ]


class LongerIsBetter:
    """A toy signal (one class): the longer response is the better one."""

    name = "length"

    def logits(self, rows: list[dict]) -> np.ndarray:
        return np.array([len(r["chosen"]) - len(r["rejected"]) for r in rows], dtype=np.float64)


class LengthRule:
    """A toy decision rule (one class) on the toy signal: never asks the judges, drops what the signal rejects."""

    def prepare(self, scores: list[dict], judgements: dict | None = None) -> dict:
        return {}

    def needs_judges(self, scores: dict) -> bool:
        return False

    def decide(self, scores: dict, judgement: dict | None) -> Decided:
        return Decided("kept", "longer chosen") if scores["p_length"] > 0.5 else Decided("dropped", "shorter chosen")


def test_a_new_signal_and_a_new_rule_are_one_class_each():
    rows = [{"chosen": "a long answer", "rejected": "short"}, {"chosen": "short", "rejected": "a long answer"}]
    scores = score_rows([LongerIsBetter()], rows)
    assert sorted(scores) == ["log_p_length", "p_length"]
    decisions = [LengthRule().decide({"p_length": p}, None).decision for p in scores["p_length"]]
    assert decisions == ["kept", "dropped"]


def _scores(best: float, gold: float) -> dict:
    """A scores row from raw reward differences."""
    (p_b,), (lp_b,) = p_from_diff([best])
    (p_g,), (lp_g,) = p_from_diff([gold])
    return {"p_best": p_b, "log_p_best": lp_b, "p_gold": p_g, "log_p_gold": lp_g, "in_gold": False}


def _judgement(*verdicts: str) -> dict:
    """Each annotator unanimous over 3 samples."""
    counts = {"agree": (3, 0), "disagree": (0, 3)}
    rows = [{"annotator": f"j{i}", "agree": counts[v][0], "disagree": counts[v][1]} for i, v in enumerate(verdicts)]
    return {"annotator_verdicts": rows}


def _judge(accuracy: float, significant: bool = True) -> dict:
    stats = {"accuracy": accuracy, "n": 50, "significant": significant}
    return {**stats, "unanimous": stats, "split": stats}


DEFAULTS = {  # the settings' defaults
    k: getattr(Stage2Config(), k) for k in ("target_precision", "min_confidence", "rm_only_confidence")
} | {"recycle_policy": "positive_evidence"}
GOOD_JUDGES = {"annotators": {f"j{i}": _judge(0.9) for i in range(3)}, "shrink": 1.0}
BAD_JUDGE = _judge(0.55, significant=False)


def test_signal_logit_inverts_the_stored_log_p():
    assert signal_logit(_scores(2.5, -1.0), "best") == pytest.approx(2.5)
    assert signal_logit(_scores(2.5, -1.0), "gold") == pytest.approx(-1.0)


def test_confident_rms_keep_a_pair_without_the_judges():
    rule = ReliabilityRule({"best": 1.0, "gold": 1.0}, GOOD_JUDGES, **DEFAULTS)
    assert not rule.needs_judges(_scores(4.0, 4.0))
    assert rule.decide(_scores(4.0, 4.0), None).decision == "kept"


def test_uncertain_pairs_go_to_the_judges_and_agreeing_judges_keep_them():
    rule = ReliabilityRule({"best": 1.0, "gold": 1.0}, GOOD_JUDGES, **DEFAULTS)
    s = _scores(0.5, -0.2)
    assert rule.needs_judges(s)
    decided = rule.decide(s, _judgement("agree", "agree", "agree"))
    assert decided.decision == "kept"
    assert decided.confidence >= 0.98
    assert set(decided.evidence) == {"prior", "rm_best", "rm_gold", "judge_j0", "judge_j1", "judge_j2"}


def test_a_flip_needs_the_judges_to_disagree():
    rule = ReliabilityRule({"best": 1.0, "gold": 1.0}, GOOD_JUDGES, **DEFAULTS)
    s = _scores(-4.0, -4.0)
    assert rule.decide(s, None).decision == "dropped"  # RM evidence alone never flips
    assert rule.decide(s, _judgement("disagree", "disagree", "disagree")).decision == "recycled"


def test_a_source_not_better_than_chance_can_not_veto():
    judges = {"annotators": {**GOOD_JUDGES["annotators"], "j2": BAD_JUDGE}, "shrink": 1.0}
    rule = ReliabilityRule({"best": 1.0, "gold": 0.0}, judges, **DEFAULTS)
    decided = rule.decide(_scores(0.3, -9.0), _judgement("agree", "agree", "disagree"))
    assert decided.evidence["judge_j2"] == 0.0
    assert "rm_gold" not in decided.evidence
    assert decided.decision == "kept"


def test_the_prior_is_the_estimated_share_of_right_labels():
    rule = ReliabilityRule({"best": 1.0}, {}, **DEFAULTS)
    rows = [{"log_p_best": p_from_diff([d])[1][0]} for d in [3.0] * 70 + [-3.0] * 30]
    info = rule.prepare(rows)
    assert info["prior_label_accuracy"] == pytest.approx(0.7, abs=0.05)


def test_the_keep_threshold_keeps_the_largest_set_whose_expected_precision_reaches_the_target():
    rule = ReliabilityRule({"best": 1.0}, {}, **DEFAULTS)
    assert rule.set_threshold([0.999] * 90 + [0.95] * 10) == pytest.approx(0.95)  # mean 0.9941
    assert rule.set_threshold([0.99] * 10 + [0.95] * 10) == pytest.approx(0.98)  # all 0.95s: mean 0.97, too low
    assert rule.set_threshold([0.999] * 100 + [0.85] * 5) == pytest.approx(0.98)  # never below the floor


def test_a_label_conflict_takes_the_prior_away():
    rule = ReliabilityRule({"best": 1.0}, {}, **DEFAULTS)
    rule.prior = 0.8
    plain = rule.decide(_scores(1.0, 0.0), None)
    conflicted = rule.decide({**_scores(1.0, 0.0), "label_conflict": True}, None)
    assert plain.evidence["prior"] > 0
    assert conflicted.evidence["prior"] == 0.0
