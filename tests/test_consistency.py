import itertools

import pytest

from synpref.consistency import ConsistencyConfig, decide, needs_llm


@pytest.mark.parametrize("gold_ok,best_ok,llm_ok", list(itertools.product([True, False], repeat=3)))
@pytest.mark.parametrize("policy", ["both_rms_reject", "all_discarded"])
def test_decision_table(gold_ok, best_ok, llm_ok, policy):
    p_gold, p_best = (0.9 if gold_ok else 0.1), (0.9 if best_ok else 0.1)
    decision, reason = decide(p_best, p_gold, "agree" if llm_ok else "disagree", ConsistencyConfig(0.0, policy))
    if gold_ok and (best_ok or llm_ok):
        assert decision == "kept"
    elif policy == "all_discarded" or (not gold_ok and not best_ok):
        assert decision == "recycled" and "flipped" in reason
    else:
        assert decision == "dropped"
    assert reason


def test_band_routing():
    assert needs_llm(0.5) and not needs_llm(0.51)
    assert needs_llm(0.55, band=0.1) and not needs_llm(0.61, band=0.1)
    assert decide(0.55, 0.9, None, ConsistencyConfig(band=0.1))[0] == "dropped"  # inside the band: best RM does not count
