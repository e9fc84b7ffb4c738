"""Recycling discarded pairs by flipping."""

import pytest

from synpref.stage2.recycle import recycled, should_recycle


@pytest.mark.parametrize(
    "p_best,p_gold,policy,expected",
    [
        (0.1, 0.2, "both_rms_reject", True),
        (0.6, 0.2, "both_rms_reject", False),
        (0.1, 0.6, "both_rms_reject", False),
        (0.6, 0.6, "all_discarded", True),
    ],
)
def test_policies(p_best, p_gold, policy, expected):
    assert should_recycle(p_best, p_gold, policy) is expected


def test_unknown_policy_is_refused_by_name():
    with pytest.raises(ValueError, match="both_rms_reject"):
        should_recycle(0.1, 0.1, "sometimes")


def test_recycled_pair_is_flipped_keeps_its_id_and_says_so():
    row = {"pair_id": "x", "chosen": "good", "rejected": "bad", "flipped": False, "provenance": "unverified"}
    out = recycled(row)
    assert (out["chosen"], out["rejected"]) == ("bad", "good")
    assert out["flipped"] is True
    assert out["pair_id"] == "x"
    assert out["provenance"] == "recycled"
