"""Stage-1 steps that need no model: intake on a fresh root (no seed silver), counts, one-line errors."""

import json

import pytest

from conftest import REPO
from synpref.io.layout import StorageLayout
from synpref.io.preprocess import prepare
from synpref.io.readers import InputError
from synpref.io.storage import read_parquet, write_parquet
from synpref.settings import RMConfig, Stage1Config
from synpref.simulation.synthetic import generate
from synpref.stage1.gold import label_studio_tasks
from synpref.stage1.steps import step_intake


def _root(tmp_path, n_pool=300):
    store = StorageLayout(tmp_path / "root")
    pairs, _ = generate(n_pool + 5, seed=11)
    write_parquet(pairs.slice(0, n_pool), tmp_path / "raw.parquet")
    prepare([str(tmp_path / "raw.parquet")], store.pool)
    return store, pairs.to_pylist()


def _inbox(store, rnd, rows, labels):
    tasks = label_studio_tasks(rows)
    for t, label in zip(tasks, labels):
        t["annotations"] = [{"completed_by": 1, "result": [{"from_name": "verdict", "value": {"choices": [label]}}]}]
    path = store.inbox(rnd) / "export.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(tasks))


def test_a_first_round_without_seed_silver_draws_it_from_the_pool(tmp_path):
    store, rows = _root(tmp_path)
    _inbox(store, "2026-01-01", rows[:10], ["chosen"] * 10)
    info = step_intake(store, "2026-01-01", cfg=Stage1Config(seed_silver=50))
    silver = read_parquet(store.round("2026-01-01").silver_in).to_pylist()
    assert len(silver) == 50
    assert info["silver_source"] == "unverified pool sample (50 of 290)"
    big = step_intake(store, "2026-01-01", cfg=Stage1Config(seed_silver=5000))
    assert big["silver_source"] == "unverified pool sample (145 of 290)"  # half the pool is left to retrieve
    assert not {s["pair_id"] for s in silver} & {r["pair_id"] for r in rows[:10]}


def test_verifications_of_pairs_outside_the_pool_are_accepted_and_counted(tmp_path):
    store, rows = _root(tmp_path)
    _inbox(store, "2026-01-01", rows[:4] + rows[-2:], ["chosen"] * 6)
    info = step_intake(store, "2026-01-01", cfg=Stage1Config(seed_silver=20))
    assert info["gold"] == 6
    assert info["inbox_unknown_pairs"] == 2


def test_a_root_without_a_pool_is_a_one_line_error_naming_the_path(tmp_path):
    store = StorageLayout(tmp_path / "root")
    rows = generate(3, seed=1)[0].to_pylist()
    _inbox(store, "2026-01-01", rows, ["chosen"] * 3)
    with pytest.raises(InputError, match="synpref prepare --out") as e:
        step_intake(store, "2026-01-01")
    assert str(store.pool.dir) in str(e.value)


def test_a_round_without_any_gold_says_where_to_put_it(tmp_path):
    store, _ = _root(tmp_path)
    with pytest.raises(InputError, match="has no gold"):
        step_intake(store, "2026-01-01")


def test_a_round_whose_every_verification_was_rejected_writes_its_quarantine_and_says_why(tmp_path):
    store, rows = _root(tmp_path)
    inbox = store.inbox("2026-01-01") / "labels.jsonl"
    inbox.parent.mkdir(parents=True)
    conv = lambda r, side: r["conversation"] + [{"role": "assistant", "content": r[side]}]  # noqa: E731
    lines = [{"chosen": conv(r, "chosen"), "rejected": conv(r, "rejected"), "human_label": "yes"} for r in rows[:5]]
    inbox.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(InputError) as e:
        step_intake(store, "2026-01-01")
    message = str(e.value)
    assert "\n" not in message and "all 5 human verifications in the inbox were rejected" in message
    assert "5 × human_label must be one of" in message
    quarantine = read_parquet(store.round("2026-01-01").table("intake_quarantine")).to_pylist()
    assert len(quarantine) == 5 and str(store.round("2026-01-01").table("intake_quarantine")) in message


def test_plain_human_labelled_pairs_become_gold_with_generated_attributes(tmp_path, sim_server, sim_truth):
    """A newcomer's inbox: TRL pairs with a human_label and no attributes. The attribute annotator generates them
    (marked generated in the history); without one, the pairs are gold all the same (attributes_missing)."""
    from conftest import annotator_cfg

    store, _ = _root(tmp_path)
    _, pairs, _, _, _ = sim_truth
    conv = lambda r, side: r["conversation"] + [{"role": "assistant", "content": r[side]}]  # noqa: E731
    rows = pairs.to_pylist()[:5]
    lines = [{"chosen": conv(r, "chosen"), "rejected": conv(r, "rejected"), "human_label": "chosen"} for r in rows]
    inbox = store.inbox("2026-01-01") / "labels.jsonl"
    inbox.parent.mkdir(parents=True)
    inbox.write_text("".join(json.dumps(line) + "\n" for line in lines))
    info = step_intake(store, "2026-01-01", annotator=annotator_cfg(sim_server, "good"))
    assert info["gold"] == 5 and info["inbox_quarantined"] == 0 and info["inbox_attributes_generated"] == 5
    history = read_parquet(store.round("2026-01-01").human_verifications).to_pylist()
    assert {h["attributes_status"] for h in history} == {"generated"}
    gold = read_parquet(store.round("2026-01-01").gold).to_pylist()
    assert all(g["task_category"] and g["annotation_guideline"] for g in gold)
    other = StorageLayout(tmp_path / "root2", store.pool.dir)
    info = step_intake(other, "2026-01-01", inbox.parent)  # no attribute annotator
    assert info["gold"] == 5 and info["inbox_attributes_missing"] == 5


def test_a_round_given_another_pool_reads_that_pool_and_never_the_roots(tmp_path):
    """``pool_uri`` (DAG) / ``--pool`` (CLI): every step reads the pool through the layout, so the root's own
    pool (same shard names) never mixes in."""
    store, rows = _root(tmp_path)  # <root>/pool: rows[:300]
    other = tmp_path / "other-pool"
    more, _ = generate(120, seed=99)
    write_parquet(more, tmp_path / "other.parquet")
    prepare([str(tmp_path / "other.parquet")], StorageLayout(tmp_path / "x", other).pool)
    elsewhere = StorageLayout(store.root, other)
    assert [s.name for s in elsewhere.pool.shards()] == [s.name for s in store.pool.shards()]  # names coincide
    _inbox(elsewhere, "2026-01-01", rows[:4], ["chosen"] * 4)
    info = step_intake(elsewhere, "2026-01-01", cfg=Stage1Config(seed_silver=1000))
    silver = {s["pair_id"] for s in read_parquet(elsewhere.round("2026-01-01").silver_in).to_pylist()}
    assert silver <= {r["pair_id"] for r in more.to_pylist()}
    pool_ids = {r["pair_id"] for shard in elsewhere.pool.shards() for r in read_parquet(shard).to_pylist()}
    n = len(pool_ids - {r["pair_id"] for r in rows[:4]})
    assert info["silver_source"] == f"unverified pool sample ({n // 2} of {n})"
    assert info["inbox_unknown_pairs"] == len({r["pair_id"] for r in rows[:4]} - pool_ids)  # not the root's pool


def test_the_dag_glue_builds_the_layout_with_the_pool_param(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "dags"))
    from synpref_common import storage

    store = storage({"root": f"file://{tmp_path}", "pool_uri": f"file://{tmp_path}/elsewhere"})
    assert str(store.pool.dir).endswith("/elsewhere")
    assert str(storage({"root": f"file://{tmp_path}", "pool_uri": None}).pool.dir).endswith("/pool")


def test_an_unreachable_judge_fails_the_round_at_its_probe(tmp_path, sim_server, caplog):
    """The annotate task asks the small gold probe first: a judge whose endpoint never answers trips its breaker
    there, and the round fails in one line before any retrieved pair is asked or any output is written."""
    import socket

    from conftest import annotator_cfg
    from synpref.llm.client import AnnotatorConfig, EndpointUnreachable
    from synpref.pipeline import run_round

    store, rows = _root(tmp_path, n_pool=200)
    gold, _ = generate(40, seed=8, with_attributes=True)
    write_parquet(gold, store.seed / "gold.parquet")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    judge = AnnotatorConfig(name="typo", base_url=url, model="m")
    cfg = Stage1Config(rm=RMConfig(mode="frozen", head_epochs=3), k_max=2, max_examples=2, seed_silver=50)
    caplog.set_level("INFO", logger="synpref")
    with pytest.raises(EndpointUnreachable, match=f"annotator 'typo' cannot reach {url}: connection refused"):
        run_round(store, "2026-01-01", [judge], cfg, attribute_annotator=annotator_cfg(sim_server, "good"))
    out = store.round("2026-01-01")
    assert out.retrieved.exists()  # the round got as far as annotation
    assert not out.probe("typo").exists() and not out.samples("typo").exists()
    asked = [r.getMessage() for r in caplog.records if r.getMessage().startswith("annotator typo:")]
    assert asked == ["annotator typo: 40 requests to do"]  # the probe: every one of the 40 gold pairs, one request
