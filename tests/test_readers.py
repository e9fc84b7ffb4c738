"""Readers: every input format → canonical pairs, bad records → quarantine rows with reasons."""

import gzip
import io
import json
import tempfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from synpref.io.readers import read_pairs
from synpref.io.storage import write_parquet
from synpref.schema import QUARANTINE_SCHEMA, compute_pair_id, records_to_table, to_trl

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


# --- fuzzing: whatever the bytes, the readers return rows that can be stored, and never raise ---------

_CHARS = st.characters(codec=None, exclude_categories=())  # lone surrogates, U+2028, NEL, NUL included
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(_CHARS, max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_TEXT = st.text(_CHARS, min_size=1, max_size=30)
_KEYS = st.sampled_from(["prompt", "chosen", "rejected", "conversation", "pair_id", "flipped", "source"])
_RECORD = st.dictionaries(_KEYS, _JSON | _TEXT, max_size=5)
_PAIRISH = st.fixed_dictionaries(
    {"prompt": _TEXT, "chosen": _TEXT, "rejected": _TEXT}, optional={"source": _TEXT, "pair_id": _TEXT, "round": _JSON}
)
_VALID = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(5)]


def _mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid file with bytes flipped, cut or inserted."""
    return st.tuples(st.integers(0, len(valid)), st.binary(max_size=8), st.integers(0, 8)).map(
        lambda t: valid[: t[0]] + t[1] + valid[t[0] + t[2] :]
    )


def _valid_bytes(suffix: str) -> bytes:
    if ".parquet" in suffix:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(_VALID), sink)
        return sink.getvalue()
    if ".csv" in suffix:
        return (
            "prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in _VALID)
        ).encode()
    return "".join(json.dumps(r) + "\n" for r in _VALID).encode()


@st.composite
def _files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz"]))
    kind = draw(st.sampled_from(["bytes", "records", "mutated"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=600))
    elif kind == "records":
        rows = draw(st.lists(_PAIRISH | _RECORD | _JSON, max_size=6))
        data = "\n".join(json.dumps(r) for r in rows).encode()
    else:
        data = draw(_mutated(_valid_bytes(suffix.removesuffix(".gz"))))
    return suffix, gzip.compress(data, mtime=0) if suffix.endswith(".gz") else data


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_files())
def test_readers_never_raise_and_every_row_can_be_stored(file):
    suffix, data = file
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(data)
        res = read_pairs(path)
        assert res.total >= 1
        write_parquet(records_to_table(res.records), Path(d) / "pairs.parquet")
        write_parquet(pa.Table.from_pylist(res.quarantine, schema=QUARANTINE_SCHEMA), Path(d) / "q.parquet")
        for r in res.records:
            assert r.pair_id == compute_pair_id(r.conversation, r.chosen, r.rejected, r.flipped)
        assert all(q["reason"] for q in res.quarantine)


def test_a_jsonl_file_holding_one_json_array_is_read_as_its_records(tmp_path):
    """A common export mistake: ``.jsonl`` that is one JSON array, on one line or pretty-printed."""
    records = [{"prompt": f"question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    (tmp_path / "one-line.jsonl").write_text(json.dumps(records))
    (tmp_path / "pretty.jsonl").write_text("\ufeff\n" + json.dumps(records, indent=2))
    for name in ("one-line.jsonl", "pretty.jsonl"):
        result = read_pairs(tmp_path / name)
        assert len(result.records) == 3 and not result.quarantine, (name, result.quarantine)


def test_a_datasets_save_to_disk_directory_and_its_parquet_shards_are_read_like_any_input(tmp_path):
    """What a user already has: ``Dataset.save_to_disk`` (Arrow files + metadata, the metadata skipped with why)
    and ``to_parquet`` shards in a directory, in TRL's prompt/chosen/rejected form."""
    from synpref.io.readers import scan_inputs

    rows = {"prompt": [f"q {i}?" for i in range(5)], "chosen": [f"yes {i}" for i in range(5)], "rejected": ["no"] * 5}
    ds = datasets.Dataset.from_dict(rows)
    ds.save_to_disk(str(tmp_path / "saved"))
    scan = scan_inputs(tmp_path / "saved")
    assert [Path(f).suffix for f in scan.files] == [".arrow"]
    assert {Path(s["path"]).name for s in scan.skipped} == {"dataset_info.json", "state.json"}
    assert len(read_pairs(scan.files[0]).records) == 5
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    scan = scan_inputs(tmp_path / "dict")
    assert len(scan.files) == 1 and "dataset_dict.json" in {Path(s["path"]).name for s in scan.skipped}
    (tmp_path / "shards").mkdir()
    for i in range(2):
        ds.shard(2, i).to_parquet(str(tmp_path / "shards" / f"train-{i:05d}-of-00002.parquet"))
    files = scan_inputs(tmp_path / "shards").files
    assert sum(len(read_pairs(f).records) for f in files) == 5


class _HubOnDisk(DirFileSystem):
    """A test double of huggingface_hub's ``hf://`` filesystem serving a local directory (no network here)."""

    protocol = "hf"

    def __init__(self, *args, **kwargs):
        super().__init__(path=str(_HubOnDisk.root), fs=LocalFileSystem())

    @classmethod
    def _strip_protocol(cls, path):
        return str(path).removeprefix("hf://")


def test_a_hugging_face_hub_dataset_is_read_through_fsspec_or_refused_in_one_line(tmp_path, monkeypatch):
    """``hf://datasets/<org>/<name>/...`` goes through fsspec like any remote input; offline it is one line naming
    it; it is never a storage root."""
    import fsspec
    from huggingface_hub import constants

    from synpref.io.layout import StorageLayout
    from synpref.io.readers import InputError, scan_inputs
    from synpref.io.storage import StorageError

    uri = "hf://datasets/org/prefs/data"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match=r"^input hf://datasets/org/prefs/data: the Hugging Face Hub is offline"):
        scan_inputs(uri)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    shards = tmp_path / "datasets" / "org" / "prefs" / "data"
    shards.mkdir(parents=True)
    rows = {"prompt": [f"q {i}?" for i in range(4)], "chosen": [f"yes {i}" for i in range(4)], "rejected": ["no"] * 4}
    datasets.Dataset.from_dict(rows).to_parquet(str(shards / "train-00000-of-00001.parquet"))
    monkeypatch.setattr(_HubOnDisk, "root", tmp_path, raising=False)
    fsspec.register_implementation("hf", _HubOnDisk, clobber=True)
    try:
        files = scan_inputs(uri).files
        assert files == [f"{uri}/train-00000-of-00001.parquet"]
        assert len(read_pairs(files[0]).records) == 4
    finally:
        fsspec.register_implementation("hf", "huggingface_hub.HfFileSystem", clobber=True)
    with pytest.raises(StorageError, match="can be an input, not a storage root"):
        StorageLayout(uri)
