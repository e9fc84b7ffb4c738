"""Stage-2 steps on a hand-made round (the whole stage runs end to end in test_e2e_dags.py)."""

import pyarrow.parquet as pq
import pytest
from test_consistency import LengthRule, LongerIsBetter

from synpref.layout import StorageLayout
from synpref.reward_model import RMConfig, train_reward_model
from synpref.stage2 import Stage2Config, step_decide, step_score
from synpref.storage import write_json, write_parquet
from synpref.synthetic import generate

RND = "2026-11-01"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A published round (gold + two tiny frozen RMs) and one shard of 60 pairs, 20 of them gold."""
    tmp = tmp_path_factory.mktemp("stage2")
    store = StorageLayout(tmp / "root")
    pairs, _ = generate(60, seed=3, categories=("harmful", "scary_harmless"))
    rows = pairs.to_pylist()
    rnd = store.round(RND)
    write_parquet(pairs.slice(0, 20), rnd.gold)
    cfg = RMConfig(mode="frozen", head_epochs=3)
    train_reward_model(rows[:20], rows[20:30], cfg, rnd.best_rm)
    train_reward_model(rows[:20], rows[20:30], cfg, rnd.gold_rm)
    write_json({"round": RND}, rnd.manifest)
    shard = tmp / "shard-00000.parquet"
    write_parquet(pairs, shard)
    return store, shard, rows


def test_gold_rm_never_scores_gold_pairs(world, tmp_path):
    """Stage-2 scoring marks pairs already in gold and leaves their gold-RM p empty."""
    store, shard, rows = world
    run = store.stage2("scored")
    info = step_score(store, run, RND, shard, Stage2Config(decision_rule="paper"))
    scores = {r["pair_id"]: r for r in pq.read_table(run.shard(shard).scores).to_pylist()}
    assert info["in_gold"] == 20
    assert all(scores[r["pair_id"]]["in_gold"] for r in rows[:20])
    assert all(scores[r["pair_id"]]["p_gold"] is None for r in rows[:20])
    assert all(scores[r["pair_id"]]["p_gold"] is not None for r in rows[20:])


def test_a_new_signal_and_rule_run_through_the_shard_steps(world):
    """The toy signal/rule of test_consistency, passed to the steps: its column is scored and its rule decides."""
    store, shard, rows = world
    run = store.stage2("toy")
    step_score(store, run, RND, shard, Stage2Config(), signals=[LongerIsBetter()], rule=LengthRule())
    scores = pq.read_table(run.shard(shard).scores)
    assert "p_length" in scores.column_names
    info = step_decide(store, run, RND, shard, [], Stage2Config(), rule=LengthRule())
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows[20:])
    assert info["kept"] == 20 + longer  # gold pairs keep their label
    assert info["dropped"] == 40 - longer


def test_the_reliability_rule_refuses_a_round_without_calibration(world):
    store, shard, _ = world
    with pytest.raises(FileNotFoundError, match="decision_rule=paper"):
        step_score(store, store.stage2("old-round"), RND, shard, Stage2Config())
