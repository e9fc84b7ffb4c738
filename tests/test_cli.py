"""The ``synpref`` command line, in process: flags from the settings, steps by hand on the same layout."""

import json

import pytest

from synpref.cli import build_parser, main
from synpref.io.layout import PoolLayout


def test_help_lists_every_setting_with_its_title(capsys):
    with pytest.raises(SystemExit):
        main(["stage1", "--help"])
    out = capsys.readouterr().out
    for flag in ("--k-max", "--rm-lr", "--merge-policy", "--spot-check", "--seed"):
        assert flag in out
    assert "Neighbours pulled" in out


def test_invalid_choice_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stage2", "--root", "r", "--input", "i", "--out", "o", "--recycle-policy", "x"])
    assert "invalid choice" in capsys.readouterr().err


def test_out_of_bounds_setting_is_refused_by_name_in_one_line(tmp_path, capsys):
    assert main(["prepare", "--input", str(tmp_path), "--out", str(tmp_path / "pool"), "--shard-size", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "shard_size" in err
    assert not (tmp_path / "pool").exists()


def test_synth_then_prepare_builds_a_pool(tmp_path, capsys):
    raw = tmp_path / "raw" / "pairs.parquet"
    assert main(["synth", "--n", "250", "--out", str(raw), "--truth", str(tmp_path / "truth.parquet")]) == 0
    capsys.readouterr()
    assert main(["prepare", "--input", str(raw.parent), "--out", str(tmp_path / "pool"), "--shard-size", "100"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pool"] == 250
    assert summary["shards"] == 3
    assert len(PoolLayout(tmp_path / "pool").shard_uris()) == 3
