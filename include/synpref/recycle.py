"""Recycling discarded pairs by flipping chosen/rejected (paper §3.3).

Policies: ``both_rms_reject`` (default, the seed summary's rule): flip pairs that BOTH reward
models reject (p_best < 0.5 and p_gold < 0.5); ``all_discarded`` (the paper's): flip every
discarded pair. Flipped pairs keep their pair_id, get ``flipped`` toggled and provenance ``recycled``.
"""

from __future__ import annotations

from typing import get_args

from .schema import flip
from .settings import RecyclePolicy


def should_recycle(p_best: float, p_gold: float, policy: RecyclePolicy) -> bool:
    """Called only for discarded pairs."""
    if policy == "all_discarded":
        return True
    if policy == "both_rms_reject":
        return p_best < 0.5 and p_gold < 0.5
    raise ValueError(f"unknown recycle policy {policy!r}; expected one of {get_args(RecyclePolicy)}")


def recycled(row: dict) -> dict:
    return {**flip(row), "provenance": "recycled"}
