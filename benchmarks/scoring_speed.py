"""RM scoring at realistic lengths: the project's path vs what a competent user writes, on the same cores
and in the same precision (bf16 weights where the CPU has native bf16, fp32 else).

- one pair at a time: a warmed loop, the pair's two sequences in one forward pass;
- plain HF batching: batches of 32 pairs in input order, the tokenizer pads each batch to its longest;
- project: ``RewardModel.reward_diff`` — token-budget batches over length-sorted sequences, and for decoders the
  pair's shared conversation encoded once (``models.shared_prefix``, the default); for decoders also the same
  without sharing, to show what sharing buys.

Settings: the packaged MiniLM encoder (text pairs) at ~256 tokens per sequence; a random-initialised
Qwen3-architecture decoder (chat template; hidden 384, 6 layers: MiniLM's width and depth) with single-turn
pairs (a short prompt: ~20% of the tokens shared) at ~256 and ~1,024 tokens, and with multi-turn pairs whose
conversation is ~70% of the tokens at ~1,024. Responses are spread over about [0.4, 1] × their share, as
in-the-wild responses are. Achieved FLOP/s counts useful work on real tokens of the two sequences as plain
scoring sees them (2 × non-embedding parameters per token plus attention), so a path that skips work (the shared
prefix) can exceed 100% of the peak. Peak: the median of ``2048×2048 @ 2048×2048`` matmuls in the same precision.

    python benchmarks/scoring_speed.py                                 # 96 pairs per setting, 3 repeats
    python benchmarks/scoring_speed.py --pairs 8 --repeats 1 --settings encoder-256   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, peak_flops, report, summary, table, timed  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PLAIN_BATCH = 32


def rm_dir(directory: Path, decoder: bool) -> Path:
    """A project RM directory: the packaged MiniLM with a 1-output head, or a random Qwen3-architecture decoder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from synpref.models.reward_model import resolved_backbone
    from synpref.settings import RMConfig
    from synpref.simulation.random_models import random_reward_model

    if decoder:
        name = str(random_reward_model(directory / "model", "qwen3", "minilm-sized"))
        cfg = RMConfig(mode="full", max_length=2048)
    else:
        cfg = RMConfig(mode="full", max_length=512)
        name = resolved_backbone(cfg)
        AutoModelForSequenceClassification.from_pretrained(name, num_labels=1).save_pretrained(directory / "model")
        AutoTokenizer.from_pretrained(name).save_pretrained(directory / "model")
    (directory / "rm_config.json").write_text(json.dumps({**cfg.model_dump(), "backbone": name}))
    return directory


SETTINGS = {  # name: (decoder, tokens per sequence, share of them in the shared conversation)
    "encoder-256": (False, 256, 0.2),
    "decoder-256": (True, 256, 0.2),
    "decoder-1024": (True, 1024, 0.2),
    "decoder-1024-multiturn": (True, 1024, 0.7),
}


def long_pairs(n: int, tokens: int, shared: float = 0.2, seed: int = 0) -> list[dict]:
    """Synthetic pairs of about ``tokens`` word pieces a sequence: a conversation of ``shared`` of them (one user
    turn, or alternating turns when it is most of them) and responses spread over [0.4, 1] × the rest."""
    from synpref.simulation.synthetic import generate

    rng = random.Random(seed)
    words = "the answer explains each step of the method and checks the result against the question".split()
    text = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    rows = generate(n, seed=seed)[0].to_pylist()
    turns = 1 if shared < 0.5 else 5
    for r in rows:
        rest = tokens * (1 - shared)
        r["chosen"] = text(int(rest * rng.uniform(0.4, 1.0)))
        r["rejected"] = text(int(rest * rng.uniform(0.4, 1.0)))
        roles = ["user", "assistant"] * turns
        r["conversation"] = [{"role": roles[t], "content": text(int(tokens * shared / turns))} for t in range(turns)]
    return rows


def plain_inputs(tok, rows: list[dict], max_length: int) -> list[dict]:
    """What a competent user feeds the model: chat-formatted text (decoders) or text pairs, batched as they come."""
    from synpref.models.reward_model import _texts, is_chat

    batches = []
    for s in range(0, len(rows), PLAIN_BATCH):
        part = rows[s : s + PLAIN_BATCH]
        for side in ("chosen", "rejected"):
            if is_chat(tok):
                convs = [list(r["conversation"]) + [{"role": "assistant", "content": r[side]}] for r in part]
                texts = tok.apply_chat_template(convs, tokenize=False)
                enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            else:
                p, resp = _texts(part, side)
                enc = tok(
                    p, resp, padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt"
                )
            batches.append(enc)
    return batches


def run(model, batches: list) -> None:
    import torch

    with torch.inference_mode():
        for enc in batches:
            model(**enc)


def useful_flops(model, lengths: list[int]) -> float:
    """2 × non-embedding parameters per real token + attention (QKᵀ and AV) per layer."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    attention = sum(4 * n * n * cfg.hidden_size * cfg.num_hidden_layers for n in lengths)
    return 2 * params * sum(lengths) + attention


def measure(setting: str, pairs: int, repeats: int, peak: float) -> list:
    from synpref.models.reward_model import RewardModel, load_backbone, scoring_kwargs, tokenize_side

    decoder, tokens, shared = SETTINGS[setting]
    rows = long_pairs(pairs, tokens, shared)
    with tempfile.TemporaryDirectory() as tmp:
        rm = RewardModel(rm_dir(Path(tmp), decoder), device="cpu")
        unshared = RewardModel(Path(tmp), device="cpu", shared_prefix=False)
        rm.reward_diff(rows[:4])  # load and warm
        unshared.reward_diff(rows[:4])
        tok, plain = load_backbone(str(Path(tmp) / "model"), **scoring_kwargs("cpu"))
        plain.eval()
        batched = plain_inputs(tok, rows, rm.cfg.max_length)
        singles = [b for r in rows for b in plain_inputs(tok, [r], rm.cfg.max_length)]
        run(plain, singles[:4])  # warm
        lengths = [len(i) for s in ("chosen", "rejected") for i in tokenize_side(tok, rows, s, rm.cfg.max_length)[0]]
        paths = {
            "single": lambda: timed(lambda: run(plain, singles)),
            "plain": lambda: timed(lambda: run(plain, batched)),
            "project": lambda: timed(lambda: rm.reward_diff(rows)),
        }
        if decoder:
            paths["unshared"] = lambda: timed(lambda: unshared.reward_diff(rows))
        runs = interleaved(paths, repeats)
        flops = useful_flops(plain, lengths)
        rm.close()
    label = "decoder (Qwen3 arch., chat template)" if decoder else "encoder (packaged MiniLM)"
    label += f", {'multi-turn' if shared > 0.5 else 'single-turn'} ({shared:.0%} shared)" if decoder else ""
    mean = sum(lengths) / len(lengths)
    out, base, loop = [], summary(runs["plain"], "s")["median"], summary(runs["single"], "s")["median"]
    names = {
        "single": "one pair at a time",
        "plain": f"plain HF batching ({PLAIN_BATCH})",
        "unshared": "project without shared prefixes",
        "project": "project (shared prefixes, token budget, sorted)" if decoder else "project (token budget, sorted)",
    }
    for key in runs:
        s = summary(runs[key], "s")["median"]
        gf = flops / s / 1e9
        out.append([f"{label}, {mean:.0f} tok", names[key], s, pairs / s, gf, 100 * gf / peak, base / s, loop / s])
    return out


def main(argv: list[str] | None = None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    from synpref.models.device import cpu_has_bf16

    precision = "bf16" if cpu_has_bf16() else "fp32"
    peak = peak_flops("cpu", bf16=precision == "bf16") / 1e9  # GFLOP/s
    rows_out = [row for setting in a.settings for row in measure(setting, a.pairs, a.repeats, peak)]
    head = ["model, mean tokens", "path", "median s", "pairs/s", "GFLOP/s", f"% of {precision} peak"]
    head += ["speed vs plain HF", "speed vs one pair at a time"]
    title = f"RM scoring of {a.pairs} pairs per setting ({precision} matmul peak {peak:,.0f} GFLOP/s, same precision)"
    report("scoring", table(title, head, rows_out))
    return {f"{r[0]} / {r[1]}": {"pairs_per_s": r[3], "vs_plain": r[6], "vs_loop": r[7]} for r in rows_out}


if __name__ == "__main__":
    main()
