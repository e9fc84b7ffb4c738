"""Bradley-Terry reward models (paper §3.2 step 2): loss ``-log σ(r(x,y_w) − r(x,y_l))``.

Two modes:
- ``full`` (default): fine-tune a sequence-classification backbone (num_labels=1) with TRL's
  RewardTrainer; the checkpoint is chosen by accuracy on the selection set (gold) through
  ``load_best_model_at_end``. Inputs are pre-tokenised as (prompt, response) text pairs with
  ``longest_first`` truncation so TRL's length filter drops nothing (drops are still counted).
- ``frozen``: a frozen sentence-transformers encoder + a small MLP head trained with the same
  BT loss; the epoch with the best selection accuracy is kept. Cheap on CPUs.
``p = σ(r_w − r_l)`` is computed from the reward difference (``log p = −softplus(−d)``), so it
never saturates by accident.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from synpref.io.storage import PathLike, as_path, cleanup, download_dir, local_scratch, read_json, upload_dir
from synpref.models.embedding import bf16_supported, default_embedder
from synpref.progress import Progress, log
from synpref.schema import prompt_text
from synpref.settings import RMConfig

EVAL_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("task_category", pa.string()),
        ("reward_diff", pa.float64()),
        ("p", pa.float64()),
        ("log_p", pa.float64()),
        ("correct", pa.bool_()),
    ]
)


def resolved_backbone(cfg: RMConfig) -> str:
    """The RM's backbone: the configured checkpoint, else the packaged all-MiniLM-L6-v2."""
    return cfg.backbone or default_embedder()


def p_from_diff(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p, log p) for reward differences: stable in both tails."""
    diff = np.asarray(diff, dtype=np.float64)
    log_p = -np.logaddexp(0.0, -diff)
    return np.exp(log_p), log_p


def _texts(rows: list[dict], side: str) -> tuple[list[str], list[str]]:
    return [prompt_text(r["conversation"]) for r in rows], [r[side] for r in rows]


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- frozen encoder + BT head --------------------------------------------------------------

_last_encoding: list = [None, None]  # (key, features) of the latest call: two RMs on one backbone encode once


def _encode_pairs(prompts: list[str], responses: list[str], backbone: str) -> np.ndarray:
    from synpref.models.embedding import embed_texts

    key = (backbone, tuple(prompts), tuple(responses))
    if _last_encoding[0] != key:
        texts = [f"{p}\nassistant: {r}" for p, r in zip(prompts, responses)]
        _last_encoding[:] = [key, embed_texts(texts, backbone)]
    return _last_encoding[1]


def _head(dim: int, hidden: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))


def _bt_accuracy(diff: np.ndarray) -> float:
    return float((diff > 0).mean()) if len(diff) else float("nan")


def _train_frozen(train: list[dict], select: list[dict], cfg: RMConfig, local: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    backbone = resolved_backbone(cfg)
    enc = lambda rows, side: torch.from_numpy(_encode_pairs(*_texts(rows, side), backbone))  # noqa: E731
    xw, xl = enc(train, "chosen"), enc(train, "rejected")
    sw, sl = (enc(select, "chosen"), enc(select, "rejected")) if select else (None, None)
    state, metrics = fit_bt_head(xw, xl, sw, sl, cfg)
    save_file(state, str(local / "head.safetensors"))
    return {**metrics, "train_pairs_used": len(train), "dropped_too_long": 0}


def pair_features(rows: list[dict], backbone: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frozen-encoder features of (prompt + chosen) and (prompt + rejected) for every row."""
    name = backbone or resolved_backbone(RMConfig())
    return _encode_pairs(*_texts(rows, "chosen"), name).copy(), _encode_pairs(*_texts(rows, "rejected"), name).copy()


def head_scores(state: dict, x) -> np.ndarray:
    """Rewards of a BT head (``fit_bt_head``'s state) on features ``x``."""
    import torch

    head = _head(state["0.weight"].shape[1], state["0.weight"].shape[0])
    head.load_state_dict(state)
    with torch.inference_mode():
        return head(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).double().numpy()


def fit_bt_head(xw, xl, sw, sl, cfg: RMConfig) -> tuple[dict, dict]:
    """A BT head on frozen features of (chosen, rejected); the epoch with the best selection accuracy is kept."""
    import torch

    _seed_everything(cfg.seed)
    head = _head(xw.shape[1], cfg.head_hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (-1.0, -1, None)
    history = []
    with Progress("training the BT head", cfg.head_epochs, "epochs", every_s=5.0) as progress:
        for epoch in range(cfg.head_epochs):
            progress.update()
            head.train()
            perm = torch.randperm(len(xw), generator=gen)
            for i in range(0, len(perm), max(cfg.batch_size, 64)):
                b = perm[i : i + max(cfg.batch_size, 64)]
                loss = -torch.nn.functional.logsigmoid(head(xw[b]) - head(xl[b])).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            head.eval()
            with torch.inference_mode():
                acc = _bt_accuracy((head(sw) - head(sl)).squeeze(-1).numpy()) if sw is not None else float(epoch)
            history.append({"epoch": epoch, "select_accuracy": acc})
            if acc > best[0]:
                best = (acc, epoch, {k: v.detach().clone() for k, v in head.state_dict().items()})
    return best[2], {"best_epoch": best[1], "select_accuracy": best[0] if sw is not None else None, "history": history}


# --- full fine-tuning with TRL --------------------------------------------------------------


def _tokenize(tokenizer, prompts: list[str], responses: list[str], max_length: int) -> list[list[int]]:
    enc = tokenizer(prompts, responses, truncation="longest_first", max_length=max_length)
    return enc["input_ids"]


CURVE = ("step", "loss", "eval_loss", "eval_accuracy")  # what a training curve records per logged step


def _progress_callback():
    """Training progress in the task log: step of max steps, rate, loss and selection accuracy when evaluated."""
    import time

    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()
            log.info("RM training: %s steps planned", f"{state.max_steps:,}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            rate = state.global_step / max(1e-9, time.monotonic() - self.start)
            shown = {k: round(v, 4) for k, v in (logs or {}).items() if k in ("loss", "eval_loss", "eval_accuracy")}
            log.info("RM training: step %d/%d (%.2f steps/s) %s", state.global_step, state.max_steps, rate, shown)

    return ProgressCallback()


def _train_full(train: list[dict], select: list[dict], cfg: RMConfig, local: Path) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, EarlyStoppingCallback
    from trl import RewardConfig, RewardTrainer

    backbone = resolved_backbone(cfg)
    _seed_everything(cfg.seed)
    tok = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id

    def ds(rows: list[dict]) -> Dataset:
        p, c = _texts(rows, "chosen")
        _, r = _texts(rows, "rejected")
        return Dataset.from_dict(
            {"chosen_ids": _tokenize(tok, p, c, cfg.max_length), "rejected_ids": _tokenize(tok, p, r, cfg.max_length)}
        )

    train_ds = ds(train)
    eval_ds = ds(select) if select else None
    eos = tok.eos_token or tok.sep_token
    # small sets (a few hundred gold pairs) get enough updates: at least min_steps, with the checkpoint
    # chosen on the selection set and early stopping once it stops improving
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / max(1, math.ceil(len(train) / cfg.batch_size))))
    steps = max(1, min(cfg.eval_steps, math.ceil(len(train) / cfg.batch_size)))
    args = RewardConfig(
        output_dir=str(local / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=32,
        learning_rate=cfg.learning_rate,
        num_train_epochs=epochs,
        lr_scheduler_type="linear",
        use_cpu=True,
        bf16=bf16_supported(),  # mixed precision where the CPU has native bf16 (TRL's default is on)
        gradient_checkpointing=False,  # TRL's default re-computes activations: no memory to save at this size
        eos_token=eos,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        disable_tqdm=True,
        logging_steps=steps,
        save_total_limit=2,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=steps,
        save_strategy="steps" if eval_ds is not None else "no",
        save_steps=steps,
        load_best_model_at_end=eval_ds is not None,
        metric_for_best_model="accuracy",
        greater_is_better=True,
    )
    stop = [EarlyStoppingCallback(early_stopping_patience=cfg.patience)] if eval_ds is not None else []
    stop.append(_progress_callback())
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok, callbacks=stop
    )
    used = len(trainer.train_dataset)
    result = trainer.train()
    select_acc = trainer.evaluate()["eval_accuracy"] if eval_ds is not None else None
    trainer.model.save_pretrained(str(local / "model"))
    tok.save_pretrained(str(local / "model"))
    cleanup(local / "trainer")
    return {
        "train_pairs_used": used,
        "dropped_too_long": len(train) - used,
        "select_accuracy": select_acc,
        "train_loss": result.training_loss,
        "best_checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
        "steps": trainer.state.global_step,
        "history": [
            {k: h[k] for k in ("step", "loss", "eval_loss", "eval_accuracy") if k in h}
            for h in trainer.state.log_history
        ],
    }


def train_reward_model(train: list[dict], select: list[dict], cfg: RMConfig, out_dir: PathLike) -> dict:
    """Train a BT RM on ``train`` (checkpoint chosen on ``select``) and save it with its metrics under ``out_dir``."""
    if not train:
        raise ValueError("no training pairs for the reward model")
    local = local_scratch("rm")
    try:
        metrics = (_train_full if cfg.mode == "full" else _train_frozen)(train, select, cfg, local)
        metrics.update({"train_pairs": len(train), "select_pairs": len(select)})
        (local / "rm_config.json").write_text(
            json.dumps(
                {**cfg.model_dump(), "backbone": resolved_backbone(cfg) if cfg.backbone else ""},
                sort_keys=True,
                indent=2,
            )
        )
        (local / "metrics.json").write_text(json.dumps(metrics, sort_keys=True, indent=2, default=str))
        upload_dir(local, out_dir)
    finally:
        cleanup(local)
    return metrics


SCORE_BATCH = 64  # sequences per forward pass when scoring (sorted by length)


def scoring_dtype() -> dict:
    """How a full RM is loaded for scoring: bf16 weights where the CPU has native bf16 (no per-call casts
    as under autocast), eager attention (faster than CPU flash attention at these lengths); fp32 else."""
    import torch

    return {"dtype": torch.bfloat16 if bf16_supported() else torch.float32, "attn_implementation": "eager"}


class RewardModel:
    """A trained RM loaded from storage; ``reward_diff(rows)`` = r(x, chosen) − r(x, rejected)."""

    def __init__(self, rm_dir: PathLike):
        self.dir = as_path(rm_dir)
        cfg = read_json(self.dir / "rm_config.json")
        self.cfg = RMConfig(**cfg)
        scratch = local_scratch("rm-load")
        self._local = download_dir(self.dir, scratch)
        self._owned = self._local == scratch
        if not self._owned:
            cleanup(scratch)
        self._model = None

    def _load(self):
        from safetensors.torch import load_file

        if self._model is None:
            if self.cfg.mode == "frozen":
                state = load_file(str(self._local / "head.safetensors"))
                head = _head(state["0.weight"].shape[1], self.cfg.head_hidden)
                head.load_state_dict(state)
                self._model = head.eval()
            else:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from transformers import AutoModelForSequenceClassification, AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(str(self._local / "model"))
                self._model = AutoModelForSequenceClassification.from_pretrained(
                    str(self._local / "model"), **scoring_dtype()
                ).eval()
        return self._model

    def rewards(self, prompts: list[str], responses: list[str], batch_size: int = SCORE_BATCH) -> np.ndarray:
        """Scalar rewards: batched, sorted by length (less padding), inference_mode, bf16 weights where native."""
        import torch

        model = self._load()
        if not prompts:
            return np.zeros(0)
        if self.cfg.mode == "frozen":
            x = torch.from_numpy(_encode_pairs(prompts, responses, resolved_backbone(self.cfg)))
            with torch.inference_mode():
                return model(x).squeeze(-1).double().numpy()
        ids = _tokenize(self._tok, prompts, responses, self.cfg.max_length)
        order = np.argsort([len(i) for i in ids], kind="stable")
        out = np.empty(len(ids), dtype=np.float64)
        pad = self._tok.pad_token_id or 0
        with torch.inference_mode(), Progress("RM scoring", len(order), "responses") as progress:
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                width = max(len(ids[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                out[idx] = model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().double().numpy()
                progress.update(len(idx))
        return out

    def reward_diff(self, rows: list[dict]) -> np.ndarray:
        p, c = _texts(rows, "chosen")
        _, r = _texts(rows, "rejected")
        both = self.rewards(p + p, c + r)
        return both[: len(rows)] - both[len(rows) :]

    def close(self) -> None:
        if self._owned:
            cleanup(self._local)


def evaluate(rm: RewardModel, rows: list[dict]) -> tuple[pa.Table, dict]:
    """p for every pair, accuracy overall and per task category, and the errors (p ≤ 0.5)."""
    diff = rm.reward_diff(rows) if rows else np.zeros(0)
    p, log_p = p_from_diff(diff)
    table_rows = [
        {
            "pair_id": r["pair_id"],
            "task_category": r.get("task_category") or "unknown",
            "reward_diff": float(d),
            "p": float(pp),
            "log_p": float(lp),
            "correct": bool(pp > 0.5),
        }
        for r, d, pp, lp in zip(rows, diff, p, log_p)
    ]
    per_cat: dict[str, list[bool]] = defaultdict(list)
    for t in table_rows:
        per_cat[t["task_category"]].append(t["correct"])
    metrics = {
        "pairs": len(rows),
        "accuracy": float(np.mean([t["correct"] for t in table_rows])) if rows else None,
        "per_category": {c: {"pairs": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(per_cat.items())},
        "errors": [t["pair_id"] for t in table_rows if not t["correct"]],
        "mean_p": float(np.mean(p)) if rows else None,
    }
    return pa.Table.from_pylist(table_rows, schema=EVAL_SCHEMA), metrics
