"""Judges as people have them: deterministic, order-sensitive or order-invariant; ``order: both``; what the probe
measures of a judge's order behaviour."""

import pytest

from conftest import annotator_cfg
from synpref.llm.annotation import judge, requests_asked
from synpref.models.reliability import judge_advice, judge_reliability
from synpref.settings import AnnotateSettings

FIXED = AnnotateSettings(sampling="fixed")


def _gold_rows(sim_truth):
    return sim_truth[3].to_pylist()  # 40 correctly oriented gold pairs: a probe


def test_a_deterministic_judge_repeats_itself_and_the_probe_says_to_ask_both_orders(sim_server, sim_truth, tmp_path):
    samples, _ = judge(_gold_rows(sim_truth), {}, annotator_cfg(sim_server, "temp0"), tmp_path / "c", FIXED)
    judges = judge_reliability(samples)
    stats = judges["annotators"]["temp0"]
    assert stats["repeats_agree"] == 1.0 and stats["orders_agree"] is None  # three choices, one answer
    assert stats["votes"]["3:3"]["accuracy"] == stats["single"]["accuracy"]  # 3 of 3 says what 1 of 1 says
    (advice,) = judge_advice(judges)
    assert advice.startswith("annotator temp0 gave the same verdict on 100% of its repeated samples")
    assert "order: both, samples: 2, choices_per_request: 1" in advice


@pytest.mark.parametrize(("model", "invariant"), [("temp0", False), ("rm-judge", True)])
def test_order_both_asks_each_order_once_and_measures_what_the_other_order_adds(
    sim_server, sim_truth, tmp_path, model, invariant
):
    cfg = annotator_cfg(sim_server, model, samples=2, choices_per_request=1).model_copy(update={"order": "both"})
    rows = _gold_rows(sim_truth)
    samples, usage = judge(rows, {}, cfg, tmp_path / "c", FIXED)
    table = samples.to_pylist()
    assert requests_asked(samples) == usage[model]["requests"] == 2 * len(rows)  # the bill: two requests a pair
    for pid in {r["pair_id"] for r in table}:
        assert sorted(r["swapped"] for r in table if r["pair_id"] == pid) == [False, True]
    stats = judge_reliability(samples)["annotators"][model]
    if invariant:  # a reward model: the other order says nothing new
        assert stats["orders_agree"] == 1.0
    else:  # an LLM judge at temperature 0: the other order is a new draw
        assert stats["orders_agree"] < 0.9
    assert judge_advice({"annotators": {model: stats}}) == []  # it is asked both orders already


def test_order_random_keeps_its_requests_and_their_cache(sim_server, sim_truth, tmp_path):
    rows = _gold_rows(sim_truth)[:10]
    plain = annotator_cfg(sim_server, "good", samples=2, choices_per_request=1)
    first, _ = judge(rows, {}, plain, tmp_path / "c", FIXED)
    again, usage = judge(rows, {}, plain.model_copy(update={"order": "random"}), tmp_path / "c", FIXED)
    assert usage["good"]["cache_hits"] == 20 and usage["good"]["requests"] == 0
    assert first.column("swapped").to_pylist() == again.column("swapped").to_pylist()


def test_order_both_in_one_request_is_refused_in_one_line():
    from synpref.llm.client import AnnotatorError, annotator_config

    with pytest.raises(AnnotatorError, match="order: both .* needs more samples than choices a request"):
        annotator_config({"name": "j", "base_url": "http://h:1/v1", "model": "m", "order": "both"})


def test_order_auto_asks_a_judge_that_repeats_itself_both_orders_from_its_probe_on(sim_server, sim_truth, tmp_path):
    """The default ``order: auto``: a sampling judge is asked as configured; one that answers the same every time
    is probed again asking each order once, and that is how it is asked from then on (``asking``)."""
    from synpref.llm.annotation import asking, probe_judge

    rows = _gold_rows(sim_truth)
    sampling, chosen, _, _ = probe_judge(rows, {}, annotator_cfg(sim_server, "good"), tmp_path / "c", FIXED)
    assert chosen is None and sampling.order == "auto"
    temp0 = annotator_cfg(sim_server, "temp0")
    asked, chosen, samples, usage = probe_judge(rows, {}, temp0, tmp_path / "c", FIXED)
    assert chosen == {"order": "both", "samples": 2, "choices_per_request": 1} and asked.order == "both"
    assert usage["temp0"]["requests"] == len(rows) + 2 * len(rows)  # the first probe (n = 3), then each order once
    assert samples.num_rows == 2 * len(rows)  # the probe kept is the one asked as the judge will be asked
    judges = judge_reliability(samples)
    judges["annotators"]["temp0"]["asking"] = chosen
    assert asking(temp0, judges).order == "both" and asking(temp0, judges).samples == 2
    fixed = temp0.model_copy(update={"order": "random"})
    assert asking(fixed, judges) == fixed  # a configured order is never overridden


def test_order_auto_asks_a_judge_that_says_the_same_in_either_order_once(sim_server, sim_truth, tmp_path):
    from synpref.llm.annotation import ASK_ONCE, probe_judge

    rows = _gold_rows(sim_truth)
    asked, chosen, samples, usage = probe_judge(rows, {}, annotator_cfg(sim_server, "rm-judge"), tmp_path / "c", FIXED)
    assert chosen == ASK_ONCE and asked.samples == 1 and asked.choices_per_request == 1
    assert usage["rm-judge"]["requests"] == 3 * len(rows)  # n = 3, then both orders; the last probe is in the cache
    assert samples.num_rows == len(rows)
