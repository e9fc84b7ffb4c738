"""The estimated precision–retention frontier of a stage-2 run, from the calibrated posteriors of its decisions.

Every pair the reliability rule decided carries ``confidence``, its posterior P(the stored label is right) from the
prior, the RMs and the judges. Taken most confident first, a set of pairs has an estimated precision equal to the
mean of those posteriors; so for each precision on a grid, the frontier says how many pairs a run at that target
would keep (the most confident pairs whose mean confidence reaches it, never splitting tied confidences, each at
least ``min(min_confidence, target)``, as the rule keeps them) and how many it would flip (pairs the judges
contradict, whose flipped label alone reaches the target, as the rule flips them).

It is what the same evidence allows at other targets, so a run that publishes nothing can say why and what is
reachable ("0 kept at 0.98; estimated 97 at 0.90, none at 0.95") instead of failing. The posteriors are the model's:
where judges err together, they overstate the confidence, which the blind canaries measure beside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from synpref.records import Frontier, FrontierPoint, Interval

GRID = (0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


def keepable(confidences: np.ndarray, target: float, floor: float) -> int:
    """How many pairs, most confident first, keep a mean confidence ≥ ``target`` (each ≥ ``floor``; ties whole)."""
    ranked = np.sort(confidences[confidences >= floor])[::-1]
    if len(ranked) == 0:
        return 0
    mean = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
    boundary = np.append(ranked[:-1] > ranked[1:], True)
    ok = np.nonzero((mean >= target - 1e-12) & boundary)[0]
    return int(ok[-1] + 1) if len(ok) else 0


def judged_log_odds(evidence: str | None) -> float:
    """The judges' summed log-odds in a decision's ``evidence`` column (JSON of source → log-odds)."""
    return sum(v for k, v in json.loads(evidence).items() if k.startswith("judge_")) if evidence else 0.0


def frontier(
    decisions: Iterable[dict],
    target: float,
    min_confidence: float,
    curated: int,
    grid: tuple[float, ...] = GRID,
) -> Frontier:
    """The frontier of a run's decided pairs (rows with ``confidence`` and ``evidence``; gold and rules without a
    confidence are left out). ``curated``: the pairs the run kept or flipped by its rule (gold not counted): when 0,
    ``reason`` says in one line what was reachable instead."""
    rows = [(r["confidence"], judged_log_odds(r.get("evidence"))) for r in decisions if r["confidence"] is not None]
    conf = np.array([c for c, _ in rows], dtype=np.float64)
    flippable = np.array([1 - c for c, judged in rows if judged < 0], dtype=np.float64)
    points = [
        FrontierPoint(
            precision=p,
            kept=keepable(conf, p, min(min_confidence, p)),
            recycled=int((flippable >= p).sum()),
        )
        for p in sorted(set(grid) | {target})
    ]
    return Frontier(
        pairs=len(rows), target=target, points=points, reason=_reason(points, target) if not curated else None
    )


def posterior_check(kept_posterior: float | None, canary: Interval | None) -> str | None:
    """The frontier checked where the canaries can check it: the kept pairs' mean posterior (the precision the
    model claims for them) against the blind canaries' measured kept precision. None without both."""
    if kept_posterior is None or canary is None or canary.estimate is None:
        return None
    inside = (canary.ci_low or 0.0) <= kept_posterior <= (canary.ci_high or 1.0)
    verdict = (
        "inside their interval"
        if inside
        else "outside their interval: the judges err together more than the model assumes, so trust the canaries"
        if kept_posterior > (canary.ci_high or 1.0)
        else "outside their interval (the model is conservative here)"
    )
    return (
        f"The kept pairs' posteriors claim a precision of {kept_posterior:.3f}; the blind canaries measure "
        f"{canary.estimate:.3f} [{canary.ci_low or 0:.3f}, {canary.ci_high or 0:.3f}], {verdict}"
    )


def fallback_line(kept_at: list[float], target: float, retention: float) -> str | None:
    """One line for the shards whose fitted operating precision (``kept_at``, one per shard) fell below the target
    to hold ``retention`` of their estimated right labels; None when none did."""
    fallen = sorted(p for p in kept_at if p < target)
    if not fallen:
        return None
    at = f"{fallen[0]:.2f}" if fallen[0] == fallen[-1] else f"{fallen[0]:.2f}–{fallen[-1]:.2f}"
    return (
        f"{len(fallen)} of {len(kept_at)} shards kept at an estimated precision of {at}, not the target {target:.2f}: "
        f"at the target they would hold less than {retention:.0%} of their estimated right labels (target_retention)"
    )


def _reason(points: list[FrontierPoint], target: float) -> str:
    below = [p for p in points if p.precision < target]
    reachable = [p for p in below if p.kept + p.recycled]
    if not reachable:
        lowest = min((p.precision for p in points), default=target)
        return (
            f"0 kept or flipped at the target precision {target:.2f}, and none is reachable at {lowest:.2f} either: "
            "the judges and reward models give too little evidence on these pairs"
        )
    distinct = {}  # the highest precision of each distinct outcome, most precise first
    for p in sorted(reachable, key=lambda p: -p.precision):
        distinct.setdefault((p.kept, p.recycled), p)
    shown = ", ".join(_point(p) for p in list(distinct.values())[:3])
    none_at = min(
        (p.precision for p in points if p.precision > reachable[-1].precision and not p.kept + p.recycled),
        default=target,
    )
    return f"0 kept at {target:.2f}; estimated {shown}, none at {none_at:.2f} (lower target_precision to publish them)"


def _point(p: FrontierPoint) -> str:
    flipped = f" + {p.recycled} flipped" if p.recycled else ""
    return f"{p.kept}{flipped} at {p.precision:.2f}"
