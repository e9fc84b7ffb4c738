"""Recycling discarded pairs by flipping chosen/rejected (paper §3.3).

Policies (``recycle_policy``): ``positive_evidence`` (the reliability rule's default): flip only when the
confidence in the flipped label reaches the target and the judges disagree with the stored label;
``both_rms_reject`` (the paper rule's default, the seed summary's rule): flip pairs that BOTH reward
models reject (p_best < 0.5 and p_gold < 0.5); ``all_discarded`` (the paper's text): flip every
discarded pair; ``rule_default``: the decision rule's own default (its ``default_recycle``). Flipped pairs keep
their pair_id, get ``flipped`` toggled and provenance ``recycled``.
"""

from __future__ import annotations

from typing import get_args

from synpref.schema import flip
from synpref.settings import RecyclePolicy


def should_recycle(p_best: float, p_gold: float, policy: RecyclePolicy) -> bool:
    """Called only for discarded pairs, for the policies decided from the RMs' p alone."""
    if policy == "all_discarded":
        return True
    if policy == "both_rms_reject":
        return p_best < 0.5 and p_gold < 0.5
    raise ValueError(f"unknown recycle policy {policy!r}; expected one of {get_args(RecyclePolicy)}")


def recycled(row: dict) -> dict:
    return {**flip(row), "provenance": "recycled"}
