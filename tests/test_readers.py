"""Readers: every input format → canonical pairs, bad records → quarantine rows with reasons."""

import json

import datasets

from synpref.readers import read_pairs
from synpref.schema import compute_pair_id, records_to_table, to_trl
from synpref.storage import write_parquet

CONV = [{"role": "user", "content": "What is 2+2?"}]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_each_reader_format_round_trips(tmp_path):
    trl = {
        "chosen": CONV + [{"role": "assistant", "content": "4"}],
        "rejected": CONV + [{"role": "assistant", "content": "5"}],
    }
    pcr = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
    hh = {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"}
    for name, row in (("trl", trl), ("pcr", pcr), ("hh", hh)):
        _write_jsonl(tmp_path / f"{name}.jsonl", [row])
        res = read_pairs(tmp_path / f"{name}.jsonl")
        assert not res.quarantine, name
        rec = res.records[0]
        assert (rec.conversation[0].content, rec.chosen, rec.rejected) == ("What is 2+2?", "4", "5")
        assert rec.pair_id == compute_pair_id(CONV, "4", "5")
    # our Parquet → readers → same records; TRL export loads with datasets
    recs = read_pairs(tmp_path / "trl.jsonl").records
    write_parquet(records_to_table(recs), tmp_path / "ours.parquet")
    assert read_pairs(tmp_path / "ours.parquet").records[0].model_dump() == recs[0].model_dump()
    write_parquet(to_trl(records_to_table(recs)), tmp_path / "trl.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "trl.parquet"), split="train")
    assert ds[0]["chosen"][-1] == {"role": "assistant", "content": "4"}
    # CSV with JSON-encoded message cells
    (tmp_path / "x.csv").write_text('prompt,chosen,rejected\n"What is 2+2?",4,5\n')
    assert read_pairs(tmp_path / "x.csv").records[0].pair_id == recs[0].pair_id


def test_malformed_records_are_quarantined_with_reasons(tmp_path):
    _write_jsonl(
        tmp_path / "bad.jsonl",
        [
            "{not json",
            {"prompt": "q"},
            {"prompt": "q", "chosen": None, "rejected": "b"},
            {"prompt": 3, "chosen": "a", "rejected": "b"},
            {"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]},
        ],
    )
    res = read_pairs(tmp_path / "bad.jsonl")
    reasons = [q["reason"] for q in res.quarantine]
    assert len(res.records) == 0
    assert len(reasons) == 5
    assert "invalid JSON" in reasons[0]
    assert "missing field 'chosen'" in reasons[1]
    assert "None" in reasons[2]
    assert "expected a string" in reasons[3]
    assert "no final assistant turn" in reasons[4]
    (tmp_path / "empty.jsonl").write_text("")
    assert read_pairs(tmp_path / "empty.jsonl").quarantine[0]["reason"].startswith("empty file")
