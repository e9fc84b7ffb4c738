"""Blind canaries: quality estimates without a truth."""

import pytest

from synpref.simulation.synthetic import generate
from synpref.stage2.canaries import canary_rows, estimates, is_canary, label_right


def test_canaries_come_in_both_orientations_and_hide_their_gold_id():
    gold = generate(20, seed=1)[0].to_pylist()
    rows = canary_rows(gold, "shard-00000.parquet", ["shard-00000.parquet"], 5, with_attributes=False)
    assert len(rows) == 10
    assert all(is_canary(r["pair_id"]) for r in rows)
    assert not {r["pair_id"] for r in rows} & {g["pair_id"] for g in gold}
    assert {r["source_pair_id"] for r in rows} <= {g["pair_id"] for g in gold}
    assert all(r["task_category"] is None for r in rows)
    right = next(r for r in rows if label_right(r["pair_id"]))
    wrong = next(r for r in rows if r["pair_id"] == right["pair_id"][:-1] + "1")
    assert (right["chosen"], right["rejected"]) == (wrong["rejected"], wrong["chosen"])


def test_canaries_are_spread_over_the_shards_once_each():
    gold = generate(60, seed=2)[0].to_pylist()
    names = [f"shard-{i:05d}.parquet" for i in range(3)]
    per_shard = [canary_rows(gold, n, names, 40, with_attributes=True) for n in names]
    assert sum(len(rows) for rows in per_shard) == 80
    assert all(rows for rows in per_shard)


def _outcomes(kept_right: int, kept_wrong: int, recycled_wrong: int, n: int = 50) -> list[dict]:
    right = [{"label_right": True, "decision": "kept" if i < kept_right else "dropped"} for i in range(n)]
    wrong = [
        {
            "label_right": False,
            "decision": "kept" if i < kept_wrong else "recycled" if i < kept_wrong + recycled_wrong else "dropped",
        }
        for i in range(n)
    ]
    return right + wrong


def test_estimates_follow_the_input_share_of_right_labels():
    q = estimates(_outcomes(kept_right=45, kept_wrong=1, recycled_wrong=40), kept_share=0.9 * 0.7 + 0.02 * 0.3)
    assert q.label_accuracy_of_input == pytest.approx(0.7, abs=0.01)
    assert q.retention.estimate == pytest.approx(0.9)
    assert q.kept_precision.estimate == pytest.approx(0.7 * 0.9 / (0.7 * 0.9 + 0.3 * 0.02), abs=1e-6)
    assert q.kept_precision.ci_low < q.kept_precision.estimate < q.kept_precision.ci_high


def test_no_canaries_no_estimates():
    assert estimates([], 0.5).dump() == {"canaries": 0}  # the JSON keeps its shape: no null estimates
