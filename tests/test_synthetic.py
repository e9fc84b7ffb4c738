"""Synthetic data with a hidden truth."""

from synpref.evaluation import label_accuracy
from synpref.synthetic import CATEGORIES, generate


def test_synthetic_is_deterministic_noise_within_tolerance_and_truth_matches():
    p1, t1 = generate(4000, seed=5, noise=0.25)
    p2, _ = generate(4000, seed=5, noise=0.25)
    assert p1.equals(p2)
    assert len(set(p1.column("pair_id").to_pylist())) == 4000
    acc = label_accuracy(p1, t1)
    assert abs((1 - acc) - 0.25) < 0.03
    noisy = {t["pair_id"] for t in t1.to_pylist() if t["noisy"]}
    truth = {t["pair_id"]: t for t in t1.to_pylist()}
    for r in p1.slice(0, 200).to_pylist():
        assert (r["chosen"] == truth[r["pair_id"]]["better"]) == (r["pair_id"] not in noisy)
    assert set(t1.column("category").to_pylist()) == set(CATEGORIES)
    assert "pair_id" in t1.column_names
    assert "better" not in p1.column_names  # truth kept apart
