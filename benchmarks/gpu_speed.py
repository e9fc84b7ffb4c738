"""Reward models the paper's size on a GPU: scoring and training throughput, MFU, and the stage-2 projection.

On a CUDA machine: random-initialised Qwen3-0.6B-sized and Llama-3.1-8B-sized sequence-classification
models (``synpref.simulation.random_models``; speed does not depend on the weights), bf16, SDPA attention.
- scoring at ~512 and ~2,048 tokens per sequence: the project's ``score_token_ids`` (token-budget batches
  over length-sorted sequences) side by side with a plain ``transformers`` loop (batches of 32 in input
  order, padded to the batch's longest), as pairs/s, tokens/s and MFU (useful FLOPs over the measured bf16
  matmul peak of this GPU);
- pairs whose two sequences share 70% of their tokens (multi-turn): the project's shared-prefix scorer
  (``models.shared_prefix``: the conversation encoded once) beside the plain loop over both sequences;
- one training configuration: tokens/s and MFU of TRL's ``RewardTrainer`` on pre-tokenised pairs (what
  ``train_reward_model`` runs);
- the projected hours to score 20M pairs with both RMs (80M sequences) on 1 and on 8 such GPUs.
Without a GPU it runs a CPU-sized smoke case (tiny model, short sequences) so the script stays tested, and
the results file says that nothing was measured on a GPU: no figure in it is a GPU figure.

    python benchmarks/gpu_speed.py            # on a GPU machine (several minutes)
    python benchmarks/gpu_speed.py --smoke    # tiny, CPU or GPU
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_flops, report, table  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PAIRS_20M = 20_000_000


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(family: str, size: str, device: str):
    """A random-initialised bf16 RM of ``size`` on ``device``, and its non-embedding parameter count."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig, Qwen3Config

    from synpref.simulation.random_models import SIZES

    cfg = {"qwen3": Qwen3Config, "llama": LlamaConfig}[family](
        **SIZES[size], vocab_size=32000, num_labels=1, pad_token_id=0, max_position_embeddings=4096
    )
    cfg._attn_implementation = "sdpa"
    model = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.bfloat16).to(device).eval()
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    return model, params


def sequences(n: int, tokens: int, seed: int = 0) -> list[list[int]]:
    """``n`` token sequences spread over [0.4, 1] × ``tokens`` (random ids, never the pad id 0)."""
    rng = random.Random(seed)
    return [[rng.randrange(1, 32000) for _ in range(int(tokens * rng.uniform(0.4, 1.0)))] for _ in range(n)]


def useful_flops(model, params: int, lengths: list[int], train: bool = False) -> float:
    """2 × non-embedding params per real token (×3 for a training step) + attention (causal: half of QKᵀ, AV)."""
    cfg = model.config
    heads_dim = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    attention = sum(2 * n * n * heads_dim * cfg.num_hidden_layers for n in lengths)
    return (3 if train else 1) * (2 * params * sum(lengths) + attention)


def plain_loop(model, ids: list[list[int]], device: str, batch: int = 32) -> None:
    """What a competent user writes: batches in input order, right-padded to the batch's longest."""
    import torch

    with torch.inference_mode():
        for s in range(0, len(ids), batch):
            part = ids[s : s + batch]
            width = max(map(len, part))
            x = torch.zeros((len(part), width), dtype=torch.long)
            m = torch.zeros_like(x)
            for i, seq in enumerate(part):
                x[i, : len(seq)], m[i, : len(seq)] = torch.tensor(seq), 1
            model(input_ids=x.to(device), attention_mask=m.to(device))


def seconds(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def score_rows(family, size, tokens, n, device, peak, budget, project_hours: bool) -> list:
    from synpref.models.reward_model import score_token_ids

    model, params = build(family, size, device)
    ids = sequences(n, tokens)
    project = lambda: score_token_ids(model, ids, 0, device, budget)  # noqa: E731
    plain = lambda: plain_loop(model, ids, device)  # noqa: E731
    score_token_ids(model, ids[:8], 0, device, budget), plain_loop(model, ids[:8], device)  # warm
    t_plain, t_project = min(seconds(plain, device) for _ in range(2)), min(seconds(project, device) for _ in range(2))
    flops, toks = useful_flops(model, params, [len(i) for i in ids]), sum(map(len, ids))
    out = []
    for name, t in (("plain transformers loop (32)", t_plain), ("project (token budget, sorted)", t_project)):
        hours = PAIRS_20M * 2 * 2 / (n / t) / 3600  # 2 RMs × 2 sequences per pair
        projection = [hours, hours / 8] if project_hours else ["not projected (smoke)"] * 2
        out.append(
            [f"{size}, ~{toks // n} tok", name, n / 2 / t, toks / t, 100 * flops / t / 1e12 / peak, t_plain / t]
        )
        out[-1] += projection
    return out


def shared_pairs(n: int, tokens: int, shared: float = 0.7, seed: int = 1) -> tuple[list, list]:
    """``n`` pairs whose two sequences share their first ``shared`` of ~``tokens`` (a multi-turn conversation)."""
    rng = random.Random(seed)
    chosen, rejected = [], []
    for seq in sequences(n, tokens, seed):
        cut = int(len(seq) * shared)
        chosen.append(seq)
        rejected.append(seq[:cut] + [rng.randrange(1, 32000) for _ in range(len(seq) - cut)])
    return chosen, rejected


def shared_prefix_rows(family, size, tokens, n, device, peak, budget) -> list:
    """Pairs sharing 70% of their tokens: the project's shared-prefix scorer beside the plain loop over both
    sequences of every pair (what scoring each sequence on its own costs)."""
    from synpref.models import shared_prefix
    from synpref.models.reward_model import score_token_ids

    model, params = build(family, size, device)
    chosen, rejected = shared_pairs(n // 2, tokens)
    both = chosen + rejected
    plain_ids = lambda ids: score_token_ids(model, ids, 0, device, budget)  # noqa: E731
    project = lambda: shared_prefix.score_pairs(model, chosen, rejected, 0, device, budget, plain_ids)  # noqa: E731
    plain = lambda: plain_loop(model, both, device)  # noqa: E731
    project(), plain()  # warm
    t_plain, t_project = min(seconds(plain, device) for _ in range(2)), min(seconds(project, device) for _ in range(2))
    flops, toks = useful_flops(model, params, [len(i) for i in both]), sum(map(len, both))
    label = f"{size}, ~{toks // len(both)} tok, 70% shared"
    return [
        [label, name, len(chosen) / t, toks / t, 100 * flops / t / 1e12 / peak, t_plain / t, "—", "—"]
        for name, t in (("plain transformers loop (32)", t_plain), ("project (shared prefixes)", t_project))
    ]


def train_row(family: str, size: str, tokens: int, n: int, device: str, peak: float) -> list:
    """Tokens/s and MFU of TRL's RewardTrainer on pre-tokenised random pairs (one epoch over ``n`` pairs)."""
    import tempfile

    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import RewardConfig, RewardTrainer

    from synpref.models.device import bf16_on
    from synpref.simulation.random_models import chat_tokenizer

    model, params = build(family, size, device)
    model.train()
    chosen, rejected = sequences(n, tokens, 1), sequences(n, tokens, 2)
    tok: PreTrainedTokenizerFast = chat_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        args = RewardConfig(
            output_dir=tmp, per_device_train_batch_size=8, num_train_epochs=1, use_cpu=device == "cpu",
            bf16=bf16_on(device), gradient_checkpointing=False, report_to=[], disable_tqdm=True,
            save_strategy="no", eos_token=tok.sep_token, max_length=None, logging_steps=10**6,
        )  # fmt: skip
        data = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
        trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        t = seconds(trainer.train, device)
    lengths = [len(i) for i in chosen + rejected]
    mfu = 100 * useful_flops(model, params, lengths, train=True) / t / 1e12 / peak
    return [
        f"{size}, ~{sum(lengths) // len(lengths)} tok",
        "TRL RewardTrainer (batch 8 pairs)",
        n / t,
        sum(lengths) / t,
        mfu,
    ]


def main(argv: list[str] | None = None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, short sequences (CPU or GPU)")
    a = ap.parse_args(argv)
    gpu = torch.cuda.is_available()
    device = "cuda:0" if gpu else "cpu"
    smoke = a.smoke or not gpu
    # a smoke run on a CPU without native bf16 emulates it (seconds per 1024 matmul): a small matmul will do there
    peak = peak_flops(device, (1024 if gpu else 256) if smoke else 8192) / 1e12  # TFLOP/s
    if smoke:
        cases, train_case, n, budget = [("qwen3", "tiny", 128)], ("qwen3", "tiny", 64), 32, 4096
    else:
        cases = [(f, s, t) for f, s in (("qwen3", "qwen3-0.6b"), ("llama", "llama-3.1-8b")) for t in (512, 2048)]
        train_case, n, budget = ("qwen3", "qwen3-0.6b", 1024), 1024, 262144
    score = [row for c in cases for row in score_rows(*c, n, device, peak, budget, not smoke)]
    score += [row for c in cases[-1:] for row in shared_prefix_rows(*c, n, device, peak, budget)]
    train = [train_row(*train_case, 256 if not smoke else 32, device, peak)]
    name = torch.cuda.get_device_name(0) if gpu else "CPU (no CUDA device visible)"
    head = [
        "model, mean tokens",
        "path",
        "pairs/s",
        "tokens/s",
        "MFU %",
        "vs plain",
        "20M pairs, 2 RMs: h on 1",
        "h on 8",
    ]
    status = (
        f"Measured on {name} (bf16 matmul peak {peak:,.1f} TFLOP/s), torch {torch.__version__}."
        if gpu and not smoke
        else f"**Not measured on a GPU**: {name}. The tables below are the CPU-sized smoke case (a tiny model, "
        "short sequences) that keeps this script tested; they say nothing about GPU speed."
    )
    text = "\n\n".join(
        [
            status,
            table("Scoring", head, score),
            table("Training", ["model, mean tokens", "path", "pairs/s", "tokens/s", "MFU %"], train),
        ]
    )
    report("gpu", text)
    return {"gpu": gpu and not smoke, "score": score, "train": train}


if __name__ == "__main__":
    main()
