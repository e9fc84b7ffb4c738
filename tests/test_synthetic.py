"""Synthetic data with a hidden truth."""

from synpref.simulation.evaluation import label_accuracy
from synpref.simulation.synthetic import CATEGORIES, generate


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


def test_generate_disjoint_shares_no_pair_in_either_orientation():
    from synpref.simulation.synthetic import content_key, generate_disjoint

    first, _ = generate(400, seed=3, noise=0.3)
    second, truth = generate_disjoint(400, [first], seed=4, noise=0.3)
    assert second.num_rows == 400
    assert truth.num_rows == 400
    assert not {content_key(r) for r in first.to_pylist()} & {content_key(r) for r in second.to_pylist()}


def test_the_demo_sets_are_disjoint(tmp_path, capsys):
    """The demo builds its sets with `synpref synth --disjoint-from` the earlier ones (scripts/demo.py)."""
    from synpref.cli import main
    from synpref.io.storage import read_parquet
    from synpref.simulation.synthetic import content_key

    made = []
    for name, seed in (("gold", 1), ("pool", 3), ("wild", 4)):
        out = tmp_path / f"{name}.parquet"
        args = ["synth", "--n", "300", "--seed", str(seed), "--out", str(out), "--truth", str(tmp_path / f"t-{name}")]
        assert main(args + [a for m in made for a in ("--disjoint-from", str(m))]) == 0
        made.append(out)
    keys = [{content_key(r) for r in read_parquet(m).to_pylist()} for m in made]
    assert not keys[0] & keys[2]
    assert not keys[1] & keys[2]
    assert not keys[0] & keys[1]
