"""Measuring sources on gold: intervals, calibration, judge reliability, the prior."""

import numpy as np
import pyarrow as pa
import pytest

from synpref.llm.annotation import SAMPLE_SCHEMA
from synpref.models.reliability import (
    calibrate,
    estimate_prior,
    joint_weights,
    judge_evidence,
    judge_reliability,
    judge_weight,
    reliability,
    shrink_toward_pool,
    uninformative_judges,
    verdict_sign,
    wilson_interval,
)


def test_wilson_interval_brackets_the_proportion_and_is_wide_for_small_n():
    low, high = wilson_interval(8, 10)
    assert low < 0.8 < high
    assert high - low > 0.3
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("k,n,significant", [(30, 32, True), (6, 10, False), (0, 0, False), (55, 100, False)])
def test_a_source_is_significant_only_when_its_interval_excludes_chance(k, n, significant):
    assert reliability(k, n)["significant"] is significant


def test_temperature_scaling_tames_an_overconfident_rm():
    rng = np.random.default_rng(0)
    right = rng.random(400) < 0.8  # an 80%-accurate RM that says ±6 every time
    diffs = np.where(right, 6.0, -6.0)
    cal = calibrate(diffs)
    assert cal["ece_after"] < cal["ece_before"]
    assert cal["brier_after"] < cal["brier_before"]
    assert 1 / (1 + np.exp(-6.0 * cal["weight"])) == pytest.approx(right.mean(), abs=0.01)


def test_two_correlated_rms_are_not_counted_twice():
    rng = np.random.default_rng(1)
    d = rng.normal(1.0, 1.0, 300)
    cal = {n: calibrate(d) for n in ("best", "gold")}
    weights = joint_weights({"best": d, "gold": d}, cal)
    assert weights["best"] + weights["gold"] < 1.5 * cal["best"]["weight"]


def test_an_rm_at_chance_gets_zero_weight():
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 1, 60)
    cal = {"best": calibrate(noise + 2.0), "gold": calibrate(noise)}
    assert joint_weights({"best": noise + 2.0, "gold": noise}, cal)["gold"] == 0.0


def _samples(verdicts: dict[str, list[str]]) -> pa.Table:
    rows = [
        {"pair_id": f"g{i}", "annotator": name, "sample": s, "verdict": v, "slot": 1 if s % 2 else 2}
        for name, per_pair in verdicts.items()
        for i, pair in enumerate(per_pair)
        for s, v in enumerate(pair.split())
    ]
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def test_judges_are_measured_separately_when_unanimous_and_when_split():
    judges = judge_reliability(_samples({"a": ["agree agree agree"] * 40 + ["agree disagree agree"] * 10}))
    a = judges["annotators"]["a"]
    assert a["unanimous"]["n"] == 40
    assert a["split"]["n"] == 10
    assert judge_weight(a, "unanimous") > judge_weight(a, "split")


def test_a_judges_first_vote_alone_is_measured_on_the_probe():
    """Judging in sequence may stop on one vote: its weight is the accuracy of the first sample, not of a
    unanimous majority."""
    judges = judge_reliability(_samples({"a": ["disagree agree agree"] * 10 + ["agree agree agree"] * 30}))
    a = judges["annotators"]["a"]
    assert (a["single"]["n"], a["single"]["accuracy"]) == (40, 0.75)
    assert a["accuracy"] == 1.0
    assert verdict_sign(1, 0) == (1, "single") and verdict_sign(0, 2) == (-1, "unanimous")
    assert verdict_sign(2, 1) == (1, "split") and verdict_sign(1, 1) == (0, "split")
    assert judge_weight(a, "single") < judge_weight(a, "unanimous")
    older = {k: v for k, v in a.items() if k != "single"}  # a probe measured before first votes were
    assert judge_weight(older, "single") == judge_weight(older, "unanimous")


def test_votes_count_by_their_number_and_margin_as_measured_on_the_probe():
    """Judging in sequence stops on a prefix of an annotator's samples: two agreeing votes of three weigh what two
    agreeing first samples were worth on the probe, not what three unanimous ones were."""
    pattern = ["agree agree agree"] * 30 + ["agree agree disagree"] * 6 + ["disagree disagree agree"] * 4
    pattern += ["disagree agree agree"] * 10
    a = judge_reliability(_samples({"a": pattern}))["annotators"]["a"]
    assert a["votes"]["2:2"]["n"] == 40 and a["votes"]["2:2"]["accuracy"] == 0.9
    assert a["votes"]["3:3"]["n"] == 30 and a["votes"]["1:1"]["n"] == 50
    assert a["votes"]["3:1"]["n"] == 20 and a["votes"]["3:1"]["accuracy"] == 0.8
    three, two = judge_evidence(a, {"agree": 3, "disagree": 0}), judge_evidence(a, {"agree": 2, "disagree": 0})
    assert three > two > judge_evidence(a, {"agree": 1, "disagree": 0}) > 0
    assert judge_evidence(a, {"agree": 0, "disagree": 2}) == -two
    assert three == judge_weight(a, "unanimous")  # a full set of samples weighs as before
    older = {k: v for k, v in a.items() if k != "votes"}  # a probe measured before vote cells
    assert judge_evidence(older, {"agree": 2, "disagree": 0}) == judge_weight(a, "unanimous")


def test_alike_judges_share_one_estimate_of_a_vote_cell_and_a_different_one_keeps_its_own():
    """A probe of a few dozen pairs a judge measures a cell's accuracy with an error of several points (judging in
    sequence would stop where an overestimate first crosses the bar): empirical-Bayes shrinkage pools judges that
    are alike, and leaves alone one that differs beyond sampling noise."""
    alike = shrink_toward_pool([(32, 32), (32, 34), (40, 43)])
    assert max(alike) - min(alike) < 0.01 and alike[0] < 33 / 34  # the lucky 32 of 32 is not taken at its word
    apart = shrink_toward_pool([(30, 32), (20, 34), (40, 43)])
    assert apart[1] < 0.65 < 0.85 < min(apart[0], apart[2])
    assert shrink_toward_pool([(30, 32)]) == [31 / 34]  # one source: its own, Laplace-smoothed
    pattern = ["agree agree agree"] * 30 + ["agree agree disagree"] * 10
    judges = judge_reliability(_samples({"a": pattern, "b": ["agree agree agree"] * 40}))["annotators"]
    assert judges["a"]["votes"]["2:2"]["pooled_accuracy"] == judges["b"]["votes"]["2:2"]["pooled_accuracy"]
    assert judge_weight(judges["a"], votes="3:1") > 0 and "3:1" not in judges["b"]["votes"]


def test_a_judge_at_chance_counts_zero():
    judges = judge_reliability(_samples({"a": ["agree agree agree", "disagree disagree disagree"] * 10}))
    assert judge_weight(judges["annotators"]["a"]) == 0.0


def test_the_prior_recovers_the_share_of_right_labels():
    rng = np.random.default_rng(3)
    right = rng.random(2000) < 0.7
    evidence = np.where(right, 1.0, -1.0) * 2.5 + rng.normal(0, 0.5, 2000)
    assert estimate_prior(evidence) == pytest.approx(0.7, abs=0.04)


# --- judges as people have them: weak, correlated; a prior from every source (issue: real judges) ---------------


def _single_votes(votes: dict[str, list[str]]) -> pa.Table:
    """One vote per probe pair and judge, the candidates' order alternating from pair to pair."""
    rows = [
        {"pair_id": f"g{i}", "annotator": name, "sample": 0, "verdict": v, "slot": 1 + i % 2}
        for name, per_pair in votes.items()
        for i, v in enumerate(per_pair)
    ]
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def _one_vote_probe(accuracies: dict[str, float], n: int, seed: int, copies: dict[str, str] | None = None) -> pa.Table:
    """One vote per probe pair and judge, right with its accuracy; ``copies``: judge → the judge it always echoes."""
    rng = np.random.default_rng(seed)
    votes = {name: ["agree" if rng.random() < a else "disagree" for _ in range(n)] for name, a in accuracies.items()}
    for name, source in (copies or {}).items():
        votes[name] = list(votes[source])
    return _single_votes(votes)


def test_a_weak_judge_contributes_evidence():
    """0.6 on 60 probe pairs is not significant (95% CI reaches below 0.5), yet it is evidence: a Beta(1, 1) posterior
    of 37/62, about 0.39 log-odds, not the zero a significance cut-off gave it."""
    judges = judge_reliability(_single_votes({"weak": ["agree"] * 36 + ["disagree"] * 24}))
    weak = judges["annotators"]["weak"]
    assert not weak["significant"] and weak["n"] == 60
    assert judge_weight(weak) == pytest.approx(np.log(37 / 25), abs=1e-9)
    assert judge_evidence(weak, {"agree": 1, "disagree": 0}) > 0.3
    assert uninformative_judges(judges) == {}


def test_three_weak_judges_that_agree_outweigh_one():
    judges = judge_reliability(_one_vote_probe({"a": 0.65, "b": 0.65, "c": 0.65}, 200, seed=4))
    one = judge_evidence(judges["annotators"]["a"], {"agree": 1, "disagree": 0})
    three = sum(judge_evidence(judges["annotators"][n], {"agree": 1, "disagree": 0}) for n in "abc")
    assert three * judges["shrink"] > 2 * one * judges["shrink"] > 0


def test_a_judge_no_better_than_chance_still_counts_zero():
    judges = judge_reliability(_single_votes({"coin": ["agree"] * 30 + ["disagree"] * 30}))
    assert judge_weight(judges["annotators"]["coin"]) == 0.0
    assert "no better than chance" in uninformative_judges(judges)["coin"]


def test_two_judges_that_always_agree_are_not_counted_as_two_independent_votes():
    """A judge and its echo (two reward models of one family): on the probe their summed evidence is twice one
    judge's, and the shrink fitted there takes it back to what one of them knows."""
    judges = judge_reliability(_one_vote_probe({"a": 0.8}, 400, seed=5, copies={"echo": "a"}))
    a, echo = judges["annotators"]["a"], judges["annotators"]["echo"]
    vote = {"agree": 1, "disagree": 0}
    together = (judge_evidence(a, vote) + judge_evidence(echo, vote)) * judges["shrink"]
    alone = judge_evidence(a, vote)
    assert together == pytest.approx(alone, rel=0.15)
    independent = judge_reliability(_one_vote_probe({"a": 0.8, "b": 0.8}, 400, seed=5))
    assert independent["shrink"] > 0.85  # independent judges keep (nearly) all their evidence


def test_the_prior_comes_from_the_judges_when_the_rms_know_nothing():
    """RMs at chance (weight 0 on gold), three informative judges (0.8, 0.7, 0.65 on the probe): the share of right
    labels in the shard is estimated within ±0.05 of the truth, where RM evidence alone gives 0.5."""
    from synpref.stage2.consistency import ReliabilityRule

    truth = {0.715: 11, 0.55: 12, 0.85: 13}
    for share, seed in truth.items():
        accuracies = {"llm": 0.8, "rm_a": 0.7, "rm_b": 0.65}
        judges = judge_reliability(_one_vote_probe(accuracies, 64, seed=seed))
        rule = ReliabilityRule(rm_weights={}, judges=judges["annotators"], judge_shrink=judges["shrink"])
        rng = np.random.default_rng(seed)
        scores = [{"pair_id": f"p{i}", "in_gold": False} for i in range(1500)]
        right = rng.random(len(scores)) < share
        judgements = {}
        for s, ok in zip(scores, right):
            verdicts = []
            for name, acc in accuracies.items():
                agree = (rng.random() < acc) == ok
                verdicts.append({"annotator": name, "agree": int(agree), "disagree": int(not agree), "abstain": 0})
            judgements[s["pair_id"]] = {"annotator_verdicts": verdicts}
        assert rule.fit(scores).prior == 0.5  # the RMs alone know nothing
        assert rule.fit(scores, judgements).prior == pytest.approx(right.mean(), abs=0.05)
