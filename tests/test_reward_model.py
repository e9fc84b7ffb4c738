import numpy as np

from synpref.models.reward_model import RewardModel, RMConfig, evaluate, p_from_diff, train_reward_model
from synpref.simulation.synthetic import generate


def test_p_from_reward_difference_never_saturates():
    p, log_p = p_from_diff(np.array([-800.0, 0.0, 800.0]))
    assert np.isfinite(log_p).all()
    assert log_p[0] < -700
    assert p[1] == 0.5
    assert p[2] == 1.0


def test_bt_frozen_learns_a_separable_set_and_reloads(tmp_path):
    rows = generate(300, seed=1, categories=("harmful", "scary_harmless", "format"))[0].to_pylist()
    train, select = rows[:240], rows[240:]
    m = train_reward_model(train, select, RMConfig(mode="frozen", head_epochs=15), tmp_path / "rm")
    assert m["select_accuracy"] >= 0.9
    _, metrics = evaluate(RewardModel(tmp_path / "rm"), select)
    assert metrics["accuracy"] >= 0.9
    assert set(metrics["per_category"]) == {"safety", "instruction_following"}
    flipped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in select]
    assert evaluate(RewardModel(tmp_path / "rm"), flipped)[1]["accuracy"] <= 0.1


def test_bt_full_finetune_with_trl_runs_and_counts_drops(tmp_path):
    rows = generate(48, seed=2, categories=("harmful", "scary_harmless"))[0].to_pylist()
    m = train_reward_model(
        rows[:32],
        rows[32:],
        RMConfig(mode="full", max_length=64, batch_size=8, eval_steps=2, learning_rate=5e-5, min_steps=8),
        tmp_path / "rm",
    )
    assert m["train_pairs_used"] == 32
    assert m["dropped_too_long"] == 0
    assert m["select_accuracy"] is not None
    assert (tmp_path / "rm" / "model" / "config.json").exists()
    _, metrics = evaluate(RewardModel(tmp_path / "rm"), rows[32:])
    assert metrics["pairs"] == 16
    assert m["steps"] >= 8  # enough updates however small the set
    assert any("eval_accuracy" in h for h in m["history"])  # the training curve is recorded
