"""Reward models the paper's way: decoder backbones (tiny random Qwen3 / Llama from a config) formatted with
their chat template exactly as TRL formats conversational pairs, trained and scored through the production
code; the worker's device setting reaching training, scoring and embedding."""

import numpy as np
import pytest

from synpref.models.device import DeviceError, requested_device, resolve_device
from synpref.models.reward_model import (
    BackboneError,
    RewardModel,
    evaluate,
    load_backbone,
    token_batches,
    tokenize_side,
    train_reward_model,
)
from synpref.settings import RMConfig
from synpref.simulation.random_models import random_reward_model
from synpref.simulation.synthetic import generate

MULTI_TURN = {
    "pair_id": "multi",
    "conversation": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another one, and why is it prime?"},
    ],
    "chosen": "Eleven: its only divisors are one and eleven.",
    "rejected": "Nine, because it is odd.",
}


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def backbone(request, tmp_path_factory):
    return str(random_reward_model(tmp_path_factory.mktemp(request.param), request.param))


@pytest.fixture(scope="module")
def rows():
    return generate(40, seed=3, categories=("harmful", "scary_harmless"))[0].to_pylist() + [MULTI_TURN]


def test_chat_pairs_are_tokenised_exactly_as_trl_does(backbone, rows):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tok, model = load_backbone(backbone)
    conv = lambda r, side: [dict(m) for m in r["conversation"]] + [{"role": "assistant", "content": r[side]}]  # noqa: E731
    data = Dataset.from_list([{"chosen": conv(r, "chosen"), "rejected": conv(r, "rejected")} for r in rows])
    args = RewardConfig(output_dir="/tmp/unused", use_cpu=True, bf16=False, report_to=[], eos_token=tok.eos_token)
    trl = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok).train_dataset
    for side in ("chosen", "rejected"):
        ours, cut = tokenize_side(tok, rows, side, max_length=4096)
        assert ours == trl[f"{side}_ids"] and not any(cut)
    text = tok.decode(tokenize_side(tok, [MULTI_TURN], "chosen", 4096)[0][0])
    assert text.count("unused1") == 5 and text.rstrip().endswith("eleven. [SEP]")  # every turn, response last


def test_long_conversations_are_cut_from_the_left_and_counted(backbone):
    tok, _ = load_backbone(backbone)
    full, _ = tokenize_side(tok, [MULTI_TURN], "chosen", 4096)
    cut, flags = tokenize_side(tok, [MULTI_TURN], "chosen", 12)
    assert flags == [True] and cut[0] == full[0][-12:]  # the final assistant turn stays


def test_decoder_rms_train_and_score_through_the_production_code(backbone, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNPREF_DEVICE", "cpu")
    cfg = RMConfig(backbone=backbone, max_length=40, batch_size=8, eval_steps=2, learning_rate=1e-3, min_steps=6)
    m = train_reward_model(rows[:32], rows[32:], cfg, tmp_path / "rm")
    assert m["chat_template"] and m["device"] == "cpu"
    assert m["train_pairs_used"] == 32 and m["dropped_too_long"] == 0  # long pairs are cut, never dropped
    tok, _ = load_backbone(backbone)

    def cut(part: list[dict]) -> int:
        chosen, rejected = (tokenize_side(tok, part, side, 40)[1] for side in ("chosen", "rejected"))
        return sum(a or b for a, b in zip(chosen, rejected))

    assert m["truncated"] == {"train": cut(rows[:32]), "select": cut(rows[32:])} and m["truncated"]["select"] > 0
    rm = RewardModel(tmp_path / "rm")
    table, metrics = evaluate(rm, rows[32:])
    assert metrics["pairs"] == 9 and rm.device == "cpu" and rm.truncated >= 1
    assert np.isfinite(table.column("reward_diff").to_numpy()).all()
    # token-budget batches give the rewards that one pair at a time gives (within bf16 rounding)
    one_at_a_time = RewardModel(tmp_path / "rm", budget=1)
    assert np.allclose(one_at_a_time.reward_diff(rows[32:]), table.column("reward_diff").to_numpy(), atol=0.05)


def _saved_rm(backbone: str, directory, max_length: int = 4096):
    """A project RM directory around a (random) backbone, as training leaves it."""
    import json
    import shutil

    shutil.copytree(backbone, directory / "model")
    cfg = RMConfig(mode="full", backbone=backbone, max_length=max_length)
    (directory / "rm_config.json").write_text(json.dumps(cfg.model_dump()))
    return directory


def test_shared_prefix_scoring_equals_plain_scoring(backbone, rows, tmp_path, monkeypatch):
    """Decoder RMs encode a pair's conversation once and score both responses from its keys and values: the
    rewards equal two plain sequences' (fp32 on CPU: to rounding), with pairs of every shape — long shared
    multi-turn conversations, one response a prefix of the other, batches of mixed prefix lengths, and pairs too
    short to share (scored plainly)."""
    from synpref.models import shared_prefix

    monkeypatch.setenv("SYNPREF_DEVICE", "cpu")
    long_turns = [
        {**MULTI_TURN, "pair_id": f"long-{i}", "conversation": MULTI_TURN["conversation"] * (i + 1)} for i in range(5)
    ]
    prefix_of = {**MULTI_TURN, "pair_id": "prefix-of", "rejected": MULTI_TURN["chosen"] + " And thirteen."}
    short = {
        "pair_id": "short",
        "conversation": [{"role": "user", "content": "Hi"}],
        "chosen": "Yes",
        "rejected": "No",
    }
    pairs = rows[:12] + long_turns + [prefix_of, short]
    rm_dir = _saved_rm(backbone, tmp_path)
    tok, model = load_backbone(str(rm_dir / "model"))
    assert shared_prefix.applies(model)
    chosen, rejected = (tokenize_side(tok, pairs, side, 4096)[0] for side in ("chosen", "rejected"))
    shared = [shared_prefix.shared_length(c, r, tok.pad_token_id) for c, r in zip(chosen, rejected)]
    share = [k / ((len(c) + len(r)) / 2) for k, c, r in zip(shared, chosen, rejected)]
    fast = [k >= shared_prefix.MIN_SHARED and f >= shared_prefix.MIN_SHARE for k, f in zip(shared, share)]
    assert 3 <= sum(fast) < len(pairs)  # both paths are taken, and batches of several shared prefixes
    # the scoring precision (bf16 where the CPU has it): equal within bf16 rounding, as batching already is
    shared, plain = RewardModel(rm_dir, budget=600), RewardModel(rm_dir, shared_prefix=False)
    assert np.abs(shared.reward_diff(pairs) - plain.reward_diff(pairs)).max() < 0.01
    # fp32: equal to float rounding
    monkeypatch.setattr("synpref.models.reward_model.bf16_on", lambda device: False)
    shared, plain = RewardModel(rm_dir, budget=600), RewardModel(rm_dir, shared_prefix=False)
    assert np.abs(shared.reward_diff(pairs) - plain.reward_diff(pairs)).max() < 1e-5


def test_encoders_keep_the_plain_path():
    from synpref.models import shared_prefix
    from synpref.models.reward_model import resolved_backbone

    _, model = load_backbone(resolved_backbone(RMConfig()))
    assert not shared_prefix.applies(model)


def test_token_batches_respect_the_budget_and_keep_every_sequence():
    lengths = [5, 300, 40, 41, 7, 1000, 39]
    batches = token_batches(lengths, budget=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    assert [len(b) for b in batches] == [2, 2, 1, 1, 1]  # shortest first: (5, 7), (39, 40), 41, 300, 1000


def test_a_missing_backbone_is_one_line_naming_it():
    with pytest.raises(BackboneError) as e:
        load_backbone("Qwen/Qwen3-0.6B-not-downloaded")
    assert "Qwen/Qwen3-0.6B-not-downloaded" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "tpu"])
def test_a_device_that_is_not_one_is_refused(value):
    with pytest.raises(DeviceError, match="is not a device"):
        requested_device(value)


def test_the_device_setting_reaches_training_scoring_and_embedding(tmp_path, monkeypatch, rows):
    """cuda asked for on a worker without one: every model step refuses (none silently falls back to the CPU)."""
    import torch

    from synpref.models.embedding import embed_texts

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SYNPREF_DEVICE", "cpu")
    frozen = RMConfig(mode="frozen", head_epochs=1)
    assert train_reward_model(rows[:8], rows[8:12], frozen, tmp_path / "rm")["device"] == "cpu"
    assert RewardModel(tmp_path / "rm").device == "cpu" and resolve_device() == "cpu"
    monkeypatch.setenv("SYNPREF_DEVICE", "cuda:1")
    for step in (
        lambda: train_reward_model(rows[:8], rows[8:12], frozen, tmp_path / "rm2"),
        lambda: RewardModel(tmp_path / "rm"),
        lambda: embed_texts(["a text"]),
    ):
        with pytest.raises(DeviceError, match="sees no CUDA device"):
            step()


@pytest.mark.e2e
def test_training_in_two_data_parallel_processes_writes_one_checkpoint(rows, tmp_path, monkeypatch):
    """torchrun from the task, as on a worker with two GPUs (here two CPU processes over gloo)."""
    backbone = str(random_reward_model(tmp_path / "qwen3", "qwen3"))
    monkeypatch.setenv("SYNPREF_DEVICE", "cpu")
    monkeypatch.setenv("SYNPREF_TRAIN_PROCESSES", "2")
    cfg = RMConfig(backbone=backbone, max_length=64, batch_size=4, eval_steps=2, learning_rate=1e-3, min_steps=4)
    m = train_reward_model(rows[:32], rows[32:], cfg, tmp_path / "rm")
    assert m["processes"] == 2 and m["device"] == "cpu" and m["train_pairs_used"] == 32
    assert sorted(p.name for p in (tmp_path / "rm").iterdir()) == ["metrics.json", "model", "rm_config.json"]
    assert len(RewardModel(tmp_path / "rm").reward_diff(rows[32:])) == 9


def test_a_number_of_training_processes_that_is_not_one_is_refused(monkeypatch):
    from synpref.models.device import train_processes

    monkeypatch.setenv("SYNPREF_TRAIN_PROCESSES", "two")
    with pytest.raises(DeviceError, match="not a number of processes"):
        train_processes("cpu")
    monkeypatch.setenv("SYNPREF_TRAIN_PROCESSES", "")
    assert train_processes("cpu") == 1
