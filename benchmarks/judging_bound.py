"""How few judge requests could ANY stopping rule ask at fixed sampling's quality? A bound, on the harness's worlds.

Issue #24 asks for ≥ 3× fewer judge requests per in-the-wild pair than fixed sampling (3 annotators × 3 samples)
at equal curation quality. This script answers whether that is reachable with sampled votes at all, on the worlds
``curation_quality.py --out DIR`` keeps. It solves, per routed pair, the **Bayes-optimal sequential policy**
(backward induction over (agreeing, disagreeing) votes, at most 9): after each vote, ask again only while the
expected gain of the final decision is worth more than a vote's price ``c``; at the end keep, flip or drop by the
posterior. Two vote models: the SIMULATED judges' **true** one (mean accuracy, the spread of accuracy over pairs
that every judge shares, the position bias; the harness's ``judge_profile``), which no production rule has, and
the one a production rule can fit, from the stage-1 gold probe's vote cells (``VoteModel.from_probe``); the pair's
prior and calibrated RM log-odds come from the round, exactly as the default rule has them. By the optimality of
backward induction, no rule that sees the same votes asks fewer requests for the same expected decisions under the
true model: its frontier (requests against quality, over ``c`` and the keep and flip bars) bounds every stopping
rule from below.

Each policy is **replayed on the fixed-sampling run's own votes** (every vote of every pair is known there, in the
order judging in sequence asks them), and its decisions are compared with fixed sampling's against the hidden
truth, paired, with the harness's bootstrap intervals (✗: a loss beyond noise).

    python benchmarks/curation_quality.py --quick --judging fixed sequence --out DIR   # the worlds (~10 minutes)
    python benchmarks/judging_bound.py DIR                                               # the bound (~1 minute)
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _common import RESULTS, machine
from curation_quality import QUALITY, QUICK, SWEEP, decide_all, judge_profile, metrics, paired_differences

from synpref.io.layout import StorageLayout
from synpref.io.storage import read_json, read_parquet
from synpref.models.reliability import sigmoid
from synpref.settings import Stage2Config
from synpref.simulation.evaluation import truth_agree
from synpref.simulation.simulated import JudgeProfile
from synpref.stage2.consistency import configured_rule

MAX_VOTES = 9  # 3 annotators × 3 samples, as the harness's fixed sampling asks
DROP, KEEP, FLIP, ASK = 0, 1, 2, 3
DECISION = {DROP: "dropped", KEEP: "kept", FLIP: "recycled"}
KEEP_BARS = (4.0, 5.67, 9.0, 12.0, 19.0, 49.0)  # a wrong keep costs this many right ones: keep at P ≥ 0.80 … 0.98
FLIP_BARS = (19.0, 49.0, 99.0)  # flip at P(flipped label) ≥ 0.95, 0.98, 0.99
PRICES = tuple(np.round(np.geomspace(0.005, 0.15, 16), 4))  # a vote's price, in right keeps


def _spread(k: int) -> np.ndarray:
    """``k`` equally likely points of a uniform spread over [−1, 1] (midpoints): a pair's accuracy is mean + h × it."""
    return 1 - 2 * (np.arange(k) + 0.5) / k


@dataclass(frozen=True)
class VoteModel:
    """Votes on a pair: each right with the pair's accuracy, drawn once per pair (shared by every judge) from
    ``points`` equally likely values; ``likelihoods()[0][a, d]`` = P(a agree, d disagree | stored label right)."""

    points: np.ndarray

    @classmethod
    def of(cls, profile: JudgeProfile, k: int = 9) -> VoteModel:
        """The SIMULATED judge's model: accuracy ± difficulty · (1 − accuracy) uniformly, a position-biased vote
        being a coin flip (the candidates' order is random per sample)."""
        accuracy = profile.accuracy + profile.difficulty * (1 - profile.accuracy) * _spread(k)
        return cls(accuracy * (1 - profile.position_bias) + 0.5 * profile.position_bias)

    @classmethod
    def from_probe(cls, judges: dict, k: int = 9) -> VoteModel:
        """What a production rule can know: the stage-1 gold probe's vote cells (``judges.json``), averaged over the
        annotators. The mean accuracy is the one-vote cell's; the spread over pairs (uniform, half-width h) is the
        one whose two-agreeing-votes accuracy matches the probe's ``2:2`` cell."""
        cells = [a["votes"] for a in judges["annotators"].values() if a.get("significant") and "votes" in a]
        mean = float(np.mean([c["1:1"]["pooled_accuracy"] for c in cells]))
        two = float(np.mean([c["2:2"]["pooled_accuracy"] for c in cells if "2:2" in c]))
        u = _spread(k)

        def agreeing_pair_accuracy(h: float) -> float:
            p = mean + h * u
            return float((p**2).mean() / ((p**2).mean() + ((1 - p) ** 2).mean()))

        widths = np.linspace(0.0, min(mean - 0.5, 1 - mean), 51)
        h = min(widths, key=lambda h: abs(agreeing_pair_accuracy(h) - two))
        return cls(mean + h * u)

    def likelihoods(self) -> tuple[np.ndarray, np.ndarray]:
        a = np.arange(MAX_VOTES + 1)[:, None, None]
        d = np.arange(MAX_VOTES + 1)[None, :, None]
        p = self.points[None, None, :]
        return (p**a * (1 - p) ** d).mean(-1), ((1 - p) ** a * p**d).mean(-1)


def optimal_policy(prior: np.ndarray, model: VoteModel, keep_bar: float, flip_bar: float, price: float) -> tuple:
    """Backward induction for every pair at once. ``prior``: P(stored label right) before any vote. Rewards: a
    right keep +1, a wrong keep −``keep_bar``; a right flip +1, a wrong flip −``flip_bar``; a drop 0; each vote
    −``price``; a flip needs at least two votes, more disagreeing. Returns (action[pair, a, d], posterior[pair, a,
    d], stop[pair, a, d]): the action at each state, P(right) there, and the best action without asking."""
    right, wrong = model.likelihoods()
    q0 = np.asarray(prior, dtype=np.float64)[:, None, None]
    joint = q0 * right[None] + (1 - q0) * wrong[None]
    q = q0 * right[None] / joint
    a = np.arange(MAX_VOTES + 1)[None, :, None]
    d = np.arange(MAX_VOTES + 1)[None, None, :]
    may_flip = (d > a) & (a + d >= 2)
    stop_values = np.stack(
        [np.zeros_like(q), q - keep_bar * (1 - q), np.where(may_flip, (1 - q) - flip_bar * q, -np.inf)], -1
    )
    stop, value = stop_values.argmax(-1), stop_values.max(-1)
    action = stop.astype(np.int8)
    for n in range(MAX_VOTES - 1, -1, -1):
        for agree in range(n + 1):
            dis = n - agree
            p_agree = (q0[:, 0, 0] * right[agree + 1, dis] + (1 - q0[:, 0, 0]) * wrong[agree + 1, dis]) / joint[
                :, agree, dis
            ]
            ask = -price + p_agree * value[:, agree + 1, dis] + (1 - p_agree) * value[:, agree, dis + 1]
            better = ask > value[:, agree, dis]
            value[:, agree, dis] = np.where(better, ask, value[:, agree, dis])
            action[:, agree, dis] = np.where(better, ASK, action[:, agree, dis])
    return action, q, stop


def replay(action: np.ndarray, stop: np.ndarray, votes: list[list[str]]) -> list[tuple[int, int]]:
    """Each pair's (decision, requests) when the policy is followed on the votes it would have been given in order;
    an abstention is a request that moves nothing; a pair whose votes run out is decided without asking."""
    out = []
    for i, vs in enumerate(votes):
        agree = dis = asked = 0
        while action[i, agree, dis] == ASK and asked < len(vs):
            agree, dis, asked = agree + (vs[asked] == "agree"), dis + (vs[asked] == "disagree"), asked + 1
        act = action[i, agree, dis]
        out.append((int(stop[i, agree, dis] if act == ASK else act), asked))
    return out


@dataclass
class World:
    model: VoteModel
    fixed: dict  # pair_id → fixed sampling's (decision, routed, requests)
    routed: list[str]
    prior: np.ndarray  # P(right) from the fitted prior and the RMs, per routed pair
    votes: list[list[str]]  # per routed pair: every vote of the fixed run, in the order judging in sequence asks
    correct: dict[str, bool]


def load_world(root: Path, profile: JudgeProfile | None) -> World:
    """A harness world's fixed-sampling run, as the default rule sees it; the vote model the SIMULATED judges'
    (``profile``) or, without one, the one fitted on the round's gold probe."""
    store = StorageLayout(root / "storage")
    rnd = store.resolve_round()
    run = store.stage2("eval-fixed")
    shards = run.pool().shard_uris()
    rule = configured_rule(Stage2Config(), store.round(rnd))
    fixed, _ = decide_all(store, rnd, run, shards, rule, True)
    scores = [s for sh in shards for s in read_parquet(run.shard(sh).scores).to_pylist() if not s["in_gold"]]
    fitted = rule.fit(scores)
    routed = [s for s in scores if fitted.needs_judges(s)]
    names = sorted(read_json(store.round(rnd).judges)["annotators"], key=lambda a: (-rule.judge_priority(a), a))
    votes = collections.defaultdict(list)
    for name, sh in itertools.product(names, shards):
        for r in sorted(read_parquet(run.shard(sh).samples(name)).to_pylist(), key=lambda r: r["sample"]):
            votes[r["pair_id"]].append(r["verdict"])
    rows = [r for sh in run.pool().shards() for r in read_parquet(sh).to_pylist()]
    return World(
        VoteModel.of(profile) if profile else VoteModel.from_probe(read_json(store.round(rnd).judges)),
        fixed,
        [s["pair_id"] for s in routed],
        sigmoid(np.array([fitted.prior_evidence(s) + sum(fitted.rm_evidence(s).values()) for s in routed])),
        [votes[s["pair_id"]] for s in routed],
        truth_agree(rows, read_parquet(root / "truth" / "wild.parquet")),
    )


def frontier(world: World) -> list[dict]:
    """Every (keep bar, flip bar, price) policy replayed: requests per pair, quality, paired differences."""
    out = []
    for keep_bar, flip_bar, price in itertools.product(KEEP_BARS, FLIP_BARS, PRICES):
        action, _, stop = optimal_policy(world.prior, world.model, keep_bar, flip_bar, price)
        decisions = dict(world.fixed)
        for pid, (decision, asked) in zip(world.routed, replay(action, stop, world.votes)):
            decisions[pid] = (DECISION[decision], True, asked)
        m = metrics(decisions, world.correct)
        diff = paired_differences(world.fixed, decisions, world.correct)
        out.append({"keep_bar": keep_bar, "flip_bar": flip_bar, "price": price, **m, "vs_fixed": diff})
    return out


def measured_rows(out: Path, worlds: dict) -> list[str]:
    """The harness's own judging modes on the same worlds (its ``results.json``, when the run kept one): the default
    rule's requests and paired differences, beside the bound."""
    path = out / "results.json"
    if not path.exists():
        return []
    results = [r for r in json.loads(path.read_text()) if r["method"] == "reliability (default)"]
    fixed = {r["setting"]: r["requests_per_pair"] for r in results if ", judging " not in r["setting"]}
    lines = []
    for r in results:
        world, _, judging = r["setting"].partition(", judging ")
        if r.get("vs_fixed") and world in fixed:
            row = {**r, "keep_bar": None, "flip_bar": None, "price": None}
            name = f"judges {worlds[world].judge_accuracy}, measured"
            lines.append(_row(name, f"today: judging {judging}", row, fixed[world]))
    return lines


def _row(world: str, label: str, r: dict, fixed_requests: float) -> str:
    def d(k: str) -> str:
        v = r["vs_fixed"][k]
        return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]" + (" ✗" if v[2] < 0 else "")

    bars = "—" if r["keep_bar"] is None else f"{_bar(r['keep_bar']):.2f} / {_bar(r['flip_bar']):.2f} / {r['price']}"
    ratio = fixed_requests / r["requests_per_pair"] if r["requests_per_pair"] else float("inf")
    return (
        f"| {world} | {label} | {bars} | {r['requests_per_pair']:.2f} | {ratio:.2f}× | {d('kept_accuracy')} | "
        f"{d('retention')} | {d('recycled_precision')} |"
    )


def _bar(cost: float) -> float:
    """The posterior at which a decision costing ``cost`` per error pays: P ≥ cost / (1 + cost)."""
    return cost / (1 + cost)


def _defined(r: dict) -> list[list[float]]:
    return [r["vs_fixed"][k] for k in QUALITY if r["vs_fixed"][k][0] == r["vs_fixed"][k][0]]  # NaN: no flip


def worst_upper(r: dict) -> float:
    """The lowest upper end of the three paired intervals: ≥ 0 means no loss beyond noise."""
    return min(v[2] for v in _defined(r))


def least_loss(r: dict) -> tuple[float, float]:
    """Ranks policies: no loss beyond noise first, then the sum of the three paired differences."""
    return min(worst_upper(r), 0.0), sum(v[0] for v in _defined(r))


def report(name: str, fixed_requests: float, rows: list[dict]) -> list[str]:
    """The cheapest policy with no loss beyond noise, and at 2×, 2.5× and 3× fewer requests than fixed sampling
    the policy closest to no loss (``least_loss``)."""
    lines = []
    safe = [r for r in rows if worst_upper(r) >= 0]
    if safe:
        cheapest = min(safe, key=lambda r: r["requests_per_pair"])
        lines.append(_row(name, "fewest requests with no loss", cheapest, fixed_requests))
    for ratio in (2.0, 2.5, 3.0):
        within = [r for r in rows if r["requests_per_pair"] <= fixed_requests / ratio]
        if within:
            lines.append(_row(name, f"least loss at ≥ {ratio}×", max(within, key=least_loss), fixed_requests))
    return lines


def third_note(name: str, fixed_requests: float, rows: list[dict]) -> str:
    """How many policies save ≥ 3× and how many of them lose nothing, not even within noise."""
    third = [r for r in rows if r["requests_per_pair"] <= fixed_requests / 3]
    lossless = [r for r in third if all(v[0] >= 0 for v in _defined(r))]
    return f"- {name}: {len(third)} of {len(rows)} policies save ≥ 3×; {len(lossless)} of them lose nothing"


def one_policy(results: dict) -> list[str]:
    """The one policy (keep bar, flip bar, price) with no loss beyond noise on every world and the most requests
    saved on the world where it saves the least: what a production rule set once, before seeing the truth, could
    at best achieve (chosen here after seeing it, so still optimistic)."""
    policies: dict[tuple, list[tuple[str, float, dict]]] = collections.defaultdict(list)
    for name, result in results.items():
        for r in result["frontier"]:
            policies[(r["keep_bar"], r["flip_bar"], r["price"])].append((name, result["fixed_requests"], r))
    safe = {k: v for k, v in policies.items() if all(worst_upper(r) >= 0 for _, _, r in v)}
    if not safe:
        return []
    best = max(safe.values(), key=lambda v: min(fixed / r["requests_per_pair"] for _, fixed, r in v))
    return [_row(name, "one policy for every world", r, fixed) for name, fixed, r in best]


HEADER = (
    "| world | policy | keep / flip bar / vote price | requests / pair | vs fixed | kept accuracy Δ "
    "[95% CI] | retention Δ | recycled precision Δ |\n|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the --out directory of a curation_quality.py run with fixed sampling")
    args = ap.parse_args(argv)
    worlds = {s.world: s for s in QUICK + SWEEP}
    lines, results, notes = [HEADER, *measured_rows(Path(args.out), {s.name: s for s in QUICK + SWEEP})], {}, []
    for root in sorted(p for p in Path(args.out).iterdir() if (p / "storage" / "stage2" / "eval-fixed").exists()):
        setting = worlds[root.name]
        for knows, profile in (("the judges' true model", judge_profile(setting)), ("the probe's model", None)):
            world = load_world(root, profile)
            fixed_requests = metrics(world.fixed, world.correct)["requests_per_pair"]
            rows = frontier(world)
            name = f"judges {setting.judge_accuracy}, knowing {knows}"
            results[name] = {"fixed_requests": fixed_requests, "frontier": rows}
            lines += report(name, fixed_requests, rows)
            notes.append(third_note(name, fixed_requests, rows))
    lines += one_policy({k: v for k, v in results.items() if k.endswith("the probe's model")})
    lossless = "Saving ≥ 3× and losing nothing (no paired difference below 0, even within noise):"
    text = "\n".join([*lines, "", lossless, *notes])
    print(text)
    header = f"# Judging: the Bayes-optimal bound\n\nMeasured {dt.date.today()} on {machine()}.\n\n{__doc__}"
    (RESULTS / "judging_bound.md").write_text(f"{header}\n{text}\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
