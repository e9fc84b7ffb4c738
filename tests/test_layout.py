"""The storage layout: round bookkeeping, and the layout block of docs/concepts.md checked against the layout
objects."""

import inspect
import re
from pathlib import Path

import pytest

from conftest import REPO
from synpref.io.layout import SEED_ROUND, PoolLayout, RoundLayout, ShardLayout, Stage2Layout, StorageLayout
from synpref.io.storage import write_json


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


NOT_PATHS = {  # layout members that are bookkeeping, not a path of their own
    "name",
    "is_complete",
    "shard_name",
    "shards",
    "shard_uris",
    "completed_stage2_runs",
    "completed_rounds",
    "rounds_in_progress",
    "begin_round",
    "previous_round",
    "resolve_round",
    "pool",
    "table",  # RoundLayout's tables are its properties; a pool's are listed below
    "rm",  # best_rm / gold_rm
    "annotator_dir",  # samples / usage / probe
}
PLACEHOLDERS = {
    "rnd": "2099-12-31",  # names the layout accepts, shown as <date> / <run> (``_relative_artifacts``)
    "run": "RUN-NAME",
    "shard_name": "<shard>",
    "shard_uri": "<shard>",
    "annotator": "<annotator>",
    "name": "<step>",
    "index": 0,
    "key": "<key>",
    "kind": "*",
    "benchmark": "<benchmark>",
    "trained_on": "<curated|raw>",
}


def _members(obj) -> list:
    """Every path a layout object names: its properties, and its methods called with placeholders (one
    call per decision for the per-decision ones); nested layouts are followed."""
    from synpref.io.layout import DECISIONS

    out = []
    for name in sorted(n for n in dir(type(obj)) if not n.startswith("_") and n not in NOT_PATHS):
        member = getattr(type(obj), name)
        if isinstance(member, property):
            out.append(getattr(obj, name))
        elif callable(member):
            params = [p for p in inspect.signature(member).parameters if p != "self"]
            if params == ["decision", "shard_name"]:
                out += [getattr(obj, name)(d, "<shard>") for d in DECISIONS]
            elif params == ["decision"]:
                out += [getattr(obj, name)(d) for d in DECISIONS]
            else:
                out.append(getattr(obj, name)(*(PLACEHOLDERS[p] for p in params)))
    paths = []
    for value in out:
        if isinstance(value, (RoundLayout, Stage2Layout, ShardLayout)):
            paths += [value.dir, *_members(value)]
        elif isinstance(value, PoolLayout):
            paths += [value.dir, value.source]  # a stage-2 run's prepared/: the pool's layout, or what it adopted
        else:
            paths.append(value)
    return paths


def _relative_artifacts(root) -> set[str]:
    """Every path the layout objects name, relative to the root, with dates/runs/shards as placeholders."""
    from synpref.io.preprocess import FILTERS

    store = StorageLayout(root)
    pool = store.pool
    paths = [*_members(store), *(p for p in _members(pool) if p != pool.source), pool.dir]
    paths += [pool.table(name) for name in {f.name for f in FILTERS} | {"label_conflicts"}]
    paths += [store.round("2099-12-31").dir, store.stage2("RUN-NAME").dir]
    relative = {str(getattr(p, "dir", p))[len(str(root)) + 1 :] for p in paths} - {""}
    return {p.replace("2099-12-31", "<date>").replace("RUN-NAME", "<run>") for p in relative}


def _leaves(paths: set[str]) -> set[str]:
    """Paths that are not a directory of another path (directories need not be listed on their own line)."""
    return {p for p in paths if not any(q.startswith(p + "/") for q in paths)}


def _readme_layout_block() -> str:
    text = (REPO / "docs" / "concepts.md").read_text()
    return re.search(r"### Storage layout.*?```\n(.*?)```", text, re.S).group(1)


def _readme_paths() -> set[str]:
    return {m.rstrip("/") for m in re.findall(r"^<root>/(\S+)", _readme_layout_block(), re.M)}


def test_the_layout_objects_name_every_path_the_readme_lists():
    """Both directions, derived from the layout objects: no undocumented path, no documented path that is not made."""
    made = _relative_artifacts(Path("/root"))
    documented = _readme_paths()
    assert _leaves(made) - documented == set(), "paths the layout names but docs/concepts.md does not list"
    assert documented - made == set(), "paths the docs list that no layout object names"


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
