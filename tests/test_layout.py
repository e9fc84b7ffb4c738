"""The storage layout: round bookkeeping, and the README's layout block checked against the layout objects."""

import re
from pathlib import Path

import pytest

from conftest import REPO
from synpref.layout import SEED_ROUND, PoolLayout, RoundLayout, Stage2Layout, StorageLayout
from synpref.storage import write_json


def _publish(store: StorageLayout, rnd: str) -> None:
    write_json({"round": rnd}, store.round(rnd).manifest)


def test_a_round_reads_the_newest_published_round(tmp_path):
    store = StorageLayout(tmp_path / "root")
    for rnd in ("2026-11-01", "2026-11-05", SEED_ROUND):
        _publish(store, rnd)
    write_json({"started": True}, store.round("2026-11-02").step("intake"))  # started, not published
    assert store.previous_round("2026-11-03") == "2026-11-01"
    assert store.previous_round("2026-11-01") is None


def test_a_round_waits_for_unpublished_earlier_rounds_only(tmp_path):
    store = StorageLayout(tmp_path / "root")
    _publish(store, "2026-11-01")
    write_json({"started": True}, store.round("2026-11-02").step("intake"))
    assert store.rounds_in_progress("2026-11-03") == ["2026-11-02"]
    assert store.rounds_in_progress("2026-11-02") == []  # never itself or later rounds
    _publish(store, "2026-11-02")
    assert store.rounds_in_progress("2026-11-03") == []
    assert store.previous_round("2026-11-03") == "2026-11-02"


def test_an_empty_root_has_no_rounds(tmp_path):
    store = StorageLayout(tmp_path / "empty")
    assert store.rounds_in_progress("2026-11-01") == []
    assert store.completed_rounds() == []
    with pytest.raises(FileNotFoundError, match="run synpref_stage1 first"):
        store.resolve_round("latest")


def test_begin_round_marks_the_round_started_so_later_rounds_wait_for_it(tmp_path):
    store = StorageLayout(tmp_path / "root")
    assert store.begin_round("2026-11-01") == []
    assert store.begin_round("2026-11-02") == ["2026-11-01"]  # round 1 started but has not published
    assert not store.round("2026-11-02").dir.exists()  # a waiting round starts nothing
    _publish(store, "2026-11-01")
    assert store.begin_round("2026-11-02") == []
    assert store.round("2026-11-02").started.exists()


def test_resolve_round_names_latest_and_refuses_unfinished(tmp_path):
    store = StorageLayout(tmp_path / "root")
    for rnd in ("2026-11-01", "2026-11-02", SEED_ROUND):
        _publish(store, rnd)
    assert store.resolve_round("latest") == "2026-11-02"
    assert store.resolve_round("2026-11-01") == "2026-11-01"
    with pytest.raises(FileNotFoundError, match="not completed"):
        store.resolve_round("2026-11-03")


def _relative_artifacts(root) -> set[str]:
    """Every path the layout objects name, relative to the root, with dates/runs/shards as placeholders."""
    store = StorageLayout(root)
    rnd, run, pool = store.round("<date>"), store.stage2("<run>"), store.pool
    shard = run.shard("<shard>.parquet")
    paths = [
        store.raw,
        store.seed,
        store.inbox("<date>"),
        store.llm_cache,
        store.embedding_cache("<shard>"),
        pool.shard(0),
        pool.table("duplicates"),
        pool.table("contaminated"),
        pool.table("label_conflicts"),
        pool.quarantine,
        rnd.manifest,
        run.manifest,
        pool.manifest,
        *(getattr(rnd, name) for name in _properties(RoundLayout)),
        rnd.samples("<annotator>"),
        rnd.usage("<annotator>"),
        rnd.step("<step>"),
        *(getattr(run, name) for name in _properties(Stage2Layout)),
        run.prepared.dir,
        shard.scores,
        shard.scores_marker,
        shard.samples("<annotator>"),
        shard.success,
        shard.canary_scores,
        shard.canaries,
        *(run.part(d, "<shard>") for d in ("kept", "recycled", "dropped")),
    ]
    out = set()
    for p in paths:
        p = getattr(p, "dir", p)
        out.add(str(p)[len(str(root)) + 1 :])
    return out


def _properties(cls) -> list[str]:
    return [n for n, v in vars(cls).items() if isinstance(v, property) and n not in ("name", "prepared")]


def _readme_layout_block() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"### Storage layout.*?```\n(.*?)```", text, re.S).group(1)


@pytest.mark.parametrize("path", sorted(_relative_artifacts(Path("/root"))))
def test_readme_layout_block_names_every_artifact(path):
    """Each path the layout objects name is written out in the README's layout block."""
    assert f"<root>/{path}" in _readme_layout_block()


def test_pool_layout_reads_shards_from_its_manifest(tmp_path):
    pool = PoolLayout(tmp_path / "pool")
    write_json({"kind": "pool", "shards": [{"name": pool.shard_name(0), "count": 3}]}, pool.manifest)
    assert pool.shard_uris() == [str(tmp_path / "pool" / "shard-00000.parquet")]


def test_a_round_rejected_at_its_sign_off_does_not_hold_later_rounds(tmp_path):
    store = StorageLayout(tmp_path)
    assert store.begin_round("2026-11-01") == []
    assert store.begin_round("2026-11-02") == ["2026-11-01"]
    write_json({"round": "2026-11-01"}, store.round("2026-11-01").rejected)
    assert store.begin_round("2026-11-02") == []
    assert store.previous_round("2026-11-02") is None  # the rejected round is not read
