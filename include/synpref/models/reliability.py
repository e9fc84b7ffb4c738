"""How much each source of evidence can be trusted, measured on human-verified gold.

- **Reward models** are calibrated on gold pairs they did not train on: temperature scaling of the
  reward difference, fitted on both orientations of every pair (a Bradley-Terry score is
  antisymmetric, so ``p(y_w ≻ y_l) = σ(d / T)``). ECE and Brier score before and after are recorded.
  Their joint weights (two RMs on one backbone make correlated errors, so their logits must not
  simply be added) are fitted the same way on both features.
- **LLM judges** are measured by judging gold pairs blind (seeded random order, like any pair): the
  accuracy of each annotator's majority verdict and its position bias; for a logprob verdict, the temperature
  of its verdict-token probability (calibrated like an RM's reward difference), so that a confident verdict
  counts for more than an unsure one.
- A **reward model** counts only when it is significantly better than chance on gold (the lower end of its 95%
  Wilson interval above 0.5); otherwise it neither keeps nor vetoes anything: an RM's reward difference is large
  whatever its accuracy, so a chance RM's calibrated weight would be noise.
- A **judge** counts by its evidence, never cut off by a significance test: its accuracy is shrunk toward chance
  by how little the probe saw (Laplace, a Beta(1, 1) posterior mean) and its weight is the log-odds of that, so a
  judge at chance weighs ~0 and a weak one (0.6 on 60 pairs: 0.39 log-odds) adds what it knows; three weak judges
  that agree can settle a pair that none settles alone. A judge that answers one position whatever the content,
  or is right on no more than half its probe pairs, counts zero.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Z95 = 1.959964
DEFAULT_JUDGE_ACCURACY = 0.7  # assumed for an annotator never measured on gold (a round without gold probes)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def reliability(successes: int, n: int) -> dict:
    """Accuracy with its interval; ``significant`` when the interval excludes chance (0.5)."""
    low, high = wilson_interval(successes, n)
    return {
        "n": n,
        "accuracy": successes / n if n else None,
        "ci_low": round(low, 6),
        "ci_high": round(high, 6),
        "significant": n > 0 and low > 0.5,
    }


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def fit_weights(features: np.ndarray, l2: float = 1.0, iterations: int = 50) -> np.ndarray:
    """Weights ``w`` of ``p(chosen better) = σ(features · w)``, fitted on both orientations of each pair.

    ``features`` (n × k) are antisymmetric scores of correctly oriented pairs (reward differences);
    the mirrored pairs are ``-features`` with label 0. No intercept (orientation carries no signal).
    Newton's method with an L2 penalty that keeps small or separable sets from making a source
    overconfident; one feature is temperature scaling (``T = 1 / w``).
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if len(x) == 0:
        return np.ones(x.shape[1])
    xs = np.concatenate([x, -x])
    ys = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = sigmoid(xs @ w)
        grad = xs.T @ (p - ys) + l2 * w
        hess = (xs * (p * (1 - p))[:, None]).T @ xs + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w


def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(p) == 0:
        return 0.0
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(p) * abs(p[m].mean() - y[m].mean())
    return float(total)


def brier(p: np.ndarray, y: np.ndarray) -> float:
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(p) else 0.0


def calibrate(diffs: np.ndarray) -> dict:
    """Temperature scaling of one RM from its reward differences on held-out, correctly oriented gold pairs."""
    d = np.asarray(diffs, dtype=np.float64)
    w = float(fit_weights(d[:, None])[0]) if len(d) else 1.0
    both = np.concatenate([d, -d])
    y = np.concatenate([np.ones(len(d)), np.zeros(len(d))])
    raw, scaled = sigmoid(both), sigmoid(both * w)
    return {
        "weight": w,  # calibrated logit = weight · reward difference (temperature = 1 / weight)
        **reliability(int((d > 0).sum()), len(d)),
        "ece_before": round(ece(raw, y), 6),
        "ece_after": round(ece(scaled, y), 6),
        "brier_before": round(brier(raw, y), 6),
        "brier_after": round(brier(scaled, y), 6),
    }


def joint_weights(shared: dict[str, np.ndarray], calibration: dict[str, dict]) -> dict[str, float]:
    """Weights of the RMs' reward differences in one combined logit; RMs not better than chance get 0.

    Each significant RM keeps its own temperature; together they are scaled by one shrink factor in
    (0, 1], fitted on ``shared`` (the gold pairs neither trained on), so that two correlated RMs are not
    counted twice and never make the pair more certain than their sum.
    """
    names = [n for n in sorted(shared) if calibration[n]["significant"]]
    out = {n: 0.0 for n in shared}
    if not names:
        return out
    own = {n: max(0.0, calibration[n]["weight"]) for n in names}
    combined = sum(own[n] * shared[n] for n in names)
    shrink = min(1.0, float(fit_weights(combined[:, None])[0])) if len(names) > 1 and len(combined) else 1.0
    out.update({n: own[n] * max(shrink, 0.0) for n in names})
    return out


def rm_warnings(calibration: dict[str, dict]) -> list[str]:
    """One line per RM that is not significantly better than chance on gold (it then counts zero)."""
    return [
        f"{name} RM is not significantly better than chance on {c['n']} held-out gold pairs "
        f"(accuracy {c['accuracy'] if c['accuracy'] is None else round(c['accuracy'], 3)}, "
        f"95% CI [{c['ci_low']:.3f}, {c['ci_high']:.3f}]): it counts zero in stage-2 decisions"
        for name, c in sorted(calibration.items())
        if not c["significant"]
    ]


VerdictKind = Literal["single", "unanimous", "split"]


def verdict_sign(agree: int, disagree: int) -> tuple[int, VerdictKind]:
    """(+1 agree / −1 disagree / 0 abstain, kind) of one annotator's samples on one pair: one vote (``single``),
    several that all agree (``unanimous``) or a majority of split votes (``split``)."""
    sign = (agree > disagree) - (disagree > agree)
    if agree + disagree == 1:
        return sign, "single"
    return sign, "unanimous" if min(agree, disagree) == 0 else "split"


def p_agree(p_slot1: float | None, swapped: bool) -> float | None:
    """P(the stored chosen is better) from a logprob verdict's P(Candidate 1) and the order the pair was shown in."""
    return None if p_slot1 is None else (1.0 - p_slot1 if swapped else p_slot1)


def judge_reliability(samples: pa.Table) -> dict:
    """From the judges' samples on correctly oriented gold pairs (the blind probe).

    Per annotator: the accuracy of its majority verdict, overall and separately for unanimous verdicts
    (all its samples agree) and split ones; the accuracy of its first sample alone (``single``: the weight of a
    pair's first vote, on which judging in sequence may already stop); ``votes``: the accuracy of the majority of a
    pair's first k samples per number of votes and margin (``vote_key``: what judging in sequence has when it
    stops, e.g. two agreeing votes, which are weaker evidence than three); its position bias; and, where its verdicts
    came with log-probabilities, ``logprobs``: per number k of such verdicts on a pair, the temperature weight of
    their summed log-odds (``weights[k-1]``: calibrated log-odds = weight · Σ logit P(agree); fitted on the first k
    verdicts of each probe pair, so repeated verdicts that err together are not counted as independent) and
    ``room``, the 95th percentile of one calibrated verdict's size (what one more can add, for judging in
    sequence). ``shrink`` scales the judges' summed log-odds so that their correlated errors (hard pairs are hard
    for every judge) are not counted as independent evidence; fitted like a temperature on the probe, at most 1.
    """
    columns = ["pair_id", "annotator", "sample", "verdict", "slot"]
    columns += [c for c in ("p_slot1", "swapped") if c in samples.column_names]  # absent from older probes
    by: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in samples.select(columns).to_pylist():
        by[r["annotator"]][r["pair_id"]].append(r)
    annotators, verdicts, cell_counts = {}, defaultdict(dict), {}
    for name, pairs in sorted(by.items()):
        tally = {"unanimous": [0, 0], "split": [0, 0]}  # kind → [right, wrong] (a lone vote counts as unanimous)
        first = [0, 0]  # the first sample alone → [right, wrong]
        prefixes: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # vote key of a first-k prefix → [right, wrong]
        log_odds = []  # per pair: logit P(agree) of its logprob verdicts (every probe pair is correctly oriented)
        for pid, rows in pairs.items():
            verdict = tally_votes(rows)
            sign, kind = verdict_sign(verdict["agree"], verdict["disagree"])
            if sign:
                tally["split" if kind == "split" else "unanimous"][0 if sign > 0 else 1] += 1
            verdicts[pid][name] = verdict
            if verdict["log_odds"]:
                log_odds.append(verdict["log_odds"])
            head = min(rows, key=lambda r: r["sample"])["verdict"]
            if head != "abstain":
                first[0 if head == "agree" else 1] += 1
            for key, right in _prefix_majorities(rows).items():
                prefixes[key][0 if right else 1] += 1
        right, wrong = (sum(t[i] for t in tally.values()) for i in (0, 1))
        slots = [r["slot"] for rows in pairs.values() for r in rows if r["slot"] is not None]
        annotators[name] = {
            **reliability(right, right + wrong),
            "single": reliability(*_pair(first)),
            "unanimous": reliability(*_pair(tally["unanimous"])),
            "split": reliability(*_pair(tally["split"])),
            "votes": {key: reliability(*_pair(t)) for key, t in sorted(prefixes.items())},
            "pairs": len(pairs),
            "abstained": len(pairs) - right - wrong,
            "position_bias": round(2 * sum(s == 1 for s in slots) / len(slots) - 1, 6) if slots else None,
            **order_behaviour(pairs),
            **({"logprobs": _logprob_calibration(log_odds)} if log_odds else {}),
        }
        cell_counts[name] = prefixes
    _pool_vote_cells(annotators, cell_counts)
    shrinks = _shrinks(annotators, verdicts)
    return {"annotators": annotators, "shrink": shrinks[-1] if shrinks else 1.0, "shrinks": shrinks}


def _shrinks(annotators: dict[str, dict], verdicts: dict[str, dict[str, dict]]) -> list[float]:
    """``shrinks[k-1]``: the factor of the summed log-odds of k judges, fitted like a temperature on the probe over
    the k most reliable (the ones judging in sequence asks first), at most 1. Hard pairs are hard for every judge, so
    the more judges are summed the more their evidence overlaps: one judge's verdict keeps its own calibration
    (``shrinks[0]`` ≈ 1), two judges that always agree add up to one (0.5), and a judge alone is not discounted for
    the correlation of judges that were not asked."""
    ranked = sorted(annotators, key=lambda n: (-judge_weight(annotators[n]), n))
    out = []
    for k in range(1, len(ranked) + 1):
        evidence = np.array(
            [sum(judge_evidence(annotators[n], per[n]) for n in ranked[:k] if n in per) for per in verdicts.values()]
        )
        fitted = float(fit_weights(evidence[:, None])[0]) if len(evidence) and evidence.any() else 1.0
        out.append(round(min(1.0, max(fitted, 0.0)), 6))
    return out


def shrink_for(judges: dict, count: int) -> float:
    """The factor of the summed evidence of ``count`` judges (``judges.json``: ``shrinks``, or one ``shrink``)."""
    shrinks = judges.get("shrinks") or []
    if not shrinks or count < 1:
        return judges.get("shrink", 1.0)
    return shrinks[min(count, len(shrinks)) - 1]


def order_behaviour(pairs: dict[str, list[dict]]) -> dict:
    """How a judge treats the candidates' order, from its probe samples (correctly oriented pairs):

    - ``order_bias``: P(answers slot 1 | the better is in slot 2) − P(answers slot 2 | the better is in slot 1): a
      preference for the first position that, unlike ``position_bias``, does not mistake accuracy for bias;
    - ``repeats_agree``: of the pairs with several samples in one order, the share whose samples all agree (1.0: it
      answers the same every time, as a judge at temperature 0 or a reward model does: more samples buy nothing);
    - ``orders_agree``: of the pairs asked in both orders, the share whose verdicts agree across them (how much the
      other order is new information; None when no pair was asked both ways, ``order: random``)."""
    wrong_first = [r["slot"] == 1 for rows in pairs.values() for r in rows if r.get("swapped") and r["slot"]]
    wrong_second = [r["slot"] == 2 for rows in pairs.values() for r in rows if r.get("swapped") is False and r["slot"]]
    repeats, orders = [], []
    for rows in pairs.values():
        by_order: dict[bool, list[str]] = defaultdict(list)
        for r in rows:
            if r["verdict"] != "abstain" and r.get("swapped") is not None:
                by_order[bool(r["swapped"])].append(r["verdict"])
        repeats += [len(set(v)) == 1 for v in by_order.values() if len(v) > 1]
        if len(by_order) == 2:
            majorities = [max(set(v), key=v.count) for v in by_order.values()]
            orders.append(majorities[0] == majorities[1])
    share = lambda xs: round(sum(xs) / len(xs), 6) if xs else None  # noqa: E731
    bias = share(wrong_first) - share(wrong_second) if wrong_first and wrong_second else None
    return {
        "order_bias": None if bias is None else round(bias, 6),
        "repeats_agree": share(repeats),
        "orders_agree": share(orders),
    }


def judge_advice(judges: dict) -> list[str]:
    """One line per annotator whose samples of one order always agree while it is asked one order (configured
    ``order: random``; ``auto`` switches by itself): the other order would be new information where more samples are
    not."""
    return [
        f"annotator {n} gave the same verdict on {j['repeats_agree']:.0%} of its repeated samples (it answers the "
        "same every time): more samples of one order buy nothing; ask both orders instead "
        "(order: both, samples: 2, choices_per_request: 1)"
        for n, j in sorted(judges.get("annotators", {}).items())
        if (j.get("repeats_agree") or 0) >= REPEATS_AGREE_LIMIT
        and j.get("orders_agree") is None
        and not j.get("asking")
    ]


REPEATS_AGREE_LIMIT = 0.95  # of repeated samples in agreement: the judge is taken as answering the same every time


def order_stats(samples: pa.Table) -> dict:
    """``order_behaviour`` of one annotator's probe samples."""
    pairs: dict[str, list[dict]] = defaultdict(list)
    for r in samples.select(["pair_id", "verdict", "swapped", "slot"]).to_pylist():
        pairs[r["pair_id"]].append(r)
    return order_behaviour(pairs)


def answers_the_same(samples: pa.Table, share: str = "repeats_agree") -> bool:
    """Whether one annotator's probe samples show it answering the same every time (``repeats_agree`` at or above
    ``REPEATS_AGREE_LIMIT``), or in either order (``share="orders_agree"``); False when nothing was repeated."""
    measured = order_stats(samples)[share]
    return measured is not None and measured >= REPEATS_AGREE_LIMIT


def tally_votes(rows: list[dict]) -> dict:
    """One annotator's samples on one pair as a verdict: its agree / disagree / abstain votes and ``log_odds``, the
    logit P(agree) of its logprob verdicts in sample order (empty when it was sampled)."""
    votes = {v: sum(r["verdict"] == v for r in rows) for v in ("agree", "disagree", "abstain")}
    ordered = sorted(rows, key=lambda r: r["sample"])
    probabilities = [p_agree(r.get("p_slot1"), bool(r.get("swapped"))) for r in ordered]
    return {**votes, "log_odds": [logit(p) for p in probabilities if p is not None]}


def _logprob_calibration(log_odds: list[list[float]]) -> dict:
    """Weights of the summed log-odds of a pair's first k logprob verdicts, k = 1 … the most any pair got."""
    weights = []
    for k in range(1, max(map(len, log_odds)) + 1):
        sums = np.array([sum(x[:k]) for x in log_odds if len(x) >= k])
        weights.append(max(0.0, float(fit_weights(sums[:, None])[0])))
    first = np.abs([x[0] for x in log_odds])
    return {"n": len(log_odds), "weights": weights, "room": float(np.quantile(first, 0.95) * weights[0])}


def vote_key(agree: int, disagree: int) -> str:
    """``"n:m"``: n votes with margin m (agree − disagree in absolute value), the cell of a sampled verdict."""
    return f"{agree + disagree}:{abs(agree - disagree)}"


def _prefix_majorities(rows: list[dict]) -> dict[str, bool]:
    """For each first-k prefix of a probe pair's samples with a majority: its vote key → whether the majority is
    right (probe pairs are correctly oriented); a key reached by two prefixes (an abstention between) counts once."""
    out: dict[str, bool] = {}
    agree = disagree = 0
    for r in sorted(rows, key=lambda r: r["sample"]):
        agree += r["verdict"] == "agree"
        disagree += r["verdict"] == "disagree"
        if agree != disagree:
            out.setdefault(vote_key(agree, disagree), agree > disagree)
    return out


def _pool_vote_cells(annotators: dict[str, dict], cell_counts: dict[str, dict[str, list[int]]]) -> None:
    """Each annotator's vote cells get ``pooled_accuracy``: its own accuracy shrunk toward every annotator's on the
    same cell (empirical Bayes, ``shrink_toward_pool``). A probe of a few dozen pairs a judge measures a cell's
    accuracy with an error of several points, and judging in sequence stops where an overestimated weight first
    crosses the bar; judges that are alike then share one estimate, judges that differ keep their own."""
    for key in {k for counts in cell_counts.values() for k in counts}:
        names = [n for n, counts in cell_counts.items() if key in counts]
        counts = [_pair(cell_counts[n][key]) for n in names]
        for name, accuracy in zip(names, shrink_toward_pool(counts)):
            annotators[name]["votes"][key]["pooled_accuracy"] = accuracy


def shrink_toward_pool(counts: list[tuple[int, int]]) -> list[float]:
    """Empirical-Bayes accuracies of binomial counts ``(right, n)``: each Laplace-smoothed and shrunk toward the
    pooled accuracy with a Beta prior whose spread is the between-source variance beyond sampling noise (method of
    moments); no spread beyond noise → the pooled accuracy, one source → its own."""
    total_right, total_n = sum(r for r, _ in counts), sum(n for _, n in counts)
    pooled = (total_right + 1) / (total_n + 2)
    measured = [(r, n) for r, n in counts if n]
    strength = 0.0  # the prior's pseudo-count
    if len(measured) > 1:
        spread = sum(n * (r / n - pooled) ** 2 for r, n in measured)
        noise = (len(measured) - 1) * pooled * (1 - pooled)
        between = (spread - noise) / (total_n - sum(n * n for _, n in measured) / total_n)
        strength = max(pooled * (1 - pooled) / between - 1, 0.0) if between > 0 else 1e9
    return [(r + 1 + strength * pooled) / (n + 2 + strength) for r, n in counts]


def _pair(tally: list[int]) -> tuple[int, int]:
    return tally[0], tally[0] + tally[1]


POSITION_BIAS_LIMIT = 0.8  # |2·P(slot 1) − 1| at or above this: the verdicts follow the position, not the content


def uninformative_judges(judges: dict) -> dict[str, str]:
    """Annotators whose votes count zero under every merge policy, with why: right on no more than half the gold
    probe pairs they decided, or answering one position whatever the content. A weak judge that is better than
    chance is not here: it counts by its (smoothed) accuracy."""
    out = {}
    for name, j in sorted(judges.get("annotators", {}).items()):
        bias = j.get("position_bias")
        if bias is not None and abs(bias) >= POSITION_BIAS_LIMIT:
            out[name] = f"position bias {bias:+.2f} on the gold probe (it answers one position whatever the content)"
        elif not better_than_chance(j):
            out[name] = (
                f"no better than chance on {j['n']} gold probe pairs "
                f"(accuracy {j['accuracy'] if j['accuracy'] is not None else 'n/a'}, "
                f"95% CI [{j['ci_low']:.3f}, {j['ci_high']:.3f}])"
            )
    return out


def judge_warnings(judges: dict) -> list[str]:
    """One line per annotator whose votes count zero (``uninformative_judges``)."""
    return [f"annotator {n}: {why}: its votes count zero" for n, why in uninformative_judges(judges).items()]


def counted_samples(samples: list[pa.Table], judges: dict) -> list[pa.Table]:
    """The sample tables without the votes of uninformative judges (they count zero in every merge)."""
    drop = pa.array(sorted(uninformative_judges(judges)), pa.string())
    return [t.filter(pc.invert(pc.is_in(t["annotator"], drop))) for t in samples] if len(drop) else samples


def better_than_chance(stats: dict) -> bool:
    """Right on more than half of the probe pairs it decided (its Laplace-smoothed accuracy above 0.5)."""
    return bool(stats["n"]) and stats["accuracy"] * stats["n"] > stats["n"] / 2


def judge_evidence(stats: dict | None, verdict: dict) -> float:
    """The log-odds one annotator's verdict on a pair adds to the stored label (before ``shrink``): logprob
    verdicts by their calibrated summed log-odds (``logprobs`` in its probe stats; their argmax must be better than
    chance on the probe), sampled votes by the measured accuracy of their kind."""
    calibration, log_odds = (stats or {}).get("logprobs"), verdict.get("log_odds")
    if log_odds and calibration:
        weight = calibration["weights"][min(len(log_odds), len(calibration["weights"])) - 1]
        return weight * sum(log_odds) if better_than_chance(stats.get("single", stats)) else 0.0
    sign, kind = verdict_sign(verdict["agree"], verdict["disagree"])
    return sign * judge_weight(stats, kind, vote_key(verdict["agree"], verdict["disagree"])) if sign else 0.0


def judge_room(stats: dict | None) -> float:
    """The most log-odds an annotator not yet asked is expected to add to a pair (before ``shrink``): its unanimous
    verdict's weight, or a confident logprob verdict's (``logprobs.room``) where that is larger."""
    calibration = (stats or {}).get("logprobs")
    confident = calibration["room"] if calibration and better_than_chance(stats.get("single", stats)) else 0.0
    return max(judge_weight(stats), confident)


def judge_weight(stats: dict | None, kind: VerdictKind = "unanimous", votes: str | None = None) -> float:
    """Log-odds weight of one annotator's verdict, from its measured accuracy on the probe.

    Where the probe has the verdict's cell (``votes``, a ``vote_key``: two agreeing votes are weaker evidence than
    three), the cell's ``pooled_accuracy`` (Laplace-smoothed and shrunk toward the other annotators'), if the
    annotator is better than chance overall. Otherwise (an older probe, more samples than it asked) the accuracy of
    verdicts of the same kind (one vote, unanimous or split; one vote counts as unanimous for a probe measured before
    ``single``), Laplace-smoothed. No significance cut-off: the smoothing shrinks what few pairs measured toward
    chance, and a weight never goes below 0."""
    if stats is None:
        return logit(DEFAULT_JUDGE_ACCURACY)
    if not better_than_chance(stats):
        return 0.0
    cell = (stats.get("votes") or {}).get(votes) if votes else None
    if cell and "pooled_accuracy" in cell:
        return max(0.0, logit(cell["pooled_accuracy"]))
    kind = stats.get(kind if kind in stats else "unanimous", stats)
    if not kind["n"]:
        return 0.0
    return max(0.0, logit((kind["accuracy"] * kind["n"] + 1) / (kind["n"] + 2)))


def weighed_verdicts(judges: dict, verdicts: list[dict]) -> dict[str, float]:
    """Each annotator's log-odds for the stored label on one pair (``annotator_verdicts``: abstentions and tied
    votes add nothing), scaled by ``shrink_for`` the number of judges that said something (``judges.json``)."""
    stats = judges.get("annotators", {})
    out = {
        v["annotator"]: judge_evidence(stats.get(v["annotator"]), v)
        for v in verdicts
        if v["agree"] != v["disagree"] or v.get("log_odds")
    }
    shrink = shrink_for(judges, sum(e != 0 for e in out.values()))
    return {name: e * shrink for name, e in out.items()}


def label_confidence(verdicts: dict[str, list[dict]], judges: dict) -> tuple[dict[str, float], float]:
    """P(stored label right) per pair from its judges' verdicts alone (``annotator_verdicts`` of a merged table),
    each weighed by its probe reliability and the judges' ``shrink``, over the prior fitted to those pairs by EM;
    → (confidences, prior). What stage 1 asks of a pair before it joins silver. A pair no judge said anything about
    gets no confidence (the prior alone is not a verdict on it), though it counts in the prior."""
    evidence = {pid: sum(weighed_verdicts(judges, vs).values()) for pid, vs in verdicts.items()}
    prior = estimate_prior(np.array(list(evidence.values())))
    return {pid: float(sigmoid(logit(prior) + e)) for pid, e in evidence.items() if e}, prior


def estimate_prior(evidence: np.ndarray, iterations: int = 100) -> float:
    """Share of stored labels that are right, by EM over calibrated per-pair log-odds (content evidence only)."""
    e = np.asarray(evidence, dtype=np.float64)
    if len(e) == 0 or not np.any(e):
        return 0.5
    pi = 0.5
    for _ in range(iterations):
        new = float(np.mean(sigmoid(logit(pi) + e)))
        if abs(new - pi) < 1e-7:
            break
        pi = new
    return min(max(pi, 0.02), 0.98)
