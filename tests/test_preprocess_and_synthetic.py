import pyarrow.parquet as pq
import pytest

from synpref.preprocess import ConservationError, Decontaminator, PrepareConfig, check_conservation, prepare
from synpref.schema import PairRecord, records_to_table
from synpref.storage import read_json, write_parquet
from synpref.synthetic import CATEGORIES, generate, label_accuracy

BENCH = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


def test_decontamination_13_gram_caught_12_gram_not():
    d = Decontaminator([BENCH])
    words = BENCH.split()
    assert d.match([{"role": "user", "content": "please: " + " ".join(words[:13]) + " thanks"}]) == 0
    assert d.match([{"role": "user", "content": "please: " + " ".join(words[:12]) + " thanks"}]) is None
    assert d.match([{"role": "assistant", "content": BENCH}, {"role": "user", "content": "hi"}]) is None


def test_prepare_dedups_decontaminates_and_conserves(tmp_path):
    pairs, _ = generate(300, seed=1)
    write_parquet(pairs, tmp_path / "in" / "a.parquet")
    write_parquet(pairs.slice(0, 50), tmp_path / "in" / "b.parquet")  # 50 duplicates across files
    leaked = PairRecord(conversation=[{"role": "user", "content": "Please solve: " + BENCH + " now"}], chosen="a", rejected="b")
    write_parquet(records_to_table([leaked]), tmp_path / "in" / "c.parquet")
    (tmp_path / "bench.txt").write_text("an unrelated benchmark prompt\n" + BENCH + "\n")
    inputs = [str(tmp_path / "in" / f) for f in ("a.parquet", "b.parquet", "c.parquet")]
    m = prepare(inputs, tmp_path / "pool", tmp_path / "bench.txt", PrepareConfig(shard_size=100))
    c = m["counts"]
    assert c == {"input": 351, "pool": 300, "duplicates": 50, "contaminated": 1, "quarantined": 0}
    assert "benchmark prompt #1" in pq.read_table(tmp_path / "pool" / "contaminated.parquet").column("reason")[0].as_py()
    assert sum(s["count"] for s in m["shards"]) == c["pool"] and max(s["count"] for s in m["shards"]) == 100
    assert read_json(tmp_path / "pool" / "manifest.json") == m
    assert pq.read_table(tmp_path / "pool" / "duplicates.parquet").column("reason").to_pylist()[0].startswith("duplicate of")


def test_conservation_checker_catches_a_lost_pair():
    check_conservation(10, {"a": 7, "b": 3})
    with pytest.raises(ConservationError, match="input 10"):
        check_conservation(10, {"a": 7, "b": 2})


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
    assert "pair_id" in t1.column_names and "better" not in p1.column_names  # truth kept apart
