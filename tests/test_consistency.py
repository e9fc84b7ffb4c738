"""The decision rules, the pure decision protocol (``decide_shard``), and how a new signal and a new rule plug in."""

import itertools

import numpy as np
import pytest

from conftest import LengthRule, LongerIsBetter
from synpref.models.reliability import logit
from synpref.settings import Stage2Config
from synpref.stage2.consistency import (
    PaperRule,
    ReliabilityRule,
    decide_shard,
    load_rule,
    p_of,
    score_rows,
    scores_schema,
)


@pytest.mark.parametrize("gold_ok,best_ok,llm_ok", list(itertools.product([True, False], repeat=3)))
@pytest.mark.parametrize("policy", ["both_rms_reject", "all_discarded"])
def test_decision_table(gold_ok, best_ok, llm_ok, policy):
    scores = {"logit_gold": logit(0.9 if gold_ok else 0.1), "logit_best": logit(0.9 if best_ok else 0.1)}
    decided = PaperRule(band=0.0, recycle_policy=policy).decide(scores, {"verdict": "agree" if llm_ok else "disagree"})
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
    assert PaperRule(band=band).needs_judges({"logit_best": logit(p_best)}) is routed


def test_inside_the_band_the_best_rm_does_not_count():
    scores = {"logit_best": logit(0.55), "logit_gold": logit(0.9)}
    assert PaperRule(band=0.1).decide(scores, None).decision == "dropped"


def test_scores_schema_keeps_the_paper_column_order():
    names = scores_schema(["best", "gold"]).names
    assert names == ["pair_id", "in_gold", "logit_best", "logit_gold", "routed_to_llm", "label_conflict"]


def test_a_new_signal_and_a_new_rule_are_one_class_each():
    rows = [{"chosen": "a long answer", "rejected": "short"}, {"chosen": "short", "rejected": "a long answer"}]
    scores = score_rows([LongerIsBetter()], rows)
    assert sorted(scores) == ["logit_length"]
    decisions = [LengthRule().decide({"logit_length": x}, None).decision for x in scores["logit_length"]]
    assert decisions == ["kept", "dropped"]
    assert load_rule(LengthRule().model_dump()) == LengthRule()  # stored with a shard, read back as its class


def _scores(best: float, gold: float, pair_id: str = "p") -> dict:
    """A scores row from raw reward differences."""
    return {"pair_id": pair_id, "logit_best": best, "logit_gold": gold, "in_gold": False, "label_conflict": False}


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
GOOD_JUDGES = {f"j{i}": _judge(0.9) for i in range(3)}
BAD_JUDGE = _judge(0.5, significant=False)  # at chance on the probe
WEAK_JUDGE = _judge(0.55, significant=False)  # better than chance, not significantly: weak evidence


def _rule(weights: dict, judges: dict | None = None, **kw) -> ReliabilityRule:
    return ReliabilityRule(rm_weights=weights, judges=GOOD_JUDGES if judges is None else judges, **DEFAULTS | kw)


def test_p_is_derived_from_the_stored_logit():
    assert p_of(_scores(0.0, 2.0), "best") == 0.5
    assert p_of(_scores(0.0, 40.0), "gold") == pytest.approx(1.0)
    assert p_of({"logit_best": None}, "best") is None  # a gold pair is never scored


def test_confident_rms_keep_a_pair_without_the_judges():
    rule = _rule({"best": 1.0, "gold": 1.0})
    assert not rule.needs_judges(_scores(4.0, 4.0))
    assert rule.decide(_scores(4.0, 4.0), None).decision == "kept"


def test_uncertain_pairs_go_to_the_judges_and_agreeing_judges_keep_them():
    rule = _rule({"best": 1.0, "gold": 1.0})
    s = _scores(0.5, -0.2)
    assert rule.needs_judges(s)
    decided = rule.decide(s, _judgement("agree", "agree", "agree"))
    assert decided.decision == "kept"
    assert decided.confidence >= 0.98
    assert set(decided.evidence) == {"prior", "rm_best", "rm_gold", "judge_j0", "judge_j1", "judge_j2"}


def test_a_flip_needs_the_judges_to_disagree():
    rule = _rule({"best": 1.0, "gold": 1.0})
    s = _scores(-4.0, -4.0)
    assert rule.decide(s, None).decision == "dropped"  # RM evidence alone never flips
    assert rule.decide(s, _judgement("disagree", "disagree", "disagree")).decision == "recycled"


def test_a_source_not_better_than_chance_can_not_veto():
    rule = _rule({"best": 1.0, "gold": 0.0}, {**GOOD_JUDGES, "j2": BAD_JUDGE})
    decided = rule.decide(_scores(0.3, -9.0), _judgement("agree", "agree", "disagree"))
    assert decided.evidence["judge_j2"] == 0.0
    assert "rm_gold" not in decided.evidence
    assert decided.decision == "kept"


def test_a_weak_judge_weighs_what_it_knows_and_no_more():
    rule = _rule({"best": 1.0, "gold": 0.0}, {**GOOD_JUDGES, "j2": WEAK_JUDGE})
    decided = rule.decide(_scores(0.3, -9.0), _judgement("agree", "agree", "disagree"))
    assert decided.evidence["judge_j2"] == pytest.approx(-np.log(28.5 / 23.5), abs=1e-4)  # Laplace: 28.5 of 52
    assert decided.decision == "kept"


def test_the_prior_is_the_estimated_share_of_right_labels():
    rule = _rule({"best": 1.0}, {})
    rows = [_scores(d, 0.0, str(i)) for i, d in enumerate([3.0] * 70 + [-3.0] * 30)]
    fitted = rule.fit(rows)
    assert fitted.summary()["prior_label_accuracy"] == pytest.approx(0.7, abs=0.05)
    assert rule.prior == 0.5  # fitting returns a new value; the configured rule is unchanged


def test_the_keep_threshold_keeps_the_largest_set_whose_expected_precision_reaches_the_target():
    rule = _rule({"best": 1.0}, {})
    assert rule.threshold([0.999] * 90 + [0.95] * 10) == pytest.approx(0.95)  # mean 0.9941
    assert rule.threshold([0.99] * 10 + [0.95] * 10) == pytest.approx(0.98)  # all 0.95s: mean 0.97, too low
    assert rule.threshold([0.999] * 100 + [0.85] * 5) == pytest.approx(0.98)  # never below the floor


def test_a_label_conflict_takes_the_prior_away():
    rule = _rule({"best": 1.0}, {}, prior=0.8)
    plain = rule.decide(_scores(1.0, 0.0), None)
    conflicted = rule.decide({**_scores(1.0, 0.0), "label_conflict": True}, None)
    assert plain.evidence["prior"] > 0
    assert conflicted.evidence["prior"] == 0.0


def test_a_rule_survives_its_json_record_exactly():
    rule = _rule({"best": 0.7, "gold": 0.3}, prior=0.8123456789, keep_threshold=0.95)
    back = load_rule(rule.model_dump(mode="json"))
    assert back == rule
    assert isinstance(back, ReliabilityRule)


def test_an_unknown_rule_kind_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown decision rule kind 'nope'"):
        load_rule({"kind": "nope"})


def test_the_settings_record_the_confidences_the_rule_uses():
    cfg = Stage2Config(target_precision=0.99, min_confidence=0.995, rm_only_confidence=0.98)
    assert (cfg.min_confidence, cfg.rm_only_confidence) == (0.99, 0.99)
    assert cfg.model_dump()["min_confidence"] == 0.99
    assert cfg.adjusted() == {  # recorded in the run's manifest beside the effective config: no silent rewrite
        "min_confidence": {"given": 0.995, "effective": 0.99},
        "rm_only_confidence": {"given": 0.98, "effective": 0.99},
    }
    assert Stage2Config().adjusted() == {}


SHARD = [_scores(4.0, 4.0, "sure"), _scores(0.2, 0.1, "unsure"), _scores(-4.0, -4.0, "wrong")]
SHARD.append({"pair_id": "gold", "logit_best": None, "logit_gold": None, "in_gold": True, "label_conflict": False})


def test_decide_shard_routes_refits_and_decides_every_pair_once():
    rule = _rule({"best": 1.0, "gold": 1.0}).fit(SHARD)
    verdicts = {"unsure": _judgement("agree", "agree", "agree"), "wrong": _judgement("disagree", "disagree")}
    verdicts["sure"] = _judgement("disagree", "disagree", "disagree")  # not routed: must not count
    result = decide_shard(SHARD, verdicts, rule)
    assert result.routed == {"sure": False, "unsure": True, "wrong": True, "gold": False}
    assert {p: d.decision for p, d in result.decided.items()} == {
        "sure": "kept",
        "unsure": "kept",
        "wrong": "recycled",
        "gold": "kept",
    }
    assert result.decided["gold"].reason.startswith("human-verified")
    assert "judge_j0" not in result.decided["sure"].evidence
    assert result.rule.keep_threshold is not None  # refitted to the judgements
    # the prior is refitted on every source's evidence: the RMs' and the verdicts of the pairs it routed, only those
    assert result.rule.prior == rule.fit(SHARD, {k: verdicts[k] for k in ("unsure", "wrong")}).prior != rule.prior


def test_decide_shard_is_pure():
    rule = _rule({"best": 1.0, "gold": 1.0}).fit(SHARD)
    verdicts = {"unsure": _judgement("agree", "agree", "agree")}
    first, second = decide_shard(SHARD, verdicts, rule), decide_shard(SHARD, dict(verdicts), rule)
    assert first == second
    assert rule.keep_threshold is None


def test_decide_shard_without_verdicts_drops_what_only_the_judges_could_keep():
    rule = _rule({"best": 1.0, "gold": 1.0}).fit(SHARD)
    result = decide_shard(SHARD, {}, rule)
    assert result.decided["unsure"].decision == "dropped"
    assert result.decided["unsure"].reason == "no judge verdict"


def test_canaries_are_routed_by_the_rule_fitted_at_scoring_and_decided_by_the_refitted_one():
    rule = _rule({"best": 1.0, "gold": 1.0}).fit(SHARD)
    canaries = [_scores(0.2, 0.1, "canary:0:0"), _scores(5.0, 5.0, "canary:0:1")]
    verdicts = {"canary:0:0": _judgement("agree", "agree", "agree"), "canary:0:1": _judgement("disagree")}
    result = decide_shard(SHARD, verdicts, rule, canaries)
    assert result.canaries_routed == {"canary:0:0": True, "canary:0:1": False}
    assert result.canaries["canary:0:0"].decision == "kept"
    assert "judge_j0" not in result.canaries["canary:0:1"].evidence


def test_the_paper_rule_needs_nothing_fitted():
    rule = PaperRule(band=0.1)
    assert rule.fit(SHARD, {}) is rule
    assert rule.summary() == {}


def test_judging_in_sequence_stops_past_the_target_the_decision_is_made_at():
    """A pair whose label has the target precision is kept, but its votes go on to ``keep_stop_confidence`` (fixed
    sampling's extra votes carry its decisions past the target); a flip's go on to ``flip_stop_confidence``."""
    rule = _rule({"best": 1.0, "gold": 1.0})
    agree = _judgement("agree")
    weight = rule.judge_evidence(agree)["judge_j0"]
    x = (logit(0.985) - weight) / 2  # the prior is 0.5: the RMs and one vote give the label 0.985
    assert rule.decide(_scores(x, x), agree).decision == "kept"
    assert rule.settled(_scores(x, x), agree, ["j1"]) is None
    assert rule.model_copy(update={"keep_stop_confidence": 0.98}).settled(_scores(x, x), agree, ["j1"]) == "confident"
    two = {"annotator_verdicts": [{"annotator": "j0", "agree": 0, "disagree": 2}]}
    z = (-logit(0.99) - rule.judge_evidence(two)["judge_j0"]) / 2  # the flipped label at 0.99
    assert rule.decide(_scores(z, z), two).decision == "recycled"
    assert rule.settled(_scores(z, z), two, ["j1"]) is None  # not yet at 0.995
    assert (
        rule.model_copy(update={"flip_stop_confidence": 0.98}).settled(_scores(z, z), two, ["j1"])
        == "confident_flipped"
    )
    assert Stage2Config(target_precision=0.999).keep_stop_confidence == 0.999  # never below the target


def test_a_pair_is_settled_once_no_further_judge_is_needed():
    """Judging in sequence: stop at the judge-skip confidence either way, or when nothing left can matter."""
    rule = _rule({"best": 1.0, "gold": 1.0})
    rest = ["j1", "j2"]
    assert rule.settled(_scores(2.0, 2.0), _judgement("agree"), rest) == "confident"  # 4 + 2.2 ≥ logit(0.995)
    assert rule.settled(_scores(-2.5, -2.5), _judgement("disagree"), rest) == "confident_flipped"
    assert rule.settled(_scores(-2.5, -2.5), None, rest) is None  # no judge disagreed yet: a flip needs one
    one_vote = {"annotator_verdicts": [{"annotator": "j0", "agree": 0, "disagree": 1}]}
    assert rule.settled(_scores(-4.0, -4.0), one_vote, rest) is None  # a flip needs two votes, a keep one
    assert (
        rule.settled(
            _scores(4.0, 4.0),
            {"annotator_verdicts": [{**one_vote["annotator_verdicts"][0], "agree": 1, "disagree": 0}]},
            rest,
        )
        == "confident"
    )
    assert rule.settled(_scores(0.5, 0.0), _judgement("agree"), rest) is None  # open: the next judge can matter
    assert rule.settled(_scores(-1.0, -1.0), _judgement("agree"), rest) is None  # two more agreeing could keep it
    assert rule.settled(_scores(0.5, 0.0), _judgement("agree"), []) == "no_informative_judge"
    bad = _rule({"best": 1.0, "gold": 1.0}, judges=GOOD_JUDGES | {"j2": BAD_JUDGE})
    assert bad.settled(_scores(0.5, 0.0), _judgement("agree"), ["j2"]) == "no_informative_judge"
    weak = _rule({"best": 1.0, "gold": 1.0}, judges={f"j{i}": _judge(0.6) for i in range(3)})
    assert weak.settled(_scores(-0.3, 0.0), _judgement("agree"), ["j1"]) == "hopeless"  # keep and flip out of reach
    assert weak.judge_priority("j0") < rule.judge_priority("j0")
    assert PaperRule().settled(_scores(5.0, 5.0), _judgement("agree"), rest) is None  # the paper rule asks everyone


def test_every_selectable_decision_rule_is_one_class_configured_by_the_settings():
    """Adding a rule is one ``RuleBase`` class (its ``kind``, ``from_config``, ``default_recycle``) plus its name in
    ``DecisionRuleName``: every selectable name has a class, and each configures itself from a run's settings."""
    from typing import get_args

    from synpref.settings import DecisionRuleName
    from synpref.stage2.consistency import RuleBase

    for name in get_args(DecisionRuleName):
        cls = RuleBase.registry[name]
        assert cls.from_config.__func__ is not RuleBase.from_config.__func__, f"{name}: no from_config"
        assert cls.recycle_policy_of(Stage2Config(decision_rule=name)) == cls.default_recycle
