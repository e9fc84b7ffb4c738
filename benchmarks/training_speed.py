"""RM training in ``full`` mode vs plain TRL ``RewardTrainer``, side by side in one run.

Same data (synthetic pairs), same backbone (the packaged MiniLM), same batch size and number of
optimizer steps, no selection set on either side. Plain TRL gets the conversational dataset and
tokenizes it itself (its default path); the project pre-tokenizes and
trains in bf16 where the CPU has it natively (TRL's default too) without gradient checkpointing
(TRL's default re-computes activations to save memory a 22M-parameter model does not need).

    python benchmarks/training_speed.py                 # 300 pairs, 38 steps, 3 repeats
    python benchmarks/training_speed.py --pairs 200 --steps 10 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, report, summary, table, timed  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def plain_trl(rows: list[dict], steps: int, batch: int) -> None:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from synpref.models.embedding import default_embedder

    name = default_embedder()
    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1)
    data = Dataset.from_list(
        [
            {
                "chosen": r["conversation"] + [{"role": "assistant", "content": r["chosen"]}],
                "rejected": r["conversation"] + [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    tok.chat_template = tok.chat_template or "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=steps,
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
            save_strategy="no",
            max_length=256,
            seed=0,
        )
        RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok).train()


def project(rows: list[dict], steps: int, batch: int) -> None:
    from synpref.models.reward_model import train_reward_model
    from synpref.settings import RMConfig

    cfg = RMConfig(mode="full", batch_size=batch, min_steps=steps, epochs=1)
    with tempfile.TemporaryDirectory() as out:
        train_reward_model(rows, [], cfg, out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--steps", type=int, default=38)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    from synpref.simulation.synthetic import generate

    rows = generate(a.pairs, seed=0)[0].to_pylist()
    per_epoch = -(-a.pairs // a.batch)
    steps = -(-max(a.steps, 1) // per_epoch) * per_epoch  # the project trains whole epochs: TRL gets as many steps
    runs = interleaved(
        {
            "plain TRL": lambda: timed(lambda: plain_trl(rows, steps, a.batch)),
            "project": lambda: timed(lambda: project(rows, steps, a.batch)),
        },
        a.repeats,
    )
    base, ours = summary(runs["plain TRL"], "s"), summary(runs["project"], "s")
    rows_out = [
        ["plain TRL RewardTrainer", base["min"], base["median"], steps * a.batch / base["median"], 1.0],
        [
            "project (full mode)",
            ours["min"],
            ours["median"],
            steps * a.batch / ours["median"],
            base["median"] / ours["median"],
        ],
    ]
    head = ["run", "min s", "median s", "pairs/s", "speed vs TRL"]
    title = f"RM training: {steps} steps × batch {a.batch} on {a.pairs} pairs ({a.repeats} repeats, interleaved)"
    report("training", table(title, head, rows_out))
    return {"speedup": base["median"] / ours["median"]}


if __name__ == "__main__":
    main()
