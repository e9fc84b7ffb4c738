"""The paper's decision rule, and how a new signal and a new rule plug into stage 2."""

import itertools

import numpy as np
import pytest

from synpref.consistency import PaperRule, score_rows, scores_schema


@pytest.mark.parametrize("gold_ok,best_ok,llm_ok", list(itertools.product([True, False], repeat=3)))
@pytest.mark.parametrize("policy", ["both_rms_reject", "all_discarded"])
def test_decision_table(gold_ok, best_ok, llm_ok, policy):
    scores = {"p_gold": 0.9 if gold_ok else 0.1, "p_best": 0.9 if best_ok else 0.1}
    decision, reason = PaperRule(0.0, policy).decide(scores, "agree" if llm_ok else "disagree")
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
    assert PaperRule(band).needs_judges({"p_best": p_best}) is routed


def test_inside_the_band_the_best_rm_does_not_count():
    assert PaperRule(band=0.1).decide({"p_best": 0.55, "p_gold": 0.9}, None)[0] == "dropped"


def test_scores_schema_keeps_the_paper_column_order():
    names = scores_schema(["best", "gold"]).names
    assert names == ["pair_id", "in_gold", "p_best", "p_gold", "log_p_best", "log_p_gold", "routed_to_llm"]


class LongerIsBetter:
    """A toy signal (one class): the longer response is the better one."""

    name = "length"

    def logits(self, rows: list[dict]) -> np.ndarray:
        return np.array([len(r["chosen"]) - len(r["rejected"]) for r in rows], dtype=np.float64)


class LengthRule:
    """A toy decision rule (one class) on the toy signal: never asks the judges, drops what the signal rejects."""

    def needs_judges(self, scores: dict) -> bool:
        return False

    def decide(self, scores: dict, llm_verdict: str | None) -> tuple[str, str]:
        return ("kept", "longer chosen") if scores["p_length"] > 0.5 else ("dropped", "shorter chosen")


def test_a_new_signal_and_a_new_rule_are_one_class_each():
    rows = [{"chosen": "a long answer", "rejected": "short"}, {"chosen": "short", "rejected": "a long answer"}]
    scores = score_rows([LongerIsBetter()], rows)
    assert sorted(scores) == ["log_p_length", "p_length"]
    decisions = [LengthRule().decide({"p_length": p}, None)[0] for p in scores["p_length"]]
    assert decisions == ["kept", "dropped"]
