"""A corpus of bad input, each case next to good pairs: the good rows survive, the bad ones are quarantined
with a reason (or skipped with a reason), counts conserve, and an unusable input is a one-line error with
a non-zero exit, never a traceback. Readers and ``synpref prepare`` here; intake and endpoints below."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synpref.cli import main
from synpref.io import readers
from synpref.io.layout import PoolLayout
from synpref.io.storage import read_json, read_parquet
from synpref.simulation.synthetic import generate

GOOD = 40  # good pairs in good.jsonl next to every case


def _pairs(n: int, seed: int) -> list[dict]:
    rows = generate(n, seed=seed)[0].to_pylist()
    return [{k: r[k] for k in ("conversation", "chosen", "rejected")} for r in rows]


def _pcr(i: int) -> dict:
    return {"prompt": f"Question number {i}: what is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)}


def _jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _csv(header: str, rows: list[str], bom: bool = False) -> bytes:
    return ("\ufeff" * bom + header + "\n" + "".join(r + "\n" for r in rows)).encode()


GOOD3 = [_pcr(i) for i in range(1000, 1003)]
BIG = "x" * (200 * 1024)


@dataclass
class Case:
    name: str
    file: str  # name of the bad file ("" = make() builds the directory itself)
    make: Callable[[Path], bytes | None]
    pool: int  # pairs from the bad file that must reach the pool
    quarantined: int
    skipped: int = 0
    duplicates: int = 0


def _symlink_loop(d: Path) -> None:
    os.symlink(d / "loop_b.jsonl", d / "loop_a.jsonl")
    os.symlink(d / "loop_a.jsonl", d / "loop_b.jsonl")


def _truncated_gz(d: Path) -> bytes:
    data = gzip.compress(_jsonl([_pcr(i) for i in range(2000, 2400)]))
    return data[: len(data) // 2]


def _zst(rows: list) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(_jsonl(rows))
    return sink.getvalue().to_pybytes()


def _deep(n: int) -> str:
    return '{"prompt": "q", "chosen": ' + "[" * n + "]" * n + ', "rejected": "b"}'


PARQUET_GOOD = pa.Table.from_pylist(GOOD3)

CASES = [
    # --- Parquet ---
    Case("parquet_not_parquet", "x.parquet", lambda d: b"this is not parquet", 0, 1),
    Case("parquet_truncated", "x.parquet", lambda d: _parquet(PARQUET_GOOD)[:-40], 0, 1),
    Case("parquet_empty_bytes", "x.parquet", lambda d: b"", 0, 1),
    Case("parquet_good", "x.parquet", lambda d: _parquet(PARQUET_GOOD), 3, 0),
    Case(
        "parquet_wrong_types",
        "x.parquet",
        lambda d: _parquet(pa.table({"prompt": ["q1", "q2"], "chosen": [1, 2], "rejected": ["a", "b"]})),
        0,
        2,
    ),
    Case("parquet_no_rejected", "x.parquet", lambda d: _parquet(pa.table({"prompt": ["q"], "chosen": ["a"]})), 0, 1),
    Case(
        "parquet_conversation_of_strings",
        "x.parquet",
        lambda d: _parquet(pa.table({"conversation": [["hi"]], "chosen": ["a"], "rejected": ["b"]})),
        0,
        1,
    ),
    Case("parquet_zero_rows", "x.parquet", lambda d: _parquet(PARQUET_GOOD.slice(0, 0)), 0, 1),
    # --- CSV ---
    Case(
        "csv_extra_cells",
        "x.csv",
        lambda d: _csv("prompt,chosen,rejected", ["q1,a,b", "q2,a,b,EXTRA", "q3,a,b"]),
        2,
        1,
    ),
    Case("csv_missing_cells", "x.csv", lambda d: _csv("prompt,chosen,rejected", ["q1,a,b", "q2,a"]), 1, 1),
    Case("csv_cell_over_128k", "x.csv", lambda d: _csv("prompt,chosen,rejected", [f"q1,{BIG},b", "q2,a,b"]), 2, 0),
    Case("csv_bom", "x.csv", lambda d: _csv("prompt,chosen,rejected", ["q1,a,b", "q2,a,b"], bom=True), 2, 0),
    Case("csv_header_only", "x.csv", lambda d: _csv("prompt,chosen,rejected", []), 0, 1),
    Case("csv_repeated_header", "x.csv", lambda d: _csv("prompt,chosen,chosen", ["q,a,b"]), 0, 1),
    Case("csv_unterminated_quote", "x.csv", lambda d: _csv("prompt,chosen,rejected", ["q1,a,b", 'q2,"a,b']), 1, 1),
    Case(
        "csv_invalid_utf8",
        "x.csv",
        lambda d: _csv("prompt,chosen,rejected", ["q1,a,b"]) + b"q2,\xff\xfe bad,b\nq3,a,b\n",
        2,
        1,
    ),
    Case("csv_nul_byte", "x.csv", lambda d: _csv("prompt,chosen,rejected", ["q1,a\x00a,b", "q2,a,b"]), 2, 0),
    Case("csv_crlf", "x.csv", lambda d: b"prompt,chosen,rejected\r\nq1,a,b\r\nq2,a,b\r\n", 2, 0),
    Case("csv_blank_lines", "x.csv", lambda d: _csv("prompt,chosen,rejected", ["q1,a,b", "", "q2,a,b", ""]), 2, 0),
    Case(
        "csv_json_cell_broken",
        "x.csv",
        lambda d: _csv("conversation,chosen,rejected", ['"[{""role"": ""user"", ""content"": ""q""",a,b']),
        0,
        1,
    ),
    Case(
        "csv_messages_cell",
        "x.csv",
        lambda d: _csv("prompt,chosen,rejected", ['"[{""role"": ""user"", ""content"": ""hi""}]",a,b']),
        1,
        0,
    ),
    Case("csv_empty_file", "x.csv", lambda d: b"", 0, 1),
    # --- JSON lines ---
    Case("jsonl_nested_100k", "x.jsonl", lambda d: _jsonl(GOOD3[:1] + [_deep(100_000)]), 1, 1),
    Case("jsonl_nested_40", "x.jsonl", lambda d: _jsonl(GOOD3[:1] + [_deep(40)]), 1, 1),
    Case(
        "jsonl_5000_digit_int",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:1] + ['{"prompt": "q", "chosen": "a", "rejected": "b", "round": ' + "9" * 5000 + "}"]),
        1,
        1,
    ),
    Case(
        "jsonl_long_float",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:1] + ['{"prompt": "q", "chosen": "a", "rejected": "b", "x": 1.' + "5" * 200 + "}"]),
        1,
        1,
    ),
    Case(
        "jsonl_lone_surrogate_escape",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:2] + ['{"prompt": "q", "chosen": "a\\ud800", "rejected": "b"}']),
        2,
        1,
    ),
    Case(
        "jsonl_u2028_in_string",
        "x.jsonl",
        lambda d: _jsonl([{"prompt": "a\u2028b", "chosen": "c\u2029d", "rejected": "e\x85f"}]),
        1,
        0,
    ),
    Case("jsonl_bom", "x.jsonl", lambda d: b"\xef\xbb\xbf" + _jsonl(GOOD3), 3, 0),
    Case(
        "jsonl_invalid_utf8_line",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:2]) + b'{"prompt": "q\xc3\x28", "chosen": "a", "rejected": "b"}\n',
        2,
        1,
    ),
    Case("jsonl_crlf", "x.jsonl", lambda d: _jsonl(GOOD3).replace(b"\n", b"\r\n"), 3, 0),
    Case("jsonl_blank_and_space_lines", "x.jsonl", lambda d: _jsonl([GOOD3[0], "", "   ", GOOD3[1], "\t"]), 2, 0),
    Case("jsonl_truncated_last_line", "x.jsonl", lambda d: _jsonl(GOOD3[:2]) + b'{"prompt": "q", "cho', 2, 1),
    Case("jsonl_not_json", "x.jsonl", lambda d: _jsonl(GOOD3[:1] + ["{oops", "plain text"]), 1, 2),
    Case(
        "jsonl_nan",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:1] + ['{"prompt": "q", "chosen": "a", "rejected": "b", "round": NaN}']),
        1,
        1,
    ),
    Case(
        "jsonl_infinity",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:1] + ['{"prompt": "q", "chosen": "a", "rejected": Infinity}']),
        1,
        1,
    ),
    Case(
        "jsonl_scalars_and_lists",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:1] + ['"a string"', "42", "null", "[1, 2]", "true"]),
        1,
        5,
    ),
    Case("jsonl_utf16_bom", "x.jsonl", lambda d: _jsonl(GOOD3).decode().encode("utf-16"), 3, 0),
    Case(
        "jsonl_nul_in_string",
        "x.jsonl",
        lambda d: _jsonl([{"prompt": "q\u0000", "chosen": "a", "rejected": "b"}]),
        1,
        0,
    ),
    Case(
        "jsonl_duplicate_keys",
        "x.jsonl",
        lambda d: _jsonl(['{"prompt": "q", "chosen": "x", "chosen": "a", "rejected": "b"}']),
        1,
        0,
    ),
    Case("jsonl_unknown_fields", "x.jsonl", lambda d: _jsonl([{**GOOD3[0], "score": 3, "meta": {"a": 1}}]), 1, 0),
    Case("jsonl_only_whitespace", "x.jsonl", lambda d: b"\n \n\t\n", 0, 1),
    Case("jsonl_empty", "x.jsonl", lambda d: b"", 0, 1),
    # --- records that are not pairs ---
    Case(
        "record_identical_responses",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:1] + [{"prompt": "q", "chosen": "a", "rejected": "a"}]),
        1,
        1,
    ),
    Case(
        "record_blank_response",
        "x.jsonl",
        lambda d: _jsonl(GOOD3[:1] + [{"prompt": "q", "chosen": "  ", "rejected": "a"}]),
        1,
        1,
    ),
    Case(
        "record_ends_with_assistant",
        "x.jsonl",
        lambda d: _jsonl([{"conversation": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"}]),
        0,
        1,
    ),
    Case(
        "record_bad_role",
        "x.jsonl",
        lambda d: _jsonl([{"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}]),
        0,
        1,
    ),
    Case(
        "record_content_not_string",
        "x.jsonl",
        lambda d: _jsonl([{"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"}]),
        0,
        1,
    ),
    Case("record_bad_provenance", "x.jsonl", lambda d: _jsonl([{**GOOD3[0], "provenance": "aliens"}]), 0, 1),
    Case(
        "record_attributes_wrong_type",  # the pair is kept, the malformed attribute dropped (repaired.parquet)
        "x.jsonl",
        lambda d: _jsonl([{**GOOD3[0], "desired_attributes": "short"}]),
        1,
        0,
    ),
    Case(
        "record_hh_mismatch",
        "x.jsonl",
        lambda d: _jsonl([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}]),
        0,
        1,
    ),
    Case("record_unknown_format", "x.jsonl", lambda d: _jsonl([{"chosen": "a", "rejected": "b"}]), 0, 1),
    Case("record_missing_rejected", "x.jsonl", lambda d: _jsonl([{"prompt": "q", "chosen": "a"}]), 0, 1),
    Case("record_flipped_as_text", "x.jsonl", lambda d: _jsonl([{**GOOD3[0], "flipped": "false"}]), 1, 0),
    # --- whole JSON documents ---
    Case("json_array_with_scalars", "x.json", lambda d: json.dumps([GOOD3[0], 1, "s", None]).encode(), 1, 3),
    Case("json_single_object_pretty", "x.json", lambda d: json.dumps(GOOD3[0], indent=2).encode(), 1, 0),
    Case("json_array_truncated", "x.json", lambda d: json.dumps(GOOD3)[:-10].encode(), 0, 1),
    Case("json_lines_in_json_file", "x.json", lambda d: _jsonl(GOOD3), 3, 0),
    Case(
        "json_invalid_utf8",
        "x.json",
        lambda d: b"[" + json.dumps(GOOD3[0]).encode() + b', {"prompt": "\xff", "chosen": "a", "rejected": "b"}]',
        1,
        1,
    ),
    # --- compressed ---
    Case("jsonl_gz", "x.jsonl.gz", lambda d: gzip.compress(_jsonl(GOOD3)), 3, 0),
    Case("jsonl_gz_truncated", "x.jsonl.gz", _truncated_gz, -1, -1),  # some survive; the damage is recorded
    Case("jsonl_gz_not_gzip", "x.jsonl.gz", lambda d: b"plain text, not gzip", 0, 1),
    Case("jsonl_zst", "x.jsonl.zst", lambda d: _zst(GOOD3), 3, 0),
    Case("jsonl_zst_corrupt", "x.jsonl.zst", lambda d: _zst(GOOD3)[:-8], 0, 1),
    Case("csv_gz", "x.csv.gz", lambda d: gzip.compress(_csv("prompt,chosen,rejected", ["q1,a,b"])), 1, 0),
    # --- paths ---
    Case("txt_file_skipped", "notes.txt", lambda d: b"some notes", 0, 0, skipped=1),
    Case("hidden_file_skipped", ".DS_Store", lambda d: b"\x00\x01", 0, 0, skipped=1),
    Case("symlink_loop_skipped", "", _symlink_loop, 0, 0, skipped=2),
    Case("dangling_symlink_skipped", "", lambda d: os.symlink(d / "gone.jsonl", d / "link.jsonl"), 0, 0, skipped=1),
    Case("dir_symlink_loop_skipped", "", lambda d: os.symlink(d, d / "again"), 0, 0, skipped=1),
    Case(
        "nested_directory",
        "",
        lambda d: (d / "sub").mkdir() or (d / "sub" / "y.jsonl").write_bytes(_jsonl(GOOD3)),
        3,
        0,
    ),
    # --- identity ---
    Case(
        "supplied_pair_id_reused",
        "x.jsonl",
        lambda d: _jsonl([{**r, "pair_id": "same-id"} for r in GOOD3]),
        3,
        0,
    ),
    Case("exact_duplicates", "x.jsonl", lambda d: _jsonl([GOOD3[0], GOOD3[0], GOOD3[1]]), 2, 0, duplicates=1),
    Case(
        "mirrored_copy",
        "x.jsonl",
        lambda d: _jsonl([GOOD3[0], {**GOOD3[0], "chosen": GOOD3[0]["rejected"], "rejected": GOOD3[0]["chosen"]}]),
        1,
        0,
        duplicates=1,
    ),
]


def _prepare(tmp_path: Path, case: Case) -> tuple[int, dict, Path]:
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.jsonl").write_bytes(_jsonl(_pairs(GOOD, seed=7)))
    data = case.make(d)
    if case.file:
        (d / case.file).write_bytes(data)
    pool = tmp_path / "pool"
    code = main(["prepare", "--input", str(d), "--out", str(pool), "--shard-size", "100"])
    return code, read_json(PoolLayout(pool).manifest), pool


def test_the_corpus_has_at_least_sixty_reader_cases():
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_quarantined_and_the_good_rows_survive(tmp_path, case, capsys):
    code, manifest, pool = _prepare(tmp_path, case)
    counts = manifest["counts"]
    assert code == 0
    assert counts["input"] == counts["pool"] + counts["duplicates"] + counts["contaminated"] + counts["quarantined"]
    if case.pool >= 0:
        assert counts["pool"] == GOOD + case.pool
        assert counts["quarantined"] == case.quarantined
    else:
        assert GOOD < counts["pool"] < GOOD + 400
        assert counts["quarantined"] >= 1
    assert counts["duplicates"] == case.duplicates
    assert len(manifest["skipped_files"]) == case.skipped
    assert all(s["reason"] for s in manifest["skipped_files"])
    quarantine = read_parquet(PoolLayout(pool).quarantine).to_pylist()
    assert len(quarantine) == counts["quarantined"]
    assert all(q["reason"] and q["source_file"] for q in quarantine)


def test_a_pair_is_never_lost_for_a_malformed_optional_field(tmp_path):
    """Attribute values outside their vocabulary or of the wrong type, a round that is not text: the pair is kept
    without that field, and ``repaired.parquet`` (and the manifest) say which pair lost what and why."""
    bad_fields = [
        {"preference_objectivity": "sometimes"},
        {"desired_attributes": "short"},
        {"controversiality": "extreme", "round": {"a": 1}},
    ]
    case = Case(
        "optional_fields", "x.jsonl", lambda d: _jsonl([{**GOOD3[i], **f} for i, f in enumerate(bad_fields)]), 3, 0
    )
    code, manifest, pool = _prepare(tmp_path, case)
    assert code == 0 and manifest["counts"]["quarantined"] == 0 and manifest["counts"]["pool"] == GOOD + 3
    repaired = read_parquet(PoolLayout(pool).repaired).to_pylist()
    assert manifest["repaired"] == len(repaired) == 3
    reasons = " | ".join(r["reason"] for r in repaired)
    for field in ("preference_objectivity", "desired_attributes", "controversiality", "round"):
        assert f"dropped {field}" in reasons
    rows = {r["chosen"]: r for s in PoolLayout(pool).shards() for r in read_parquet(s).to_pylist()}
    kept = [rows[g["chosen"]] for g in GOOD3[:3] if g["chosen"] in rows]
    assert len(kept) == 3 and all(r["preference_objectivity"] != "sometimes" for r in kept)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_nul_characters_are_removed_from_the_texts_and_the_pair_kept(tmp_path, suffix):
    """A NUL in a text (a corrupted or binary export) is removed, the pair kept, and the repair recorded."""
    rows = [
        {"prompt": "q1\x00", "chosen": "a\x00\x00a", "rejected": "b"},
        {"prompt": "q2", "chosen": "a", "rejected": "b"},
    ]
    make = {
        "csv": lambda d: _csv("prompt,chosen,rejected", [",".join(r.values()) for r in rows]),
        "jsonl": lambda d: _jsonl(rows),
    }[suffix]
    code, manifest, pool = _prepare(tmp_path, Case("nul", f"x.{suffix}", make, 2, 0))
    assert code == 0 and manifest["repaired"] == 1
    (repaired,) = read_parquet(PoolLayout(pool).repaired).to_pylist()
    assert "removed 1 NUL character(s) from conversation[0]" in repaired["reason"]
    assert "removed 2 NUL character(s) from chosen" in repaired["reason"]
    texts = [
        t for s in PoolLayout(pool).shards() for r in read_parquet(s).to_pylist() for t in (r["chosen"], r["rejected"])
    ]
    assert "aa" in texts and not any("\x00" in t for t in texts)


def test_a_supplied_id_is_never_trusted_but_kept_as_source_id(tmp_path):
    _, _, pool = _prepare(tmp_path, next(c for c in CASES if c.name == "supplied_pair_id_reused"))
    rows = [r for s in PoolLayout(pool).shards() for r in read_parquet(s).to_pylist()]
    mine = [r for r in rows if r["source_id"] == "same-id"]
    assert len(mine) == 3
    assert len({r["pair_id"] for r in mine}) == 3


def test_text_that_is_not_utf8_never_enters_the_pool_as_replacement_characters(tmp_path):
    _, _, pool = _prepare(tmp_path, next(c for c in CASES if c.name == "jsonl_invalid_utf8_line"))
    rows = [r for s in PoolLayout(pool).shards() for r in read_parquet(s).to_pylist()]
    assert not any("\ufffd" in json.dumps(r, ensure_ascii=False) for r in rows)
    reasons = [q["reason"] for q in read_parquet(PoolLayout(pool).quarantine).to_pylist()]
    assert any("not UTF-8" in r and "line 3" in r for r in reasons)


def test_the_quarantine_row_names_the_line(tmp_path):
    _, _, pool = _prepare(tmp_path, next(c for c in CASES if c.name == "jsonl_not_json"))
    reasons = sorted(q["reason"] for q in read_parquet(PoolLayout(pool).quarantine).to_pylist())
    assert reasons[0].startswith("line 2: invalid JSON")


def test_an_oversized_record_is_quarantined_without_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 4096)
    (tmp_path / "x.jsonl").write_bytes(_jsonl([GOOD3[0], {**GOOD3[1], "chosen": "y" * 10_000}]))
    res = readers.read_pairs(tmp_path / "x.jsonl")
    assert len(res.records) == 1
    assert "over the limit" in res.quarantine[0]["reason"]


# --- unusable inputs: one line on stderr, exit 2, nothing written --------------------------------------


def _run_unusable(tmp_path: Path, capsys, args: list[str]) -> str:
    code = main(["prepare", *args, "--out", str(tmp_path / "pool")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "Traceback" not in err
    assert not PoolLayout(tmp_path / "pool").manifest.exists()
    return err


def test_a_missing_input_is_one_line(tmp_path, capsys):
    assert "input not found" in _run_unusable(tmp_path, capsys, ["--input", str(tmp_path / "nope")])


def test_an_empty_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert "no readable input file" in _run_unusable(tmp_path, capsys, ["--input", str(tmp_path / "in")])


def test_a_directory_without_supported_files_names_them(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.txt").write_text("x")
    err = _run_unusable(tmp_path, capsys, ["--input", str(tmp_path / "in")])
    assert "data.txt" in err
    assert "unsupported file type" in err


def test_an_input_whose_every_row_is_rejected_fails_with_the_counts(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_text("prompt,chosen,rejected\nq,a,a\nq,,b\n")
    err = _run_unusable(tmp_path, capsys, ["--input", str(tmp_path / "in")])
    assert "no usable pair" in err
    assert "quarantined 2" in err


def test_a_missing_benchmark_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(_jsonl(GOOD3))
    err = _run_unusable(tmp_path, capsys, ["--input", str(tmp_path / "in"), "--benchmark", str(tmp_path / "b.txt")])
    assert "b.txt" in err
    assert not (tmp_path / "pool").exists()


def test_a_dangling_input_symlink_is_one_line(tmp_path, capsys):
    os.symlink(tmp_path / "gone", tmp_path / "link")
    assert "dangling" in _run_unusable(tmp_path, capsys, ["--input", str(tmp_path / "link")])
