"""RM scoring: the project's scoring path vs a naive loop, and its share of this machine's bf16 peak.

Same RM (the packaged MiniLM with a 1-output head, full mode), same pairs (synthetic). Naive: one
sequence per forward pass in fp32 (what a first script does). Project: ``RewardModel.reward_diff``
(sorted by length, batches of 64, ``inference_mode``, bf16 weights where the CPU has native bf16).
Peak: the median of bf16 ``2048×2048 @ 2048×2048`` matmuls. Achieved FLOP/s counts the model's useful
work on real tokens (no padding): 2 × non-embedding parameters per token plus attention.

    python benchmarks/scoring_speed.py                         # 512 pairs, 3 repeats
    python benchmarks/scoring_speed.py --pairs 64 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, report, summary, table, timed  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """bf16 GFLOP/s of a large square matmul on this CPU (median of ``repeats``)."""
    import torch

    a, b = torch.randn(size, size, dtype=torch.bfloat16), torch.randn(size, size, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / sorted(times)[len(times) // 2] / 1e9


def packaged_rm(directory: Path) -> Path:
    """The packaged backbone with a 1-output head, saved as a project RM directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from synpref.models.reward_model import resolved_backbone
    from synpref.settings import RMConfig

    cfg = RMConfig(mode="full")
    name = resolved_backbone(cfg)
    AutoModelForSequenceClassification.from_pretrained(name, num_labels=1).save_pretrained(directory / "model")
    AutoTokenizer.from_pretrained(name).save_pretrained(directory / "model")
    (directory / "rm_config.json").write_text(json.dumps({**cfg.model_dump(), "backbone": name}))
    return directory


def useful_flops(model, lengths: list[int]) -> float:
    """2 × non-embedding parameters per real token + attention (QKᵀ and AV) per layer."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    attention = sum(4 * n * n * cfg.hidden_size * cfg.num_hidden_layers for n in lengths)
    return 2 * params * sum(lengths) + attention


def naive(model, tok, prompts: list[str], responses: list[str]) -> None:
    import torch

    with torch.inference_mode():
        for p, r in zip(prompts, responses):
            model(**tok(p, r, truncation="longest_first", max_length=256, return_tensors="pt"))


def main(argv: list[str] | None = None) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from synpref.models.reward_model import RewardModel, _texts
    from synpref.simulation.synthetic import generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = generate(a.pairs, seed=0)[0].to_pylist()
    prompts, chosen = _texts(rows, "chosen")
    _, rejected = _texts(rows, "rejected")
    with tempfile.TemporaryDirectory() as tmp:
        rm = RewardModel(packaged_rm(Path(tmp)))
        rm.reward_diff(rows[:8])  # load
        plain = AutoModelForSequenceClassification.from_pretrained(Path(tmp) / "model").eval()
        tok = AutoTokenizer.from_pretrained(Path(tmp) / "model")
        lengths = [
            len(ids)
            for ids in tok(prompts * 2, chosen + rejected, truncation="longest_first", max_length=256)["input_ids"]
        ]
        runs = interleaved(
            {
                "naive": lambda: timed(lambda: naive(plain, tok, prompts * 2, chosen + rejected)),
                "project": lambda: timed(lambda: rm.reward_diff(rows)),
                "peak": lambda: {"gflops": matmul_peak()},
            },
            a.repeats,
        )
        flops = useful_flops(plain, lengths)
        rm.close()
    base, ours = summary(runs["naive"], "s")["median"], summary(runs["project"], "s")["median"]
    peak = summary(runs["peak"], "gflops")["median"]
    achieved = flops / ours / 1e9
    rows_out = [
        [
            "naive loop (fp32, 1 sequence per pass)",
            base,
            a.pairs / base,
            flops / base / 1e9,
            100 * flops / base / 1e9 / peak,
            1.0,
        ],
        ["project (sorted, batched, bf16)", ours, a.pairs / ours, achieved, 100 * achieved / peak, base / ours],
    ]
    head = ["path", "median s", "pairs/s", "GFLOP/s", "% of bf16 peak", "speed vs naive"]
    mean_len = sum(lengths) / len(lengths)
    title = f"RM scoring of {a.pairs} pairs ({mean_len:.0f} tokens per sequence; bf16 matmul peak {peak:,.0f} GFLOP/s)"
    report("scoring", table(title, head, rows_out))
    return {"speedup": base / ours, "share_of_peak": achieved / peak}


if __name__ == "__main__":
    main()
