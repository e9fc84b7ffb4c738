"""Scoring a pair's two responses from one encoding of the conversation they share (decoder reward models).

A preference pair's chosen and rejected sequences are the same conversation followed by two different answers;
scored as two sequences, the conversation is encoded twice. A decoder (causal) RM sees every token only through
the tokens before it, so the conversation's keys and values are the same in both: encode it once, keep its
KV cache, and run each response on top of it. Exact up to floating-point rounding (tested against plain scoring).

Per batch of pairs (sorted by conversation length, sized by tokens): one forward pass over the right-padded
shared prefixes (``use_cache``), the cache repeated for the two responses of each pair, one forward pass over the
right-padded responses with an attention mask that hides the prefixes' padding and position ids that continue
each pair's own prefix. The reward is read where the model's own head reads it: at the rightmost token that is
not the pad token (``GenericForSequenceClassification``). Pairs that share too little (fewer than ``MIN_SHARED``
tokens, or less than ``MIN_SHARE`` of their length: not worth a second pass), or whose reward token would fall
inside the prefix, are scored plainly.
"""

from __future__ import annotations

import numpy as np

from synpref.progress import Progress

MIN_SHARED = 16  # shared prefix tokens below which a pair is scored as two plain sequences
# ... and the share of a pair's mean sequence length below which it is too (measured on 2 CPU cores: with a short
# prompt, ~20% shared at ~800 tokens, the second pass and its padding cost more than the prefix saves)
MIN_SHARE = 0.4


def applies(model) -> bool:
    """A decoder sequence-classification RM with a ``score`` head on a cache-capable base model (Llama, Qwen3,
    Mistral, Gemma, ...); encoders keep the plain path."""
    from transformers.modeling_layers import GenericForSequenceClassification

    return isinstance(model, GenericForSequenceClassification) and not model.config.is_encoder_decoder


def shared_length(a: list[int], b: list[int], pad_id: int) -> int:
    """Tokens the two sequences share at their start, leaving each at least its reward token after it (the
    rightmost non-pad token), so that both rewards come from the second pass; 0 when that is impossible."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return min(n, _reward_index(a, pad_id), _reward_index(b, pad_id))


def _reward_index(ids: list[int], pad_id: int) -> int:
    """Where a sequence-classification head reads the reward: the rightmost token that is not the pad (0 if none)."""
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] != pad_id:
            return i
    return 0


def _batches(prefix: list[int], suffix: list[int], budget: int) -> list[list[int]]:
    """Pair indices in batches of at most ``budget`` padded tokens (prefix once, two responses), sorted by the
    responses' length (most of the padding) and then the prefix's."""
    order = sorted(range(len(prefix)), key=lambda i: (suffix[i], prefix[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        trial = current + [i]
        width = max(prefix[j] for j in trial) + 2 * max(suffix[j] for j in trial)
        if current and len(trial) * width > budget:
            batches.append(current)
            trial = [i]
        current = trial
    return batches + ([current] if current else [])


def score_pairs(
    model, chosen: list[list[int]], rejected: list[list[int]], pad_id: int, device: str, budget: int, plain
) -> tuple[np.ndarray, np.ndarray]:
    """(rewards of the chosen, of the rejected) sequences, the shared prefix of each pair encoded once.
    ``plain(ids) -> rewards`` scores the pairs that share too little."""
    n = len(chosen)
    shared = [shared_length(c, r, pad_id) for c, r in zip(chosen, rejected)]
    worth = [k >= MIN_SHARED and k >= MIN_SHARE * (len(c) + len(r)) / 2 for k, c, r in zip(shared, chosen, rejected)]
    fast = [i for i in range(n) if worth[i]]
    slow = [i for i in range(n) if not worth[i]]
    out_c, out_r = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
    if slow:
        both = plain([chosen[i] for i in slow] + [rejected[i] for i in slow])
        out_c[slow], out_r[slow] = both[: len(slow)], both[len(slow) :]
    suffix = [max(len(chosen[i]), len(rejected[i])) - shared[i] for i in range(n)]
    with Progress("RM scoring (shared prefixes)", len(fast), "pairs") as progress:
        for batch in _batches([shared[i] for i in fast], [suffix[i] for i in fast], budget):
            idx = [fast[j] for j in batch]
            pairs = [(chosen[i], rejected[i], shared[i]) for i in idx]
            rewards = _score_batch(model, pairs, device)
            out_c[idx], out_r[idx] = rewards[0::2], rewards[1::2]
            progress.update(len(idx))
    return out_c, out_r


def _score_batch(model, pairs: list[tuple[list[int], list[int], int]], device: str) -> np.ndarray:
    """Rewards of one batch of (chosen, rejected, shared length), interleaved (chosen 0, rejected 0, chosen 1, ...)."""
    import torch

    pad_id = model.config.get_text_config().pad_token_id or 0
    base = getattr(model, model.base_model_prefix)
    lengths = [k for _, _, k in pairs]
    width = max(lengths)
    prefix_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (ids, _, k) in enumerate(pairs):
        prefix_ids[row, :k] = torch.tensor(ids[:k])
        prefix_mask[row, :k] = 1
    positions = torch.arange(width).expand(len(pairs), width)
    with torch.inference_mode():
        cache = base(
            input_ids=prefix_ids.to(device),
            attention_mask=prefix_mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
        ).past_key_values
        cache.batch_repeat_interleave(2)
        tails = [seq[k:] for c, r, k in pairs for seq in (c, r)]
        starts = [k for k in lengths for _ in (0, 1)]
        tail_width = max(len(t) for t in tails)
        tail_ids = torch.full((len(tails), tail_width), pad_id, dtype=torch.long)
        tail_mask = torch.zeros((len(tails), tail_width), dtype=torch.long)
        for row, t in enumerate(tails):
            tail_ids[row, : len(t)] = torch.tensor(t)
            tail_mask[row, : len(t)] = 1
        mask = torch.cat([prefix_mask.repeat_interleave(2, dim=0), tail_mask], dim=1)
        tail_positions = torch.tensor(starts).unsqueeze(1) + torch.arange(tail_width).unsqueeze(0)
        hidden = base(
            input_ids=tail_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=tail_positions.to(device),
            past_key_values=cache,
            use_cache=False,
        ).last_hidden_state
        read = torch.tensor([_reward_index(t, pad_id) for t in tails], device=hidden.device)
        rewards = model.score(hidden[torch.arange(len(tails), device=hidden.device), read])
    return rewards[:, 0].float().cpu().double().numpy()
