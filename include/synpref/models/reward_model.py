"""Bradley-Terry reward models (paper §3.2 step 2): loss ``-log σ(r(x,y_w) − r(x,y_l))``.

Two modes:
- ``full`` (default): fine-tune a sequence-classification backbone (num_labels=1) with TRL's
  RewardTrainer; the checkpoint is chosen by accuracy on the selection set (gold) through
  ``load_best_model_at_end``. Chat backbones (a tokenizer with a chat template: Qwen3, Llama 3, ...)
  see each pair as TRL formats conversational data, the conversation plus the response as the final
  assistant turn through the chat template, cut from the left to ``max_length`` so the final turn
  stays (counted). Encoders without a template (the packaged MiniLM) see (prompt, response) text
  pairs with ``longest_first`` truncation. Inputs are pre-tokenised, so TRL's length filter drops
  nothing (drops are still counted).
- ``frozen``: a frozen sentence-transformers encoder + a small MLP head trained with the same
  BT loss; the epoch with the best selection accuracy is kept. Cheap on CPUs.
Both run on the worker's device (``synpref.models.device``), bf16 where it is native. Scoring
batches by a token budget over length-sorted sequences. ``p = σ(r_w − r_l)`` is computed from the
reward difference (``log p = −softplus(−d)``), so it never saturates by accident.
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
from synpref.models import shared_prefix
from synpref.models.device import (
    bf16_on,
    in_launched_process,
    pinned_gpu,
    resolve_device,
    train_processes,
    visible_gpus,
)
from synpref.models.embedding import default_embedder
from synpref.progress import Progress, log
from synpref.schema import prompt_text
from synpref.settings import SCORE_TOKEN_BUDGET, RMConfig

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


def _encode_pairs(prompts: list[str], responses: list[str], backbone: str, device: str | None = None) -> np.ndarray:
    from synpref.models.embedding import embed_texts

    key = (backbone, tuple(prompts), tuple(responses))
    if _last_encoding[0] != key:
        texts = [f"{p}\nassistant: {r}" for p, r in zip(prompts, responses)]
        _last_encoding[:] = [key, embed_texts(texts, backbone, device=device)]
    return _last_encoding[1]


def _head(dim: int, hidden: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))


def _bt_accuracy(diff: np.ndarray) -> float:
    return float((diff > 0).mean()) if len(diff) else float("nan")


def _train_frozen(train: list[dict], select: list[dict], cfg: RMConfig, local: Path, device: str) -> dict:
    import torch
    from safetensors.torch import save_file

    backbone = resolved_backbone(cfg)
    enc = lambda rows, side: torch.from_numpy(_encode_pairs(*_texts(rows, side), backbone, device))  # noqa: E731
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


class BackboneError(ValueError):
    """A reward-model backbone that cannot be loaded (message is one line, naming it)."""


def load_backbone(name: str, **model_kwargs):
    """(tokenizer, sequence-classification model with one output) of a hub id or local path, offline-safe:
    a backbone that is neither local nor cached is a one-line ``BackboneError`` naming it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **model_kwargs)
    except (OSError, ValueError) as e:
        offline = " (offline: HF_HUB_OFFLINE=1, nothing is downloaded)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise BackboneError(
            f"RM backbone {name!r} cannot be loaded{offline}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if tok.pad_token is None:  # decoders (Llama) ship without one: pad with EOS, as TRL does
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # the classification head reads the last non-pad token
    model.config.pad_token_id = tok.pad_token_id
    return tok, model


def is_chat(tokenizer) -> bool:
    """A chat backbone: its tokenizer carries a chat template (pairs are then formatted through it)."""
    return bool(getattr(tokenizer, "chat_template", None))


def tokenize_side(tokenizer, rows: list[dict], side: str, max_length: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids of (conversation, ``side`` response) for every row, and which were cut to ``max_length``.

    Chat backbones: ``apply_chat_template(conversation + [assistant: response])`` exactly as TRL's
    RewardTrainer tokenises conversational data, then cut from the left (the final assistant turn stays).
    Encoders: (prompt text, response) pairs, ``longest_first`` truncation."""
    if is_chat(tokenizer):
        convs = [[dict(m) for m in r["conversation"]] + [{"role": "assistant", "content": r[side]}] for r in rows]
        full = tokenizer.apply_chat_template(convs, tokenize=True, return_dict=True)["input_ids"] if rows else []
        return [ids[-max_length:] for ids in full], [len(ids) > max_length for ids in full]
    prompts, responses = _texts(rows, side)
    if not rows:
        return [], []
    whole = tokenizer(prompts, responses)["input_ids"]
    cut = tokenizer(prompts, responses, truncation="longest_first", max_length=max_length)["input_ids"]
    return cut, [len(a) > max_length for a in whole]


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


def _train_full(train: list[dict], select: list[dict], cfg: RMConfig, local: Path, device: str) -> dict:
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import RewardConfig, RewardTrainer

    backbone = resolved_backbone(cfg)
    _seed_everything(cfg.seed)
    tok, model = load_backbone(backbone)
    truncated = {"train": 0, "select": 0}

    def ds(rows: list[dict], name: str) -> Dataset:
        chosen, cut_c = tokenize_side(tok, rows, "chosen", cfg.max_length)
        rejected, cut_r = tokenize_side(tok, rows, "rejected", cfg.max_length)
        truncated[name] = sum(a or b for a, b in zip(cut_c, cut_r))
        return Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})

    train_ds = ds(train, "train")
    eval_ds = ds(select, "select") if select else None
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
        use_cpu=device == "cpu",  # else the Trainer (accelerate) places the model on the worker's GPU(s)
        bf16=bf16_on(device),  # mixed precision where the device has native bf16 (TRL's default is on)
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
    if trainer.is_world_process_zero():  # the checkpoint is written once, however many processes trained
        trainer.model.save_pretrained(str(local / "model"))
        tok.save_pretrained(str(local / "model"))
        cleanup(local / "trainer")
    return {
        "train_pairs_used": used,
        "dropped_too_long": len(train) - used,
        "truncated": truncated,
        "chat_template": is_chat(tok),
        "select_accuracy": select_acc,
        "train_loss": result.training_loss,
        "best_checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
        "steps": trainer.state.global_step,
        "processes": trainer.args.world_size,
        "history": [
            {k: h[k] for k in ("step", "loss", "eval_loss", "eval_accuracy") if k in h}
            for h in trainer.state.log_history
        ],
    }


def _train_launched(train: list[dict], select: list[dict], cfg: RMConfig, local: Path, device: str, n: int) -> dict:
    """Full-mode training in ``n`` data-parallel processes (torchrun; TRL/accelerate's DDP inside), one per GPU
    (or CPU processes with gloo). Inputs go through a local pickle; rank 0 writes the checkpoint and metrics.
    A pinned ``cuda:N`` trains in one process that sees only GPU N (the Trainer would otherwise take GPU 0)."""
    import pickle
    import subprocess
    import sys

    job = local / "launch"
    job.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if (gpu := pinned_gpu(device)) is not None:
        env["CUDA_VISIBLE_DEVICES"], device = gpu, "cuda:0"
    (job / "inputs.pkl").write_bytes(pickle.dumps((train, select, cfg.model_dump(), device)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
    log.info("RM training: %d data-parallel process(es) on %s (torchrun)", n, device)
    done = subprocess.run([*cmd, "-m", "synpref.models.train_worker", str(job)], check=False, env=env)
    if done.returncode != 0 or not (job / "metrics.json").exists():
        raise RuntimeError(f"RM training in {n} processes failed (exit {done.returncode}): see the task log above")
    (job / "model").rename(local / "model")
    metrics = json.loads((job / "metrics.json").read_text())
    cleanup(job)
    return metrics


def train_launched_worker(job: Path) -> None:
    """One process of ``_train_launched`` (``python -m synpref.models.train_worker <job>``)."""
    import pickle

    train, select, cfg, device = pickle.loads((job / "inputs.pkl").read_bytes())
    metrics = _train_full(train, select, RMConfig(**cfg), job, device)
    if int(os.environ.get("RANK", "0")) == 0:
        (job / "metrics.json").write_text(json.dumps(metrics, default=str))


def train_reward_model(train: list[dict], select: list[dict], cfg: RMConfig, out_dir: PathLike) -> dict:
    """Train a BT RM on ``train`` (checkpoint chosen on ``select``) and save it with its metrics under ``out_dir``."""
    if not train:
        raise ValueError("no training pairs for the reward model")
    device = resolve_device()
    local = local_scratch("rm")
    try:
        launch = cfg.mode == "full" and not in_launched_process()
        processes = train_processes(device) if launch else 1
        # a pinned GPU among several: one process that sees only it (in-process, the Trainer would take them all)
        if processes > 1 or (launch and pinned_gpu(device) is not None and visible_gpus() > 1):
            metrics = _train_launched(train, select, cfg, local, device, processes)
        else:
            metrics = (_train_full if cfg.mode == "full" else _train_frozen)(train, select, cfg, local, device)
        metrics.update({"train_pairs": len(train), "select_pairs": len(select), "device": device})
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


def scoring_kwargs(device: str) -> dict:
    """How a full RM is loaded for scoring on ``device``: bf16 weights where bf16 is native (no per-call casts
    as under autocast), fp32 else; SDPA attention (flash/fused kernels; on this CPU as fast as eager for short
    sequences and 2x faster at ~800 tokens, measured)."""
    import torch

    return {"dtype": torch.bfloat16 if bf16_on(device) else torch.float32, "attn_implementation": "sdpa"}


def token_budget(device: str) -> int:
    """Tokens per scoring forward pass on ``device`` (``SCORE_TOKEN_BUDGET`` by device type)."""
    return SCORE_TOKEN_BUDGET[device.split(":")[0]]


def token_batches(lengths: list[int], budget: int) -> list[np.ndarray]:
    """Indices of sequences in batches of at most ``budget`` tokens (padding included), shortest first.

    Sorted by length, a batch's padding is small; a long sequence gets a batch of its own when it alone
    exceeds the budget."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        if end - start > 1 and (end - start) * lengths[order[end - 1]] > budget:
            batches.append(order[start : end - 1])
            start = end - 1
    if start < len(order):
        batches.append(order[start:])
    return batches


def score_token_ids(model, ids: list[list[int]], pad_id: int, device: str, budget: int) -> np.ndarray:
    """Rewards of token sequences by a sequence-classification ``model`` on ``device``: token-budget batches over
    length-sorted sequences (little padding), right-padded, under inference_mode."""
    import torch

    out = np.empty(len(ids), dtype=np.float64)
    with torch.inference_mode(), Progress("RM scoring", len(ids), "responses") as progress:
        for idx in token_batches([len(i) for i in ids], budget):
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = logits[:, 0].float().cpu().double().numpy()
            progress.update(len(idx))
    return out


class RewardModel:
    """A trained RM loaded from storage; ``reward_diff(rows)`` = r(x, chosen) − r(x, rejected).

    It runs on ``device`` (default: the worker's ``SYNPREF_DEVICE``; ``self.device`` is the resolved one)
    and counts the pairs whose input was cut to the RM's ``max_length`` in ``self.truncated``."""

    def __init__(
        self, rm_dir: PathLike, device: str | None = None, budget: int | None = None, shared_prefix: bool = True
    ):
        self.dir = as_path(rm_dir)
        self.shared_prefix = shared_prefix  # decoder RMs: encode a pair's conversation once (``shared_prefix``)
        cfg = read_json(self.dir / "rm_config.json")
        self.cfg = RMConfig(**cfg)
        self.device = resolve_device(device)
        self.token_budget = budget or token_budget(self.device)
        self.truncated = 0
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
                self._tok, model = load_backbone(str(self._local / "model"), **scoring_kwargs(self.device))
                self._model = model.to(self.device).eval()
        return self._model

    def score_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Scalar rewards of token sequences (see ``score_token_ids``)."""
        model = self._load()
        return score_token_ids(model, ids, self._tok.pad_token_id or 0, self.device, self.token_budget)

    def reward_diff(self, rows: list[dict]) -> np.ndarray:
        import torch

        model = self._load()
        if not rows:
            return np.zeros(0)
        if self.cfg.mode == "frozen":
            p, c = _texts(rows, "chosen")
            _, r = _texts(rows, "rejected")
            x = torch.from_numpy(_encode_pairs(p + p, c + r, resolved_backbone(self.cfg), self.device))
            with torch.inference_mode():
                both = model(x).squeeze(-1).double().numpy()
        else:
            chosen, cut_c = tokenize_side(self._tok, rows, "chosen", self.cfg.max_length)
            rejected, cut_r = tokenize_side(self._tok, rows, "rejected", self.cfg.max_length)
            self.truncated += sum(a or b for a, b in zip(cut_c, cut_r))
            if self.shared_prefix and shared_prefix.applies(model):
                pad = self._tok.pad_token_id or 0
                c, r = shared_prefix.score_pairs(
                    model, chosen, rejected, pad, self.device, self.token_budget, self.score_ids
                )
                return c - r
            both = self.score_ids(chosen + rejected)
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
