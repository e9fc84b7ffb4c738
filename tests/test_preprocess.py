import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synpref.io import preprocess, readers
from synpref.io.layout import PoolLayout
from synpref.io.preprocess import (
    ConservationError,
    Decontaminator,
    PairFilter,
    PrepareConfig,
    build_filters,
    check_conservation,
    finalize_pool,
    normalize_file,
    partitions,
    prepare,
)
from synpref.io.storage import read_json, write_parquet
from synpref.schema import PairRecord, records_to_table
from synpref.simulation.synthetic import generate

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
    c = m.counts
    assert c == {"input": 351, "pool": 300, "duplicates": 50, "contaminated": 1, "quarantined": 0}
    assert (
        "benchmark prompt #1" in pq.read_table(tmp_path / "pool" / "contaminated.parquet").column("reason")[0].as_py()
    )
    assert sum(s.count for s in m.shards) == c["pool"]
    assert max(s.count for s in m.shards) == 100
    assert read_json(tmp_path / "pool" / "manifest.json") == m.dump()
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
    assert m.counts["too_short"] == short
    assert pq.read_table(pool.table("too_short")).num_rows == short
    assert m.counts["pool"] == 200 - short


def test_a_mirrored_copy_is_a_duplicate_and_its_pair_is_a_recorded_label_conflict(tmp_path):
    pairs, _ = generate(50, seed=6)
    rows = pairs.to_pylist()
    mirrored = PairRecord(conversation=rows[0]["conversation"], chosen=rows[0]["rejected"], rejected=rows[0]["chosen"])
    write_parquet(pairs, tmp_path / "in" / "a.parquet")
    write_parquet(records_to_table([mirrored]), tmp_path / "in" / "b.parquet")
    inputs = [str(tmp_path / "in" / f) for f in ("a.parquet", "b.parquet")]
    m = prepare(inputs, PoolLayout(tmp_path / "pool"))
    assert m.counts["duplicates"] == 1
    assert m.counts["pool"] == 50
    assert m.label_conflicts == 1  # a side table's row count
    reason = pq.read_table(tmp_path / "pool" / "duplicates.parquet").column("reason")[0].as_py()
    assert reason.startswith(f"mirrored copy of {rows[0]['pair_id']}")
    conflicts = pq.read_table(tmp_path / "pool" / "label_conflicts.parquet").to_pylist()
    assert conflicts == [{"pair_id": rows[0]["pair_id"], "mirrored_copies": [mirrored.pair_id]}]


def _pool_bytes(pool: PoolLayout) -> dict[str, bytes]:
    root = Path(pool.dir.path)
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def _messy_inputs(tmp_path: Path) -> list[str]:
    """Three files with exact copies across files, mirrored copies, a bad line and a leaked prompt."""
    pairs, _ = generate(600, seed=9)
    rows = pairs.to_pylist()
    write_parquet(pairs, tmp_path / "in" / "a.parquet")
    with open(tmp_path / "in" / "b.jsonl", "w") as f:
        for r in rows[:120]:  # exact copies of a.parquet
            f.write(json.dumps({"conversation": r["conversation"], "chosen": r["chosen"], "rejected": r["rejected"]}))
            f.write("\n")
        f.write("not json\n")
        for r in rows[200:260]:  # mirrored copies
            f.write(json.dumps({"conversation": r["conversation"], "chosen": r["rejected"], "rejected": r["chosen"]}))
            f.write("\n")
    leaked = PairRecord(conversation=[{"role": "user", "content": "Q: " + BENCH}], chosen="a", rejected="b")
    write_parquet(records_to_table([leaked, leaked]), tmp_path / "in" / "c.parquet")
    (tmp_path / "bench.txt").write_text(BENCH + "\n")
    return [str(tmp_path / "in" / f) for f in ("a.parquet", "b.jsonl", "c.parquet")]


def _rows(path: Path, key: str = "pair_id") -> list[dict]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: (r[key], r.get("reason") or ""))


def _pool_rows(pool: PoolLayout) -> dict:
    root = Path(pool.dir.path)
    shards = [r for p in sorted(root.glob("shard-*.parquet")) for r in pq.read_table(p).to_pylist()]
    tables = ("duplicates", "contaminated", "label_conflicts")
    return {
        "pool": sorted(shards, key=lambda r: r["pair_id"]),
        **{t: _rows(root / f"{t}.parquet") for t in tables},
        "quarantine": pq.read_table(root / "quarantine.parquet").to_pylist(),
        "counts": read_json(pool.manifest)["counts"],
    }


def test_partitioned_map_reduce_keeps_the_same_pairs_for_the_same_reasons(tmp_path, monkeypatch):
    inputs = _messy_inputs(tmp_path)
    one = prepare(inputs, PoolLayout(tmp_path / "one"), tmp_path / "bench.txt", PrepareConfig(shard_size=170))
    assert one.counts == {"input": 783, "pool": 600, "duplicates": 181, "contaminated": 1, "quarantined": 1}
    monkeypatch.setattr(preprocess, "PARTITION_BYTES", 10_000)  # → many partitions
    many = prepare(inputs, PoolLayout(tmp_path / "many"), tmp_path / "bench.txt", PrepareConfig(shard_size=170))
    assert len(partitions(PoolLayout(tmp_path / "many"))) >= 10
    assert _pool_rows(PoolLayout(tmp_path / "one")) == _pool_rows(PoolLayout(tmp_path / "many"))
    assert many.label_conflicts == 60
    assert all(s.count <= 170 for s in many.shards)


def test_a_large_json_lines_file_read_in_ranges_gives_the_same_records(tmp_path, monkeypatch):
    """Ranges cut mid-line: every line belongs to exactly one range, with its own line number."""
    pairs, _ = generate(400, seed=3)
    lines = [json.dumps({k: r[k] for k in ("conversation", "chosen", "rejected")}) for r in pairs.to_pylist()]
    lines[7] = "{broken"
    lines[150] = ""
    lines[151] = "[1, 2]"
    lines[300] = json.dumps({"prompt": "q", "chosen": "x" * 60_000, "rejected": "y"})  # over the limit set below
    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 20_000)
    data = ("\ufeff" + "\n".join(lines) + "\n").encode()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.jsonl").write_bytes(data)
    whole = prepare([str(tmp_path / "in" / "big.jsonl")], PoolLayout(tmp_path / "whole"))
    monkeypatch.setattr(readers, "SPLIT_BYTES", len(data) // 7)
    assert len(readers.splits(tmp_path / "in" / "big.jsonl")) >= 7
    split = prepare([str(tmp_path / "in" / "big.jsonl")], PoolLayout(tmp_path / "split"), workers=2)
    assert _pool_bytes(PoolLayout(tmp_path / "whole")) == _pool_bytes(PoolLayout(tmp_path / "split"))
    assert (
        whole.counts
        == split.counts
        == {"input": 399, "pool": 396, "duplicates": 0, "contaminated": 0, "quarantined": 3}
    )
    quarantine = pq.read_table(tmp_path / "split" / "quarantine.parquet").to_pylist()
    assert [q["record_index"] for q in quarantine] == [7, 151, 300]
    assert "over the limit" in quarantine[2]["reason"]


def test_the_dag_steps_one_task_each_give_the_cli_pool(tmp_path, monkeypatch):
    """list → normalize per file → reduce per partition → write_pool, as the DAG maps them."""
    inputs = _messy_inputs(tmp_path)
    monkeypatch.setattr(preprocess, "PARTITION_BYTES", 50_000)
    cfg = PrepareConfig(shard_size=100)
    prepare(inputs, PoolLayout(tmp_path / "cli"), tmp_path / "bench.txt", cfg)
    pool = PoolLayout(tmp_path / "dag")
    preprocess.clear_staging(pool)
    preprocess.plan_run(pool, inputs)
    for i, f in reversed(list(enumerate(inputs))):  # task order does not matter
        normalize_file(f, i, pool)
    for p in reversed(partitions(pool)):
        preprocess.reduce_partition(pool, p, tmp_path / "bench.txt", cfg)
    manifest = preprocess.write_pool(pool, cfg)
    assert manifest.counts["contaminated"] == 1
    assert _pool_bytes(pool) == _pool_bytes(PoolLayout(tmp_path / "cli"))
    normalize_file(inputs[1], 1, pool)  # a retried map task rewrites only its own files, the same bytes
    preprocess.reduce_partition(pool, 0, tmp_path / "bench.txt", cfg)
    preprocess.write_pool(pool, cfg)
    assert _pool_bytes(pool) == _pool_bytes(PoolLayout(tmp_path / "cli"))


def test_decontamination_names_the_lowest_matching_prompt():
    d = Decontaminator(["unrelated words only here", BENCH + " extra", "zero " + BENCH])
    assert d.match([{"role": "user", "content": BENCH}]) == 1
    assert len(d) > 0 and d.grams.dtype.itemsize == 8  # compact: 8 bytes per n-gram
