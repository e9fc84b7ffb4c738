"""Curation quality, measured against a hidden truth: the decision rules side by side, and cleanlab.

One command (README, "Curation quality") builds, per setting (label noise, judge accuracy, RM mode), a
synthetic world: seed gold and silver, an unverified pool, an in-the-wild set with exact and mirrored
duplicates (conflicting labels), and a clean test set, all disjoint. It runs two stage-1 rounds
(SIMULATED judges over real HTTP, SIMULATED human review between rounds) and stage 2's scoring, then
judges every in-the-wild pair once so that every rule can be evaluated on the same saved evidence: a
rule only sees the verdicts of the pairs it routes to the judges. Each curated set (kept + recycled)
also trains a BT head on frozen MiniLM features; its accuracy on the clean test set is compared with
the raw set's and the truth's ("oracle").

The baseline is what a user would run without this project: cleanlab's ``find_label_issues`` on
out-of-fold ``LogisticRegression`` probabilities (5-fold) over embedding(prompt + A) − embedding(prompt
+ B) in a random orientation, with the gold pairs as extra training data; its curated set is the input
with the flagged labels flipped.

    python benchmarks/curation_quality.py                # the README sweep (~45 minutes on 2 cores)
    python benchmarks/curation_quality.py --quick        # two small settings, judges 0.8 and 0.7 (minutes)
    python benchmarks/curation_quality.py --quick --judging fixed adaptive logprobs   # what judging costs

``--judging``: fixed = every sample of every annotator (self-consistency as it was); ``+n3`` (fixed+n3,
sequence+n3) = an annotator's three samples in one request (``choices_per_request: 3``, the default; without it
one request per sample, as the stage-1 rounds here judge); adaptive = samples only
while an annotator's verdict is open; logprobs = one request, the verdict token's probability (the
SIMULATED judges return P = their accuracy on the pair: calibrated and difficulty-aware); sequence = adaptive,
and the annotators judge one after another, a pair going to the next only while the default rule leaves it
open (``judges_in_sequence``, the default); sequence+logprobs = both; ``@target`` (sequence@target,
sequence+logprobs@target): stopping a pair once it reaches the target precision instead of the default stopping
confidences past it (``keep_stop_confidence``, ``flip_stop_confidence``). With judges in sequence the verdicts
depend on the rule, so only the default rule (and "no judges") is evaluated. Every judging mode of a setting
runs stage 2 on the same world and the same stage-1 rounds (``stage2/eval-<judging>``, one LLM cache), so the
modes differ only by what each asks; ``--table ... --cost`` shows each mode's difference from fixed sampling on
the same pairs, with a paired 95% bootstrap interval (✗: a loss beyond noise).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from synpref.io.layout import StorageLayout
from synpref.io.preprocess import prepare
from synpref.io.storage import read_json, read_parquet, write_json, write_parquet
from synpref.llm.annotation import requests_asked
from synpref.llm.client import AnnotatorConfig
from synpref.models.reliability import judge_reliability
from synpref.models.reward_model import fit_bt_head, head_scores, pair_features
from synpref.pipeline import run_round
from synpref.settings import PrepareConfig, RMConfig, Stage1Config, Stage2Config
from synpref.simulation.evaluation import truth_agree
from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex, simulate_human_review
from synpref.simulation.synthetic import generate_disjoint
from synpref.stage1.steps import judge_probe, step_evaluate
from synpref.stage2.canaries import estimates, label_right
from synpref.stage2.consistency import PaperRule, RuleBase, configured_rule, decide_shard
from synpref.stage2.steps import (
    Stage2Run,
    begin_run,
    merged_verdicts,
    step_annotate_shard,
    step_finalize_prepare,
    step_prepare_file,
    step_score,
)

log = logging.getLogger("curation_quality")


@dataclass(frozen=True)
class Setting:
    noise: float
    judge_accuracy: float
    rm_mode: str
    wild: int = 2000
    pool: int = 1500
    judging: str = "fixed"  # one of JUDGING (see the module docstring)
    profile: str = "sim"  # the judges: "sim" (three at judge_accuracy) or a key of PROFILES

    @property
    def name(self) -> str:
        judging = "" if self.judging == "fixed" else f", judging {self.judging}"
        judges = self.judge_accuracy if self.profile == "sim" else self.profile
        return f"noise {self.noise:.0%}, judges {judges}, RM {self.rm_mode}{judging}"

    @property
    def world(self) -> str:
        """The world's directory name: every judging mode of a setting runs on the same world and rounds."""
        return replace(self, judging="fixed").name.replace(" ", "_").replace(",", "").replace("%", "pct")

    @property
    def run_name(self) -> str:
        """This judging mode's stage-2 run in the world's storage root."""
        return f"eval-{self.judging.replace('+', '-').replace('@', '-')}"

    @property
    def sampling(self) -> str:
        return "fixed" if self.judging.startswith("fixed") else "adaptive"

    @property
    def choices(self) -> int:
        """``+n3``: an annotator's three samples in one request (OpenAI's ``n``, the default); else one request
        per sample, as before."""
        return 3 if "+n3" in self.judging else 1

    @property
    def in_sequence(self) -> bool:
        return self.judging.startswith("sequence")

    @property
    def logprobs(self) -> bool:
        return "logprobs" in self.judging

    @property
    def stop_bars(self) -> dict[str, float]:
        """``@target``: judging in sequence stops at the target precision (the decisions' bar) instead of the
        default stopping confidences past it."""
        target = Stage2Config().target_precision
        at_target = {"keep_stop_confidence": target, "flip_stop_confidence": target}
        return at_target if self.judging.endswith("@target") else {}


JUDGING = ["fixed", "fixed+n3", "adaptive", "logprobs", "sequence", "sequence+n3", "sequence+logprobs"]
JUDGING += [f"{j}@target" for j in JUDGING if j.startswith("sequence")]


SWEEP = [
    Setting(0.30, 0.8, "frozen"),
    Setting(0.30, 0.8, "full"),
    Setting(0.10, 0.8, "frozen"),
    Setting(0.45, 0.8, "frozen"),
    Setting(0.30, 0.7, "frozen"),
    Setting(0.30, 0.9, "frozen"),
]
QUICK = [Setting(0.30, 0.8, "frozen", wild=800, pool=800), Setting(0.30, 0.7, "frozen", wild=800, pool=800)]
# judges as people have them (SIMULATED): deterministic, erring together on hard pairs, an order-sensitive LLM
# judge and two weak order-invariant RM-judges (the real-judge case of the project's issues); and a useless one
PROFILES = {
    "real-like": {
        "judge-0": JudgeProfile(0.76, difficulty=1.0, deterministic=True),
        "judge-1": JudgeProfile(0.63, difficulty=1.0, deterministic=True, order_invariant=True),
        "judge-2": JudgeProfile(0.64, difficulty=1.0, deterministic=True, order_invariant=True),
    },
    "useless": {f"judge-{i}": JudgeProfile(0.5, deterministic=True) for i in range(3)},
}
REAL_LIKE = [Setting(0.30, 0.7, "frozen", wild=800, pool=800, profile=p) for p in PROFILES]


# --- the world -------------------------------------------------------------------------------


def _with_copies(wild: pa.Table, truth: pa.Table, share: float, rng: np.random.Generator) -> tuple:
    """Exact copies and mirrored copies (same conversation, responses swapped: the opposite label)."""
    from synpref.schema import PairRecord, records_to_table

    rows, truths = wild.to_pylist(), truth.to_pylist()
    n = int(len(rows) * share)
    picks = rng.choice(len(rows), size=2 * n, replace=False)
    extra, extra_truth = [], []
    for j, i in enumerate(picks):
        r, t = rows[i], truths[i]
        if j < n:  # an exact copy: the same pair_id, caught by exact dedup
            extra.append(r)
            extra_truth.append(t)
            continue
        mirrored = PairRecord(
            conversation=r["conversation"], chosen=r["rejected"], rejected=r["chosen"], source=r["source"]
        )
        extra.append(mirrored.model_dump())
        extra_truth.append(
            {**t, "pair_id": mirrored.pair_id, "noisy": not t["noisy"], "chosen_is_correct": t["noisy"]}
        )
    return pa.concat_tables([wild, records_to_table(extra)]), pa.concat_tables(
        [truth, pa.Table.from_pylist(extra_truth, schema=truth.schema)]
    )


def build_world(root: Path, s: Setting) -> dict:
    sets = {}
    for name, (n, seed, noise, attrs) in {
        "gold": (200, 1, 0.0, True),
        "silver": (800, 2, 0.2, True),
        "pool": (s.pool, 3, s.noise, False),
        "wild": (s.wild, 4, s.noise, False),
        "test": (1500, 5, 0.0, False),
    }.items():
        earlier = [pairs for pairs, _ in sets.values()]
        sets[name] = generate_disjoint(n, earlier, seed=seed, noise=noise, with_attributes=attrs, source=name)
    sets["wild"] = _with_copies(*sets["wild"], 0.05, np.random.default_rng(7))
    store = StorageLayout(root / "storage")
    for name, rel in (("gold", "seed/gold.parquet"), ("silver", "seed/silver.parquet"), ("pool", "raw/pool.parquet")):
        write_parquet(sets[name][0], store.root / rel)
    write_parquet(sets["wild"][0], store.wild / "wild.parquet")
    for name, (_, truth) in sets.items():
        write_parquet(truth, root / "truth" / f"{name}.parquet")
    return sets


# --- running the pipeline -------------------------------------------------------------------


def judges_for(s: Setting, server: SimulatedJudgeServer) -> list[AnnotatorConfig]:
    names = [f"judge-{i}" for i in range(3)]
    return [
        AnnotatorConfig(
            name=n,
            base_url=server.base_url,
            model=n,
            api_key="sk-sim",
            samples=3,
            max_concurrency=16,
            timeout_s=10,
            verdicts="auto" if s.logprobs else "sampled",
            choices_per_request=s.choices,
        )
        for n in names
    ]


def judge_profile(s: Setting) -> JudgeProfile:
    """The SIMULATED judges of a setting: its accuracy, 10% position bias, no faults, and a pair difficulty every
    judge shares (``difficulty`` 0.5: a pair's accuracy spreads over accuracy ± (1 − accuracy) / 2)."""
    return JudgeProfile(s.judge_accuracy, 0.1, 0.0, 0.5)


def simulated_judges(s: Setting, sets: dict) -> SimulatedJudgeServer:
    profiles = PROFILES.get(s.profile) or {f"judge-{i}": judge_profile(s) for i in range(3)}
    return SimulatedJudgeServer(TruthIndex.from_tables(*(t for _, t in sets.values())), profiles, api_key="sk-sim")


def run_stage1(root: Path, s: Setting, sets: dict) -> tuple[StorageLayout, str]:
    """Two stage-1 rounds with the default settings (the same rounds whatever stage 2's judging)."""
    store = StorageLayout(root / "storage")
    truths = [root / "truth" / f"{n}.parquet" for n in sets]
    server = simulated_judges(s, sets)
    server.start()
    try:
        annotators = judges_for(replace(s, judging="fixed"), server)
        prepare([str(store.raw / "pool.parquet")], store.pool, None, PrepareConfig(shard_size=1000))
        cfg = Stage1Config(rm={"mode": s.rm_mode, "epochs": 2}, spot_check=20)
        day = dt.date(2026, 11, 1)
        for i in range(2):
            rnd = str(day + dt.timedelta(days=i))
            run_round(store, rnd, annotators, cfg)
            nxt = str(day + dt.timedelta(days=i + 1))
            simulate_human_review(store.round(rnd).review_tasks, truths, store.inbox(nxt) / "export.json")
            log.info("round %s: %s", rnd, json.dumps(read_json(store.round(rnd).manifest)["summary"]))
        return store, store.resolve_round()
    finally:
        server.stop()


def run_stage2(store: StorageLayout, rnd: str, s: Setting, sets: dict) -> None:
    """Stage 2's scoring and judging of the in-the-wild set with this setting's judging, in its own run directory
    (``stage2/eval-<judging>``) over the same rounds and the same LLM cache: every judging mode sees the same world
    and the same answers, so their decisions differ only by what each asked."""
    server = simulated_judges(s, sets)
    server.start()
    try:
        annotators = judges_for(s, server)
        run = begin_run(store.stage2(s.run_name))
        step_prepare_file(run, 0, str(store.wild / "wild.parquet"))
        cfg2 = Stage2Config(shard_size=2000, sampling=s.sampling, judges_in_sequence=s.in_sequence, **s.stop_bars)
        shards = step_finalize_prepare(run, cfg2)
        # every annotator judging every pair: routing every pair lets every rule be evaluated on the same verdicts;
        # judges in sequence stop where the default rule settles a pair, so only that rule can be evaluated
        everything = None if s.in_sequence else PaperRule(band=0.5, recycle_policy="both_rms_reject")
        for shard in shards:
            step_score(Stage2Run.at(store, run, rnd, cfg2), shard, rule=everything)
            step_annotate_shard(Stage2Run.at(store, run, rnd, cfg2), shard, annotators, len(shards))
    finally:
        server.stop()


# --- rules and metrics ----------------------------------------------------------------------


def rule_variants(store: StorageLayout, rnd: str) -> dict[str, tuple[RuleBase, bool]]:
    """name → (rule as the run would configure it, uses judges)."""
    r = store.round(rnd)
    cal = read_json(r.calibration)
    default = configured_rule(Stage2Config(), r)
    best_only = {"best": cal["best"]["weight"]} if cal["best"]["significant"] else {}
    return {
        "paper (both_rms_reject)": (configured_rule(Stage2Config(decision_rule="paper"), r), True),
        "paper (all_discarded)": (
            configured_rule(Stage2Config(decision_rule="paper", recycle_policy="all_discarded"), r),
            True,
        ),
        "reliability (default)": (default, True),
        "reliability, no gold RM": (default.model_copy(update={"rm_weights": best_only}), True),
        "reliability, no judges": (default, False),
        "reliability, both_rms_reject": (configured_rule(Stage2Config(recycle_policy="both_rms_reject"), r), True),
        "reliability, all_discarded": (configured_rule(Stage2Config(recycle_policy="all_discarded"), r), True),
    }


def decide_all(store, rnd, run, shards, rule: RuleBase, use_judges: bool) -> tuple[dict, list[dict]]:
    """Decisions of one rule over the saved scores and verdicts (``decide_shard``, as the DAG's decide task),
    and its canaries' outcomes."""
    out, canaries = {}, []
    for shard in shards:
        sl = run.shard(shard)
        scores = read_parquet(sl.scores).to_pylist()
        names = sorted(p.parent.name for p in (sl.dir / "annotations").glob("*/samples.parquet"))
        verdicts = merged_verdicts(sl, names, "majority", store.round(rnd)) if use_judges else {}
        result = decide_shard(scores, verdicts, rule.fit(scores), read_parquet(sl.canary_scores).to_pylist())
        asked = Counter(  # every request asked, also of annotators the rule counts zero (measured uninformative)
            r["pair_id"]
            for n in names
            for r in read_parquet(sl.samples(n), ["pair_id", "choice"]).to_pylist()
            if not r["choice"]  # a request's later choices are not requests
        )
        out.update(
            {
                pid: (d.decision, use_judges and result.routed[pid], asked.get(pid, 0) if result.routed[pid] else 0)
                for pid, d in result.decided.items()
            }
        )
        canaries += [{"label_right": label_right(pid), "decision": d.decision} for pid, d in result.canaries.items()]
    return out, canaries


def metrics(decisions: dict[str, tuple[str, bool, int]], correct: dict[str, bool]) -> dict:
    ids = [p for p in decisions if p in correct]
    kept = [p for p in ids if decisions[p][0] == "kept"]
    recycled = [p for p in ids if decisions[p][0] == "recycled"]
    flagged = {p for p in ids if decisions[p][0] != "kept"}
    noisy = {p for p in ids if not correct[p]}
    tp = len(flagged & noisy)
    precision = tp / len(flagged) if flagged else 0.0
    recall = tp / len(noisy) if noisy else 0.0
    return {
        "noise_precision": precision,
        "noise_recall": recall,
        "noise_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "kept_accuracy": sum(correct[p] for p in kept) / len(kept) if kept else None,
        "retention": sum(correct[p] for p in kept) / max(1, sum(correct[p] for p in ids)),
        "recycled_precision": sum(not correct[p] for p in recycled) / len(recycled) if recycled else None,
        "curated": len(kept) + len(recycled),
        "judged_share": sum(decisions[p][1] for p in ids) / len(ids),
        "requests_per_pair": sum(decisions[p][2] for p in ids) / len(ids),  # judge requests of the routed pairs
        **bootstrap_intervals(ids, decisions, correct),
    }


def oracle_frontier(run, shards: list[str], correct: dict[str, bool]) -> list[tuple[float, float]]:
    """The calibrated oracle of the same evidence: a logistic regression fitted on the truth (in sample: a ceiling)
    over each annotator's majority vote and each RM's logit, pairs taken most confident first, ties whole; →
    (precision, retention) along that order (truth). Needs every pair judged (fixed sampling)."""
    from sklearn.linear_model import LogisticRegression

    votes: dict[str, dict[str, int]] = {}
    logits: dict[str, list[float]] = {}
    for shard in shards:
        sl = run.shard(shard)
        scores = read_parquet(sl.scores)
        names = sorted(c for c in scores.column_names if c.startswith("logit_"))
        for r in scores.select(["pair_id", *names]).to_pylist():
            logits[r["pair_id"]] = [r[n] or 0.0 for n in names]
        for path in (sl.dir / "annotations").glob("*/samples.parquet"):
            for r in read_parquet(path, ["pair_id", "annotator", "verdict"]).to_pylist():
                v = {"agree": 1, "disagree": -1}.get(r["verdict"], 0)
                votes.setdefault(r["pair_id"], {}).setdefault(r["annotator"], 0)
                votes[r["pair_id"]][r["annotator"]] += v
    annotators = sorted({a for v in votes.values() for a in v})
    ids = [p for p in correct if p in logits]
    x = np.array([[np.sign(votes.get(p, {}).get(a, 0)) for a in annotators] + logits[p] for p in ids])
    y = np.array([correct[p] for p in ids])
    posterior = LogisticRegression(C=1e4, max_iter=1000).fit(x, y).predict_proba(x)[:, 1]
    groups: dict[float, list[int]] = {}
    for i, q in enumerate(posterior):
        groups.setdefault(round(float(q), 9), []).append(i)
    out, kept, good, total_right = [], 0, 0, max(1, int(y.sum()))
    for q in sorted(groups, reverse=True):
        kept += len(groups[q])
        good += int(y[groups[q]].sum())
        out.append((good / kept, good / total_right))
    return out


def oracle_retention(frontier: list[tuple[float, float]], precision: float | None) -> float | None:
    """The most the oracle retains at a precision at least ``precision`` (None: no such point)."""
    if precision is None:
        return None
    reached = [r for p, r in frontier if p >= precision - 1e-12]
    return max(reached) if reached else None


QUALITY = ("kept_accuracy", "retention", "recycled_precision")


def _resampled_quality(ids: list[str], decisions: dict, correct: dict[str, bool], idx: np.ndarray) -> dict:
    """Each quality figure over every resample of the pairs (rows of ``idx``); NaN where undefined."""
    kept = np.array([decisions[p][0] == "kept" for p in ids])[idx]
    recycled = np.array([decisions[p][0] == "recycled" for p in ids])[idx]
    right = np.array([correct[p] for p in ids])[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "kept_accuracy": (kept & right).sum(1) / kept.sum(1),
            "retention": (kept & right).sum(1) / right.sum(1),
            "recycled_precision": (recycled & ~right).sum(1) / recycled.sum(1),
        }


def _resamples(ids: list[str], n: int = 2000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(ids), size=(n, len(ids)))


def bootstrap_intervals(ids: list[str], decisions: dict, correct: dict[str, bool]) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals (pairs resampled) of kept accuracy, retention and recycled precision."""
    stats = _resampled_quality(ids, decisions, correct, _resamples(ids))
    return {f"{k}_ci": [round(float(q), 4) for q in np.nanpercentile(v, [2.5, 97.5])] for k, v in stats.items()}


def paired_differences(fixed: dict, decisions: dict, correct: dict[str, bool]) -> dict[str, list[float]]:
    """[difference, 95% low, high] of each quality figure against fixed sampling on the same pairs of the same
    world (the pairs resampled together): a difference whose interval lies below 0 is a loss beyond noise."""
    ids = [p for p in decisions if p in correct and p in fixed]

    def difference(idx: np.ndarray) -> dict[str, np.ndarray]:
        new, old = _resampled_quality(ids, decisions, correct, idx), _resampled_quality(ids, fixed, correct, idx)
        return {k: new[k] - old[k] for k in QUALITY}

    point, spread = difference(np.arange(len(ids))[None]), difference(_resamples(ids))
    return {
        k: [round(float(point[k][0]), 4), *(round(float(q), 4) for q in np.nanpercentile(spread[k], [2.5, 97.5]))]
        for k in QUALITY
    }


class Features:
    """Frozen MiniLM features of (prompt + response) for both responses of every pair, computed once."""

    def __init__(self, rows: list[dict]):
        self.index = {r["pair_id"]: i for i, r in enumerate(rows)}
        self.w, self.l = pair_features(rows)

    def pairs(self, ids: list[str], flip: set[str] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        idx = np.array([self.index[p] for p in ids])
        swap = np.array([p in flip for p in ids])
        w = np.where(swap[:, None], self.l[idx], self.w[idx])
        lose = np.where(swap[:, None], self.w[idx], self.l[idx])
        return w, lose


def rm_test_accuracy(
    feats: Features, train_ids: list[str], flip: set[str], gold_ids: list[str], test_ids: list[str]
) -> float:
    import torch

    xw, xl = (torch.from_numpy(a.astype(np.float32)) for a in feats.pairs(train_ids, flip))
    sw, sl = (torch.from_numpy(a.astype(np.float32)) for a in feats.pairs(gold_ids))
    state, _ = fit_bt_head(xw, xl, sw, sl, RMConfig(mode="frozen"))
    tw, tl = feats.pairs(test_ids)
    return float(np.mean(head_scores(state, tw) - head_scores(state, tl) > 0))


def cleanlab_flags(feats: Features, wild_ids: list[str], gold_ids: list[str], seed: int = 0) -> set[str]:
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    rng = np.random.default_rng(seed)
    ids = wild_ids + gold_ids
    w, lose = feats.pairs(ids)
    a_is_chosen = rng.random(len(ids)) < 0.5
    x = np.where(a_is_chosen[:, None], w - lose, lose - w)
    labels = a_is_chosen.astype(int)
    probs = cross_val_predict(LogisticRegression(max_iter=2000, C=1.0), x, labels, cv=5, method="predict_proba")
    issues = find_label_issues(labels, probs)
    return {p for p, bad in zip(ids, issues) if bad and p in set(wild_ids)}


def refresh_evidence(store: StorageLayout, rnd: str) -> None:
    """Re-derive the round's calibration and judge reliability from its saved RMs and probes (``--reuse``)."""
    step_evaluate(store, rnd)
    r = store.round(rnd)
    probes = [read_parquet(p) for p in sorted((r.dir / "annotations").glob("*/probe.parquet"))]
    write_json(judge_reliability(pa.concat_tables(probes)), r.judges)


def evaluate_setting(
    s: Setting, workdir: Path, reuse: bool = False, fresh: bool = True, fixed: dict | None = None
) -> tuple[list[dict], dict]:
    """The setting's rows and the default rule's decisions. ``fresh``: build the world and its stage-1 rounds
    (else they are the ones an earlier judging mode of the setting built); ``reuse``: also the stage-2 run kept in
    ``workdir``. ``fixed``: fixed sampling's decisions on the same world, for the paired differences."""
    root = workdir / s.world
    t0 = time.time()
    names = ("gold", "silver", "pool", "wild")
    if fresh and not (reuse and (root / "storage" / "rounds").exists()):
        shutil.rmtree(root, ignore_errors=True)
        sets = build_world(root, s)
        write_parquet(sets["test"][0], root / "test.parquet")
        store, rnd = run_stage1(root, s, sets)
    else:
        sets = {n: (None, read_parquet(root / "truth" / f"{n}.parquet")) for n in names}
        sets["test"] = (read_parquet(root / "test.parquet"), read_parquet(root / "truth" / "test.parquet"))
        store = StorageLayout(root / "storage")
        rnd = store.resolve_round()
    run = store.stage2(s.run_name)
    reused = reuse and (run.dir / "prepared" / "manifest.json").exists()
    if reused:
        refresh_evidence(store, rnd)
    with probe_calibration(store, rnd, s, sets):
        if not reused:
            run_stage2(store, rnd, s, sets)
        results, decisions = _evaluate(s, store, rnd, run, sets, fixed)
    log.info("%s done in %.0f s", s.name, time.time() - t0)
    return results, decisions


def _evaluate(s: Setting, store: StorageLayout, rnd: str, run, sets: dict, fixed: dict | None) -> tuple:
    """The rows of one judging mode's stage-2 run: every rule variant's quality and cost, and cleanlab's."""
    pool = run.pool()
    shards = pool.shard_uris()
    wild_rows = [r for shard in pool.shards() for r in read_parquet(shard).to_pylist()]
    correct = truth_agree(wild_rows, sets["wild"][1])
    gold_rows = read_parquet(store.round(rnd).gold).to_pylist()
    test_rows = sets["test"][0].to_pylist()
    feats = Features(wild_rows + gold_rows + test_rows)
    wild_ids, gold_ids, test_ids = ([r["pair_id"] for r in rows] for rows in (wild_rows, gold_rows, test_rows))
    noisy = {p for p, ok in correct.items() if not ok}
    results = []
    base = {"setting": s.name, "rm_test_raw": rm_test_accuracy(feats, wild_ids, set(), gold_ids, test_ids)}
    base["rm_test_oracle"] = rm_test_accuracy(feats, wild_ids, noisy, gold_ids, test_ids)
    variants = rule_variants(store, rnd)
    if s.in_sequence:  # the verdicts were asked where the default rule left a pair open: only it can use them
        variants = {k: v for k, v in variants.items() if k in ("reliability (default)", "reliability, no judges")}
    per_request = request_cost(run, shards)
    default_decisions: dict = {}
    for name, (rule, use_judges) in variants.items():
        decisions, canaries = decide_all(store, rnd, run, shards, rule, use_judges)
        m = metrics(decisions, correct)
        if name == "reliability (default)":
            default_decisions = decisions
            if fixed and s.judging != "fixed":
                m["vs_fixed"] = paired_differences(fixed, decisions, correct)
        m["cost_per_1k_curated"] = 1000 * m["requests_per_pair"] * len(correct) * per_request / max(1, m["curated"])
        kept_share = sum(d == "kept" for d, *_ in decisions.values()) / len(decisions)
        m["canary"] = estimates(canaries, kept_share).dump()
        kept = [p for p, (d, *_) in decisions.items() if d in ("kept", "recycled")]
        flip = {p for p, (d, *_) in decisions.items() if d == "recycled"}
        m["rm_test"] = rm_test_accuracy(feats, kept, flip, gold_ids, test_ids) if kept else None
        results.append({**base, "method": name, **m})
    flags = cleanlab_flags(feats, wild_ids, gold_ids)
    cl = metrics({p: ("recycled" if p in flags else "kept", False, 0) for p in wild_ids}, correct)
    cl["rm_test"] = rm_test_accuracy(feats, wild_ids, flags, gold_ids, test_ids)
    cl["recycled_precision"] = sum(not correct[p] for p in flags) / len(flags) if flags else None
    results.append({**base, "method": "cleanlab find_label_issues (flip flagged)", **cl})
    if not s.in_sequence:  # every pair judged: the oracle of the same verdicts, and each row's share of it
        results += _against_oracle(results, base, oracle_frontier(run, shards, correct))
    return results, default_decisions


def _against_oracle(results: list[dict], base: dict, frontier: list[tuple[float, float]]) -> list[dict]:
    """Each row's retention as a share of the oracle's at the row's own kept precision (in place), and the oracle's
    row at the default rule's precision."""
    for r in results:
        best = oracle_retention(frontier, r.get("kept_accuracy"))
        r["vs_oracle"] = r["retention"] / best if best else None
    default = next((r for r in results if r["method"] == "reliability (default)"), None)
    if default is None or default.get("kept_accuracy") is None:
        return []
    reached = [(r, p) for p, r in frontier if p >= default["kept_accuracy"] - 1e-12]
    retention, precision = max(reached) if reached else (None, None)
    row = {k: None for k in ("recycled_precision", "noise_precision", "noise_recall", "noise_f1", "rm_test")}
    row |= {"kept_accuracy": precision, "retention": retention}
    row |= {"curated": None, "judged_share": 1.0, "requests_per_pair": None, "vs_oracle": 1.0}
    name = "oracle frontier (the same evidence calibrated on the truth, at the default's precision)"
    return [{**base, "method": name, **row}]


@contextlib.contextmanager
def probe_calibration(store: StorageLayout, rnd: str, s: Setting, sets: dict) -> Iterator[None]:
    """For the modes that judge otherwise than the stage-1 rounds did (one sampled choice a request): the round's
    gold probe judged again the mode's way, its measurements in ``judges.json`` while the mode runs, then the file
    restored — the logprob verdicts' calibration (``logprobs``) added, or, for several choices a request, every
    annotator's vote cells measured anew (its choices share the candidates' order, so their errors are less
    independent). In production the probe is judged the way the annotator judges (one connection); here the
    stage-1 rounds are shared by every judging mode, so each measures its verdicts on the same probe pairs."""
    if not (s.logprobs or s.choices > 1):
        yield
        return
    r = store.round(rnd)
    original, judges = r.judges.read_bytes(), read_json(r.judges)
    server = simulated_judges(s, sets)
    server.start()
    try:
        probes = [judge_probe(store, rnd, a)[2] for a in judges_for(s, server)]
    finally:
        server.stop()
    measured = judge_reliability(pa.concat_tables(probes))
    if s.logprobs:
        for name, stats in measured["annotators"].items():
            if "logprobs" in stats:
                judges["annotators"][name]["logprobs"] = stats["logprobs"]
    else:
        judges = measured
    write_json(judges, r.judges)
    try:
        yield
    finally:
        r.judges.write_bytes(original)


PRICE_PER_M = (2.0, 8.0)  # USD per million prompt / completion tokens (a frontier API's list price) for the table


def request_cost(run, shards: list[str]) -> float:
    """Mean USD of one judge request at ``PRICE_PER_M``, from the tokens the run's requests used."""
    requests, tokens_in, tokens_out = 0, 0, 0
    for shard in shards:
        sl = run.shard(shard)
        for usage in (sl.dir / "annotations").glob("*/usage.json"):
            work = read_json(usage)
            tokens_in, tokens_out = tokens_in + work["prompt_tokens"], tokens_out + work["completion_tokens"]
            requests += requests_asked(read_parquet(usage.parent / "samples.parquet"))
    return (tokens_in * PRICE_PER_M[0] + tokens_out * PRICE_PER_M[1]) / 1e6 / max(1, requests)


def gap_closed(r: dict) -> float | None:
    if r["rm_test"] is None or r["rm_test_oracle"] <= r["rm_test_raw"]:
        return None
    return (r["rm_test"] - r["rm_test_raw"]) / (r["rm_test_oracle"] - r["rm_test_raw"])


def _within(estimate: dict, truth: float | None) -> str:
    if truth is None or estimate.get("estimate") is None:
        return "—"
    ok = (estimate["ci_low"] or 0) <= truth <= (estimate["ci_high"] or 1)
    return f"{estimate['estimate']:.3f} [{estimate['ci_low'] or 0:.3f}, {estimate['ci_high'] or 1:.3f}]" + (
        "" if ok else " ✗"
    )


def cost_table(results: list[dict]) -> str:
    """The default rule's judging cost against fixed sampling, per judge accuracy (README "Judging at scale")."""

    def ci(r: dict, key: str) -> str:
        low, high = r.get(f"{key}_ci") or (None, None)
        return "—" if r[key] is None else f"{r[key]:.3f} [{low:.3f}, {high:.3f}]"

    def delta(r: dict, key: str) -> str:
        d = r.get("vs_fixed", {}).get(key)
        if d is None or d[0] != d[0]:  # none, or NaN (no recycled pair on one side)
            return "—"
        return f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" + (" ✗" if d[2] < 0 else "")

    lines = [
        "| judges | judging | requests / pair | vs fixed | kept accuracy [95% CI] | Δ vs fixed [95% CI] "
        "| correct kept (retention) [95% CI] | Δ vs fixed | recycled precision [95% CI] | Δ vs fixed | curated "
        "| $ / 1,000 curated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [r for r in results if r["method"] == "reliability (default)"]
    fixed = {r["setting"]: r for r in rows if ", judging " not in r["setting"]}  # a setting's name without judging
    for r in rows:
        base, _, judging = r["setting"].partition(", judging ")
        judges = base.split("judges ")[1].split(",")[0]
        ratio = f"{fixed[base]['requests_per_pair'] / r['requests_per_pair']:.2f}×" if base in fixed else "—"
        lines.append(
            f"| {judges} | {judging or 'fixed'} | {r['requests_per_pair']:.2f} | {ratio} | {ci(r, 'kept_accuracy')} | "
            f"{delta(r, 'kept_accuracy')} | {ci(r, 'retention')} | {delta(r, 'retention')} | "
            f"{ci(r, 'recycled_precision')} | {delta(r, 'recycled_precision')} | {r['curated']} | "
            f"{r['cost_per_1k_curated']:.2f} |"
        )
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    def f(x):
        return "—" if x is None else f"{x:.3f}"

    lines = []
    for setting in dict.fromkeys(r["setting"] for r in results):
        rows = [r for r in results if r["setting"] == setting]
        cleanlab_f1 = next(r["noise_f1"] for r in rows if r["method"].startswith("cleanlab"))
        lines += [
            f"\n**{setting}** — RM test accuracy: raw {rows[0]['rm_test_raw']:.3f}, "
            f"oracle {rows[0]['rm_test_oracle']:.3f}; cleanlab F1 {cleanlab_f1:.3f}\n",
            "| method | kept acc | correct kept | recycled prec | noise P / R / F1 | curated | judged "
            "| requests / pair | RM test | gap closed | retention / oracle's |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['method']} | {f(r['kept_accuracy'])} | {f(r['retention'])} | {f(r['recycled_precision'])} | "
                f"{f(r['noise_precision'])} / {f(r['noise_recall'])} / {f(r['noise_f1'])} | {r['curated'] or '—'} | "
                f"{f(r['judged_share'])} | {f(r.get('requests_per_pair'))} | {f(r['rm_test'])} | {f(gap_closed(r))} | "
                f"{f(r.get('vs_oracle'))} |"
            )
        canary_rows = [r for r in rows if r.get("canary", {}).get("canaries")]
        if canary_rows:
            lines += [
                "\nCanary estimates (95% interval; ✗ = the truth is outside it):\n",
                "| method | canaries | kept precision | retention | recycled precision |",
                "|---|---|---|---|---|",
            ]
            for r in canary_rows:
                c = r["canary"]
                lines.append(
                    f"| {r['method']} | {c['canaries']} | {_within(c['kept_precision'], r['kept_accuracy'])} | "
                    f"{_within(c['retention'], r['retention'])} | "
                    f"{_within(c['recycled_precision'], r['recycled_precision'])} |"
                )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two small settings (judges 0.8 and 0.7)")
    ap.add_argument("--real-like", action="store_true", help="judges as people have them (PROFILES), small worlds")
    ap.add_argument("--out", default=None, help="keep the worlds and write results.json here")
    ap.add_argument("--reuse", action="store_true", help="re-evaluate the rules on the worlds kept in --out")
    ap.add_argument("--only", action="append", default=[], help="run the settings whose name contains this")
    ap.add_argument("--table", nargs="*", default=None, help="print the table of these results.json files and exit")
    ap.add_argument("--judging", nargs="+", default=["fixed"], choices=JUDGING)
    ap.add_argument("--cost", action="store_true", help="with --table: the judging-cost table against fixed sampling")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "synpref", "sentence_transformers", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="synpref-quality-"))
    if args.table is not None:
        results = [r for path in args.table for r in json.loads(Path(path).read_text())]
        print(cost_table(results) if args.cost else table(results))
        return 0
    results = []
    settings = REAL_LIKE if args.real_like else QUICK if args.quick else SWEEP
    chosen = [s for s in settings if not args.only or any(o in s.name for o in args.only)]
    judgings = sorted(args.judging, key=lambda j: j != "fixed")  # fixed first: the others are compared with it
    fixed: dict[str, dict] = {}  # world → fixed sampling's decisions (default rule)
    for s in [replace(s, judging=j) for s in chosen for j in judgings]:
        rows, decisions = evaluate_setting(s, workdir, args.reuse, s.world not in fixed, fixed.get(s.world))
        fixed.setdefault(s.world, decisions if s.judging == "fixed" else {})
        results += rows
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    if not args.out:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
