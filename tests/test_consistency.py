import itertools

import pytest

from synpref.consistency import ConsistencyConfig, decide, needs_llm


@pytest.mark.parametrize("gold_ok,best_ok,llm_ok", list(itertools.product([True, False], repeat=3)))
@pytest.mark.parametrize("policy", ["both_rms_reject", "all_discarded"])
def test_decision_table(gold_ok, best_ok, llm_ok, policy):
    p_gold, p_best = (0.9 if gold_ok else 0.1), (0.9 if best_ok else 0.1)
    decision, reason = decide(p_best, p_gold, "agree" if llm_ok else "disagree", ConsistencyConfig(0.0, policy))
    if gold_ok and (best_ok or llm_ok):
        assert decision == "kept"
    elif policy == "all_discarded" or (not gold_ok and not best_ok):
        assert decision == "recycled" and "flipped" in reason
    else:
        assert decision == "dropped"
    assert reason


def test_band_routing():
    assert needs_llm(0.5) and not needs_llm(0.51)
    assert needs_llm(0.55, band=0.1) and not needs_llm(0.61, band=0.1)
    assert decide(0.55, 0.9, None, ConsistencyConfig(band=0.1))[0] == "dropped"  # inside the band: best RM does not count


def test_gold_rm_never_scores_gold_pairs(tmp_path):
    """Stage-2 scoring marks pairs already in gold and leaves their gold-RM p empty."""
    import pyarrow.parquet as pq

    from synpref.reward_model import RMConfig, train_reward_model
    from synpref.stage1 import round_dir
    from synpref.stage2 import Stage2Config, step_score
    from synpref.storage import write_json, write_parquet
    from synpref.synthetic import generate

    pairs, _ = generate(60, seed=3, categories=("harmful", "scary_harmless"))
    rows = pairs.to_pylist()
    rd = round_dir(tmp_path, "2026-11-01")
    write_parquet(pairs.slice(0, 20), rd / "gold.parquet")
    cfg = RMConfig(mode="frozen", head_epochs=3)
    train_reward_model(rows[:20], rows[20:30], cfg, rd / "rm")
    train_reward_model(rows[:20], rows[20:30], cfg, rd / "gold_rm")
    write_json({"round": "2026-11-01"}, rd / "manifest.json")
    write_parquet(pairs, tmp_path / "shard-00000.parquet")
    info = step_score(tmp_path, tmp_path / "out", "2026-11-01", str(tmp_path / "shard-00000.parquet"), Stage2Config())
    scores = {r["pair_id"]: r for r in pq.read_table(tmp_path / "out" / "shards" / "shard-00000" / "scores.parquet").to_pylist()}
    assert info["in_gold"] == 20
    assert all(scores[r["pair_id"]]["in_gold"] and scores[r["pair_id"]]["p_gold"] is None for r in rows[:20])
    assert all(scores[r["pair_id"]]["p_gold"] is not None for r in rows[20:])
