"""Object-storage helpers: deterministic bytes, directories, JSON."""

from pathlib import Path

import pyarrow as pa

from synpref.io.storage import (
    as_path,
    download_dir,
    list_files,
    read_json,
    read_parquet,
    remove_tree,
    upload_dir,
    write_json,
    write_parquet,
)


def test_parquet_bytes_are_deterministic(tmp_path):
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    write_parquet(table, tmp_path / "one.parquet")
    write_parquet(table, tmp_path / "two.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    assert read_parquet(tmp_path / "one.parquet").equals(table)


def test_json_is_sorted_and_round_trips(tmp_path):
    write_json({"b": 1, "a": "é"}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{\n  "a": "é",\n  "b": 1\n}\n'
    assert read_json(tmp_path / "x.json") == {"a": "é", "b": 1}


def test_writes_create_parent_directories(tmp_path):
    write_json({}, tmp_path / "deep" / "er" / "x.json")
    assert (tmp_path / "deep" / "er" / "x.json").exists()


def test_list_files_is_sorted_filtered_and_empty_for_missing_dirs(tmp_path):
    for name in ("b.parquet", "a.parquet", "c.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_files(tmp_path, (".parquet",))] == ["a.parquet", "b.parquet"]
    assert list_files(tmp_path / "missing") == []


def test_upload_replaces_the_destination_and_download_of_a_local_dir_is_free(tmp_path):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "nested" / "w.bin").write_bytes(b"weights")
    dst = tmp_path / "dst"
    write_json({"stale": True}, dst / "old.json")
    upload_dir(src, dst)
    assert sorted(p.name for p in as_path(dst).rglob("*") if p.is_file()) == ["w.bin"]
    assert download_dir(dst, tmp_path / "scratch") == Path(dst)


def test_plain_paths_become_absolute_file_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(as_path("rel/x.json").path).startswith(str(tmp_path))


def test_remove_tree_tolerates_missing_dirs(tmp_path):
    write_json({}, tmp_path / "t" / "x.json")
    remove_tree(tmp_path / "t")
    remove_tree(tmp_path / "t")
    assert not (tmp_path / "t").exists()
