import pytest

from conftest import annotator_cfg
from synpref.llm.annotation import (
    annotate_pairs,
    annotator_stats,
    build_judge_messages,
    judge,
    merge_verdicts,
    order_swapped,
    parse_verdict,
    slot_to_verdict,
)
from synpref.settings import AnnotateSettings
from synpref.simulation.evaluation import merged_accuracy, truth_agree


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Candidate 2 is clearer and correct.\n\n[[2]]", 2),
        ("Early on I thought [[2]] but after checking the maths, Candidate 1 wins.\n[[1]]", 1),
        ("Both are fine, I cannot decide.", None),
        ("Neither. [[3]]", None),
        ("", None),
        ("[[1]] is my verdict, but more analysis of the style and tone would be needed here.", None),
        ("Final answer: [[1]] or [[2]]", None),
        ("Verdict: **[[1]]**.", 1),
    ],
)
def test_parser_takes_the_last_token_and_abstains_otherwise(text, expected):
    assert parse_verdict(text)[0] == expected


def test_slot_mapping_through_recorded_order():
    assert slot_to_verdict(1, swapped=False) == "agree"
    assert slot_to_verdict(1, swapped=True) == "disagree"
    assert slot_to_verdict(2, swapped=True) == "agree"
    assert slot_to_verdict(None, swapped=True) == "abstain"


def test_prompt_has_at_most_max_examples_target_last_and_seeded_order(sim_truth):
    _, pairs, _, gold, _ = sim_truth
    pair, examples = pairs.to_pylist()[0], gold.to_pylist()[:12]
    user = build_judge_messages(pair, examples, swapped=True, max_examples=8)[1][1]
    assert user.count("### Example") == 8
    target = user.index("## Target pair")
    assert target > user.rindex("### Example")
    assert user.index(pair["rejected"], target) < user.index(
        pair["chosen"], target
    )  # swapped: chosen shown as Candidate 2
    orders = [order_swapped(p["pair_id"], "judge", 0, 0) for p in pairs.to_pylist()]
    assert orders == [order_swapped(p["pair_id"], "judge", 0, 0) for p in pairs.to_pylist()]
    assert 0 < sum(orders) < len(orders)


def test_plain_judging_shows_no_examples_no_guideline_and_no_attributes(sim_truth):
    """``preference_aware: false`` (the paper's pure LLM curation): the prompt is the target pair alone."""
    from synpref.llm.annotation import DEFAULT_GUIDELINE

    _, _, _, gold, _ = sim_truth
    pair = {
        **gold.to_pylist()[0],
        "annotation_guideline": "Prefer the safer answer.",
        "attributes_status": "generated",
    }
    examples = gold.to_pylist()[1:9]
    aware = build_judge_messages(pair, examples, swapped=False, max_examples=8)[1][1]
    plain = build_judge_messages(pair, examples, False, 8, preference_aware=False)[1][1]
    assert aware.count("### Example") == 8 and "Prefer the safer answer." in aware and "task category:" in aware
    assert "### Example" not in plain and "task category:" not in plain and "Prefer the safer answer." not in plain
    assert DEFAULT_GUIDELINE in plain and pair["chosen"] in plain and pair["rejected"] in plain


def test_merge_policies():
    assert merge_verdicts({"a": "agree", "b": "agree", "c": "disagree"}) == "agree"
    assert merge_verdicts({"a": "agree", "b": "disagree"}) == "abstain"  # ties abstain, never a coin flip
    assert merge_verdicts({"a": "agree", "b": "agree", "c": "abstain"}, "unanimous") == "abstain"
    assert (
        merge_verdicts({"a": "agree", "b": "disagree", "c": "disagree"}, "weighted", {"a": 0.95, "b": 0.6, "c": 0.6})
        == "agree"
    )


def test_merged_verdicts_beat_single_samples_and_second_run_is_free(sim_server, sim_truth, tmp_path):
    _, pairs, truth, gold, _ = sim_truth
    rows, gold_rows = pairs.to_pylist(), gold.to_pylist()
    annotators = [annotator_cfg(sim_server, m, verdicts="sampled") for m in ("good", "ok", "meh")]
    fixed = AnnotateSettings(max_examples=4, sampling="fixed")
    merged, samples, usage = annotate_pairs(rows, gold_rows, annotators, tmp_path / "cache", fixed)
    agree = truth_agree(rows, truth)
    stats = annotator_stats(samples, agree)
    merged_acc = merged_accuracy(merged, agree)["accuracy"]
    assert merged_acc > max(s["sample_accuracy"] for s in stats.values())
    assert merged_acc > stats["meh"]["accuracy"]
    first_requests = sum(sim_server.counts.values())
    assert samples.num_rows == len(rows) * 9  # three annotators × three samples ...
    assert first_requests == len(rows) * 3  # ... each annotator's in one request of three choices
    assert sum(u["cost_usd"] for u in usage.values()) > 0
    merged2, _, usage2 = annotate_pairs(rows, gold_rows, annotators, tmp_path / "cache", fixed)
    assert sum(sim_server.counts.values()) == first_requests  # zero new requests
    assert all(u["requests"] == 0 and u["cache_hits"] == len(rows) for u in usage2.values())  # one request a pair
    assert merged2.equals(merged)


def test_position_bias_is_measured(sim_server, sim_truth, tmp_path):
    _, pairs, _, _, _ = sim_truth
    samples, _ = judge(pairs.to_pylist(), {}, annotator_cfg(sim_server, "biased", samples=4), tmp_path / "c")
    est = annotator_stats(samples)["biased"]["position_bias_estimate"]
    assert abs(est - 0.4) < 0.12


def _pair(question: str, chosen: str, rejected: str, category: str = "factual_qa") -> dict:
    attrs = {"task_category": category, "preference_objectivity": "objective", "controversiality": "low"}
    return {
        "pair_id": question,
        "conversation": [{"role": "user", "content": question}],
        "chosen": chosen,
        "rejected": rejected,
        **attrs,
        "desired_attributes": ["correctness"],
        "provenance": "human",
    }


def test_a_simulated_judges_verbosity_bias_is_corrected_by_a_counter_stylistic_gold_example():
    """SIMULATED judges fail as the paper says LLM judges do: they prefer the longer answer; a human-verified
    example of the same kind in which the shorter answer won (a preference-aware prompt) reduces that bias."""
    import random

    from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex, _key

    target = _pair("What is 6 * 7?", "42.", "Let me think about this at length, step by step: the answer is 48.")
    counter = _pair("What is 2 + 2?", "4.", "Adding two and two carefully, considering every case, gives 5.")
    other_kind = _pair("Name a colour.", "Red.", "Colours are many; one that I like a lot is red.", "creative_writing")
    truth = TruthIndex(better={_key("user: What is 6 * 7?", target["chosen"]): True})
    truth.better[_key("user: What is 6 * 7?", target["rejected"])] = False
    profile = JudgeProfile(0.95, verbosity_bias=0.6, bias_correction=0.75)
    server = SimulatedJudgeServer(truth, {"m": profile})

    def accuracy(examples: list[dict], aware: bool = True) -> float:
        right = 0
        for i in range(400):
            swapped = bool(i % 2)
            user = build_judge_messages(target, examples, swapped, 8, preference_aware=aware)[1][1]
            slot = server._judge(user, profile, random.Random(i))[1]
            right += slot == (2 if swapped else 1)
        return right / 400

    plain, unrelated, corrected = accuracy([], aware=False), accuracy([other_kind]), accuracy([counter])
    assert plain < 0.55 and unrelated < 0.55  # 0.4 · 0.95 in expectation; an example of another kind: no help
    assert corrected > plain + 0.3  # the bias falls to 0.6 · 0.25: 0.85 · 0.95 in expectation
    assert JudgeProfile().verbosity_bias == 0  # unbiased unless asked: the default worlds are unchanged
