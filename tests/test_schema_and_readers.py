import json

import datasets
import pyarrow.parquet as pq
import pytest

from synpref.readers import read_pairs
from synpref.schema import PairRecord, compute_pair_id, flip, records_to_table, to_trl
from synpref.storage import write_parquet

CONV = [{"role": "user", "content": "What is 2+2?"}]


def test_pair_id_is_stable_and_content_sensitive():
    a = PairRecord(conversation=CONV, chosen="4", rejected="5")
    b = PairRecord(conversation=CONV, chosen="4", rejected="5", source="other")
    assert a.pair_id == b.pair_id == compute_pair_id(CONV, "4", "5")
    assert PairRecord(conversation=CONV, chosen="5", rejected="4").pair_id != a.pair_id
    flipped = flip(a.model_dump())
    assert flipped["chosen"] == "5" and flipped["flipped"] is True
    assert PairRecord(**{**flipped, "pair_id": ""}).pair_id == a.pair_id  # identity survives a flip


@pytest.mark.parametrize("bad,msg", [
    ({"conversation": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"}, "user turn"),
    ({"conversation": CONV, "chosen": "   ", "rejected": "b"}, "empty"),
    ({"conversation": CONV, "chosen": "a", "rejected": "a"}, "identical"),
    ({"conversation": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "role"),
])
def test_validation_rejects_bad_records(bad, msg):
    with pytest.raises(Exception, match=msg):
        PairRecord(**bad)


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_each_reader_format_round_trips(tmp_path):
    trl = {"chosen": CONV + [{"role": "assistant", "content": "4"}], "rejected": CONV + [{"role": "assistant", "content": "5"}]}
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
    _write_jsonl(tmp_path / "bad.jsonl", [
        "{not json", {"prompt": "q"}, {"prompt": "q", "chosen": None, "rejected": "b"}, {"prompt": 3, "chosen": "a", "rejected": "b"},
        {"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]},
    ])
    res = read_pairs(tmp_path / "bad.jsonl")
    reasons = [q["reason"] for q in res.quarantine]
    assert len(res.records) == 0 and len(reasons) == 5
    assert "invalid JSON" in reasons[0] and "missing field 'chosen'" in reasons[1] and "None" in reasons[2]
    assert "expected a string" in reasons[3] and "no final assistant turn" in reasons[4]
    (tmp_path / "empty.jsonl").write_text("")
    assert read_pairs(tmp_path / "empty.jsonl").quarantine[0]["reason"].startswith("empty file")
