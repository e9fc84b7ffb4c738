import pyarrow.parquet as pq
import pytest

from synpref.layout import PoolLayout
from synpref.preprocess import (
    ConservationError,
    Decontaminator,
    PairFilter,
    PrepareConfig,
    build_filters,
    check_conservation,
    finalize_pool,
    normalize_file,
    prepare,
)
from synpref.schema import PairRecord, records_to_table
from synpref.storage import read_json, write_parquet
from synpref.synthetic import generate

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
    leaked = PairRecord(
        conversation=[{"role": "user", "content": "Please solve: " + BENCH + " now"}], chosen="a", rejected="b"
    )
    write_parquet(records_to_table([leaked]), tmp_path / "in" / "c.parquet")
    (tmp_path / "bench.txt").write_text("an unrelated benchmark prompt\n" + BENCH + "\n")
    inputs = [str(tmp_path / "in" / f) for f in ("a.parquet", "b.parquet", "c.parquet")]
    m = prepare(inputs, PoolLayout(tmp_path / "pool"), tmp_path / "bench.txt", PrepareConfig(shard_size=100))
    c = m["counts"]
    assert c == {"input": 351, "pool": 300, "duplicates": 50, "contaminated": 1, "quarantined": 0}
    assert (
        "benchmark prompt #1" in pq.read_table(tmp_path / "pool" / "contaminated.parquet").column("reason")[0].as_py()
    )
    assert sum(s["count"] for s in m["shards"]) == c["pool"]
    assert max(s["count"] for s in m["shards"]) == 100
    assert read_json(tmp_path / "pool" / "manifest.json") == m
    assert (
        pq.read_table(tmp_path / "pool" / "duplicates.parquet")
        .column("reason")
        .to_pylist()[0]
        .startswith("duplicate of")
    )


def test_conservation_checker_catches_a_lost_pair():
    check_conservation(10, {"a": 7, "b": 3})
    with pytest.raises(ConservationError, match="input 10"):
        check_conservation(10, {"a": 7, "b": 2})


class ShortAnswer(PairFilter):
    """A toy pre-processing rule (one class): drop pairs whose chosen response has fewer than 5 words."""

    name, decision = "too_short", "too_short"

    def reason(self, row: dict, source_file: str) -> str | None:
        return "chosen response under 5 words" if len(row["chosen"].split()) < 5 else None


def test_a_new_rule_is_one_class_with_its_own_table_count_and_conservation(tmp_path):
    pairs, _ = generate(200, seed=4)
    write_parquet(pairs, tmp_path / "in.parquet")
    pool = PoolLayout(tmp_path / "pool")
    normalize_file(str(tmp_path / "in.parquet"), 0, pool)
    short = sum(len(c.split()) < 5 for c in pairs.column("chosen").to_pylist())
    m = finalize_pool(pool, None, PrepareConfig(), build_filters(PrepareConfig()) + [ShortAnswer()])
    assert 0 < short < 200
    assert m["counts"]["too_short"] == short
    assert pq.read_table(pool.table("too_short")).num_rows == short
    assert m["counts"]["pool"] == 200 - short


def test_a_mirrored_copy_is_a_duplicate_and_its_pair_is_a_recorded_label_conflict(tmp_path):
    pairs, _ = generate(50, seed=6)
    rows = pairs.to_pylist()
    mirrored = PairRecord(conversation=rows[0]["conversation"], chosen=rows[0]["rejected"], rejected=rows[0]["chosen"])
    write_parquet(pairs, tmp_path / "in" / "a.parquet")
    write_parquet(records_to_table([mirrored]), tmp_path / "in" / "b.parquet")
    inputs = [str(tmp_path / "in" / f) for f in ("a.parquet", "b.parquet")]
    m = prepare(inputs, PoolLayout(tmp_path / "pool"))
    assert m["counts"]["duplicates"] == 1
    assert m["counts"]["pool"] == 50
    assert m["label_conflicts"] == 1
    reason = pq.read_table(tmp_path / "pool" / "duplicates.parquet").column("reason")[0].as_py()
    assert reason.startswith(f"mirrored copy of {rows[0]['pair_id']}")
    conflicts = pq.read_table(tmp_path / "pool" / "label_conflicts.parquet").to_pylist()
    assert conflicts == [{"pair_id": rows[0]["pair_id"], "mirrored_copies": [mirrored.pair_id]}]
