"""Stage 1's mechanisms, measured: what adaptive retrieval and preference-aware annotation buy (paper Table 4).

Every row is a stage-1 setting a user can run in production (``synpref stage1 --retrieval random``, ...), run for
the same rounds on the same world with the same human and LLM budget per round:

- no curation: as many pool pairs as adaptive retrieval pulls, drawn at random, join silver with their stored
  labels (``retrieval: random``, ``retrieved_to: silver``; no judge is asked);
- human curation only: the same random pairs all go to the review queue, in a seeded random order
  (``retrieved_to: humans``, ``review_order: random``); the humans answer their budget of them;
- human curation + preference attributes: the same, the queue ordered by the attributes (objective,
  low-controversiality pairs first: ``review_order: priority``, the default);
- human + LLM curation with random retrieval (``retrieval: random``);
- full protocol (default): error-driven adaptive retrieval + preference-aware annotation;
- uncertainty sampling: as many pool pairs on which the best RM is least sure (``retrieval: uncertainty``,
  the classical active-learning baseline);
- plain judging: adaptive retrieval, but the judges see no gold examples, guideline or attributes
  (``preference_aware: false``, the paper's "pure LLM curation");

and the **seed RM** (round 1's best RM: seed silver + gold, before any retrieval) is the baseline of the gains.
Measured after R rounds: the best RM's accuracy on a clean held-out test set (overall and per category, 95%
bootstrap intervals over test pairs), the accuracy of the silver each round added and of each judge's verdicts
per category (against the hidden truth), human labels and judge requests spent. Between rounds a SIMULATED
human verifier answers the first ``human_budget`` tasks of the review queue (the same budget in every row);
the judges are SIMULATED over real HTTP with a verbosity bias (they prefer the longer answer) that a
counter-stylistic gold example of the same kind partly corrects — the paper's claim, as parameters printed with
the table, not a finding.

    python benchmarks/stage1_ablation.py --quick          # R = 1 (~6 minutes on 2 cores)
    python benchmarks/stage1_ablation.py                  # R = 1 and 3 (~35 minutes)
    python benchmarks/stage1_ablation.py --gold G --pool P --test T --annotators annotators.yaml [--humans H]

On your own data: ``--gold`` (human-verified pairs), ``--pool`` (unverified pairs), ``--test`` (a clean test set)
in any input format, ``--annotators`` a YAML of real endpoints (as ``synpref stage1 --annotators``); the review
queue is then answered by nobody unless ``--humans`` names a directory of exports per round
(``<dir>/<round>/*.json``) — the rows then differ only by what the LLM curation adds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from synpref.io.layout import StorageLayout
from synpref.io.preprocess import prepare
from synpref.io.readers import input_files, read_pairs
from synpref.io.storage import read_json, read_parquet, write_bytes, write_parquet
from synpref.llm.client import AnnotatorConfig, load_annotators
from synpref.models.reward_model import RewardModel
from synpref.pipeline import run_round
from synpref.schema import records_to_table
from synpref.settings import PrepareConfig, Stage1Config
from synpref.simulation.evaluation import truth_agree
from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex, simulate_human_review
from synpref.simulation.synthetic import generate_disjoint

log = logging.getLogger("stage1_ablation")

ROWS = {  # name → the stage-1 settings that make the row (everything else: the defaults)
    "no curation (random pool pairs, stored labels)": {"retrieval": "random", "retrieved_to": "silver"},
    "human curation only (random pairs, random queue)": {
        "retrieval": "random",
        "retrieved_to": "humans",
        "review_order": "random",
    },
    "human curation + preference attributes (priority queue)": {"retrieval": "random", "retrieved_to": "humans"},
    "human + LLM curation, random retrieval": {"retrieval": "random"},
    "full protocol (default)": {},
    "uncertainty sampling": {"retrieval": "uncertainty"},
    "plain judging (no gold examples, guideline, attributes)": {"preference_aware": False},
}


@dataclass(frozen=True)
class World:
    """The SIMULATED world's parameters (printed with every table)."""

    gold: int = 120
    silver: int = 300
    pool: int = 1500
    test: int = 1000
    noise: float = 0.3
    judge_accuracy: float = 0.8
    position_bias: float = 0.1
    difficulty: float = 0.5
    verbosity_bias: float = 0.4
    bias_correction: float = 0.75
    human_accuracy: float = 0.97
    human_budget: int = 20  # review-queue tasks the SIMULATED humans answer per round (the queue's first ones)


def build_world(root: Path, w: World) -> dict:
    """Seed gold and silver, an unverified pool (no attributes), a clean test set; disjoint; truths kept apart."""
    sets = {}
    for name, (n, seed, noise, attrs) in {
        "gold": (w.gold, 21, 0.0, True),
        "silver": (w.silver, 22, 0.2, True),
        "pool": (w.pool, 23, w.noise, False),
        "test": (w.test, 24, 0.0, False),
    }.items():
        earlier = [pairs for pairs, _ in sets.values()]
        sets[name] = generate_disjoint(n, earlier, seed=seed, noise=noise, with_attributes=attrs, source=name)
    for name, rel in (("gold", "seed/gold.parquet"), ("silver", "seed/silver.parquet"), ("pool", "raw/pool.parquet")):
        write_parquet(sets[name][0], root / "world" / rel)
    for name, (_, truth) in sets.items():
        write_parquet(truth, root / "truth" / f"{name}.parquet")
    return sets


def _root_for(row: str, base: Path, world: Path, caches: Path | None) -> StorageLayout:
    """A fresh storage root per row holding the world's seed and raw pool (the same bytes for every row) and, to
    save time, an earlier row's caches (content-keyed: embeddings and LLM answers are the same whoever asks)."""
    store = StorageLayout(base / row.split(" (")[0].replace(" ", "_"))
    shutil.rmtree(store.root, ignore_errors=True)
    for rel in ("seed/gold.parquet", "seed/silver.parquet", "raw/pool.parquet"):
        if (world / rel).exists():
            write_parquet(read_parquet(world / rel), store.root / rel)
    if caches is not None and caches.exists():
        shutil.copytree(caches, store.root / "cache")
    return store


def run_row(store: StorageLayout, rounds: int, cfg: Stage1Config, annotators, humans) -> list[str]:
    """``rounds`` + 1 stage-1 rounds (the first one's best RM is the seed RM); ``humans(round, next)`` answers
    a round's review queue into the next round's inbox."""
    prepare([str(store.root / "raw" / "pool.parquet")], store.pool, None, PrepareConfig(shard_size=1000))
    day, names = dt.date(2026, 11, 1), []
    for i in range(rounds + 1):
        rnd, nxt = str(day + dt.timedelta(days=i)), str(day + dt.timedelta(days=i + 1))
        run_round(store, rnd, annotators, cfg)
        humans(store, rnd, nxt)
        names.append(rnd)
        log.info("%s round %s: %s", store.root.name, rnd, json.dumps(read_json(store.round(rnd).manifest)["summary"]))
    return names


def test_accuracy(store: StorageLayout, rnd: str, test_rows: list[dict], categories: list[str]) -> dict:
    """The round's best RM on the clean test set: accuracy overall and per category, each with a 95% bootstrap
    interval (test pairs resampled)."""
    rm = RewardModel(store.round(rnd).best_rm)
    try:
        right = np.asarray(rm.reward_diff(test_rows)) > 0
    finally:
        rm.close()
    out = {"overall": _interval(right)}
    for cat in sorted(set(categories)):
        out[cat] = _interval(right[np.array([c == cat for c in categories])])
    return out


def _interval(right: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """[mean, low, high] with a 95% percentile-bootstrap interval."""
    if len(right) == 0:
        return [float("nan")] * 3
    idx = np.random.default_rng(seed).integers(0, len(right), size=(n, len(right)))
    means = right[idx].mean(axis=1)
    return [
        round(float(right.mean()), 4),
        round(float(np.quantile(means, 0.025)), 4),
        round(float(np.quantile(means, 0.975)), 4),
    ]


def spent(store: StorageLayout, rounds: list[str], truth) -> dict:
    """Human labels taken in, judge requests, silver added and its accuracy, each judge's accuracy by category."""
    out = {"human_labels": 0, "judge_requests": 0, "silver_added": 0, "silver_right": 0}
    judges: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    category = {r["pair_id"]: r["category"] for r in truth.to_pylist()} if truth is not None else {}
    for rnd in rounds[1:]:  # the human verifications the last round's best RM trained on
        out["human_labels"] += read_json(store.round(rnd).manifest)["steps"]["intake"].get("inbox_verifications", 0)
    for rnd in rounds[:-1]:  # the rounds whose curation the last round's best RM trained on
        r = store.round(rnd)
        added = ("llm", "unverified")  # LLM-labelled, or (no curation) pool pairs with their stored labels
        silver = [s for s in read_parquet(r.silver).to_pylist() if s["provenance"] in added and s["round"] == rnd]
        out["silver_added"] += len(silver)
        retrieved = truth_agree(read_parquet(r.retrieved).to_pylist(), truth) if truth is not None else {}
        for path in sorted((r.dir / "annotations").glob("*/samples.parquet")):
            samples = read_parquet(path)
            out["judge_requests"] += samples.num_rows
            for pid, ok in _majority_right(samples, retrieved).items():
                judges[path.parent.name][category.get(pid, "?")][0 if ok else 1] += 1
        if truth is not None:
            agree = truth_agree(silver, truth)
            out["silver_right"] += sum(agree.values())
    known = truth is not None and out["silver_added"]
    out["silver_accuracy"] = round(out["silver_right"] / out["silver_added"], 4) if known else None
    out["judge_accuracy_by_category"] = {
        name: {c: round(rw[0] / max(1, sum(rw)), 3) for c, rw in sorted(cats.items())} for name, cats in judges.items()
    }
    return out


def _majority_right(samples, agree: dict[str, bool]) -> dict[str, bool]:
    """Per pair: whether the annotator's majority verdict matches the truth (abstentions left out)."""
    votes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in samples.select(["pair_id", "verdict"]).to_pylist():
        if r["verdict"] in ("agree", "disagree") and r["pair_id"] in agree:
            votes[r["pair_id"]][0 if r["verdict"] == "agree" else 1] += 1
    return {pid: (a > d) == agree[pid] for pid, (a, d) in votes.items() if a != d}


def simulated_judges(sets: dict, w: World) -> SimulatedJudgeServer:
    profile = JudgeProfile(
        w.judge_accuracy,
        w.position_bias,
        0.0,
        w.difficulty,
        verbosity_bias=w.verbosity_bias,
        bias_correction=w.bias_correction,
    )
    return SimulatedJudgeServer(
        TruthIndex.from_tables(*(t for _, t in sets.values())),
        {f"judge-{i}": profile for i in range(3)},
        api_key="sk-sim",
    )


def simulated_annotators(server: SimulatedJudgeServer) -> list[AnnotatorConfig]:
    return [
        AnnotatorConfig(  # one sample a request, as the README's tables were measured (before choices_per_request)
            name=f"judge-{i}",
            base_url=server.base_url,
            model=f"judge-{i}",
            api_key="sk-sim",
            samples=3,
            choices_per_request=1,
            timeout_s=10,
        )
        for i in range(3)
    ]


def table(results: dict, w: World | None) -> str:
    """The paper-style table: each row's best-RM test accuracy after R rounds and its gain over the seed RM."""
    lines = []
    if w is not None:
        lines.append(f"SIMULATED world: {json.dumps(w.__dict__)}\n")
    for r_count in sorted({r for row in results.values() for r in row["after"]}, key=int):
        seed = next(iter(results.values()))["seed_rm"]["overall"]
        lines += [
            f"\n**After {r_count} round(s)** — seed RM (round 1's best RM, every row the same): "
            f"{seed[0]:.3f} [{seed[1]:.3f}, {seed[2]:.3f}]\n",
            "| row | best-RM test accuracy [95% CI] | gain over seed | silver added (accuracy) | human labels "
            "| judge requests |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in results.items():
            a = row["after"][r_count]
            acc, sp = a["test"]["overall"], a["spent"]
            silver = f"{sp['silver_added']} ({sp['silver_accuracy']})" if sp["silver_accuracy"] is not None else "—"
            lines.append(
                f"| {name} | {acc[0]:.3f} [{acc[1]:.3f}, {acc[2]:.3f}] | {acc[0] - seed[0]:+.3f} | {silver} | "
                f"{sp['human_labels']} | {sp['judge_requests']} |"
            )
        lines += ["\nPer category (best-RM test accuracy [95% CI]):\n"]
        cats = [c for c in next(iter(results.values()))["after"][r_count]["test"] if c != "overall"]
        lines += ["| row | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
        for name, row in results.items():
            t = row["after"][r_count]["test"]
            lines.append(
                f"| {name} | " + " | ".join(f"{t[c][0]:.2f} [{t[c][1]:.2f}, {t[c][2]:.2f}]" for c in cats) + " |"
            )
        lines += ["\nJudges' majority accuracy on the retrieved pairs, per category (vs the hidden truth):\n"]
        for name, row in results.items():
            by = row["after"][r_count]["spent"]["judge_accuracy_by_category"]
            if by:
                first = next(iter(by.values()))
                lines.append(f"- {name}: " + ", ".join(f"{c} {v:.2f}" for c, v in first.items()))
    return "\n".join(lines)


Setup = tuple  # (world dir, test rows, their categories, truth or None, annotators, humans(store, rnd, next), server)


def own_data(args: argparse.Namespace, out: Path) -> Setup:
    """Your files and endpoints: seed gold/silver and the raw pool under ``<out>/world``; humans = your exports."""
    world = out / "world"
    for name, uri in (("gold", args.gold), ("silver", args.silver), ("pool", args.pool)):
        if uri:
            rows = [r.model_dump() for f in input_files(uri) for r in read_pairs(f).records]
            write_parquet(records_to_table(rows), world / ("raw" if name == "pool" else "seed") / f"{name}.parquet")
    test_rows = [r.model_dump() for f in input_files(args.test) for r in read_pairs(f).records]
    exports = Path(args.humans) if args.humans else None

    def humans(store: StorageLayout, rnd: str, nxt: str) -> None:
        for f in sorted((exports / nxt).glob("*.json")) if exports else []:
            write_bytes(store.inbox(nxt) / f.name, f.read_bytes())

    categories = [r.get("task_category") or "all" for r in test_rows]
    return world, test_rows, categories, None, load_annotators(args.annotators), humans, None


def simulated_world(w: World, out: Path) -> Setup:
    """A SIMULATED world: its sets and truths, judges started over HTTP, humans answering ``human_budget`` tasks."""
    sets = build_world(out, w)
    test_rows = sets["test"][0].to_pylist()
    test_truth = {r["pair_id"]: r for r in sets["test"][1].to_pylist()}
    server = simulated_judges(sets, w)
    server.start()
    truths = [out / "truth" / f"{n}.parquet" for n in sets]

    def humans(store: StorageLayout, rnd: str, nxt: str) -> None:
        queue = json.loads(Path(store.round(rnd).review_tasks).read_text())[: w.human_budget]  # equal budgets
        answered = out / "queues" / store.root.name / f"{rnd}.json"
        answered.parent.mkdir(parents=True, exist_ok=True)
        answered.write_text(json.dumps(queue))
        simulate_human_review(answered, truths, store.inbox(nxt) / "export.json", accuracy=w.human_accuracy)

    categories = [test_truth[r["pair_id"]]["category"] for r in test_rows]
    truth = pa.concat_tables([t for _, t in sets.values()])
    return out / "world", test_rows, categories, truth, simulated_annotators(server), humans, server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="R = 1 only")
    ap.add_argument("--out", default="stage1_ablation_out", help="the rows' storage roots and results.json")
    ap.add_argument("--gold", help="your human-verified pairs (any input format)")
    ap.add_argument("--pool", help="your unverified pool")
    ap.add_argument("--test", help="your clean test set")
    ap.add_argument("--silver", help="optional: your seed silver (else a sample of the pool)")
    ap.add_argument("--annotators", help="YAML of real annotator endpoints (as synpref stage1 --annotators)")
    ap.add_argument("--humans", help="directory of human exports per round (<dir>/<round>/*.json)")
    ap.add_argument("--rm-mode", default="frozen", choices=["frozen", "full"])
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the test's world: a smoke run
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "synpref", "sentence_transformers", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out).absolute()
    rounds = [1] if args.quick else [1, 3]
    own = bool(args.gold or args.pool or args.test)
    if own and not (args.gold and args.pool and args.test and args.annotators):
        ap.error("your own data needs --gold, --pool, --test and --annotators")
    w = None if own else World(gold=60, silver=100, pool=240, test=200) if args.tiny else World()
    setup = own_data(args, out) if own else simulated_world(w, out)
    world, test_rows, categories, truth, annotators, humans, server = setup
    results, caches = {}, None
    t0 = time.time()
    try:
        for name, overrides in ROWS.items():
            store = _root_for(name, out / "rows", world, caches)
            caches = store.root / "cache"
            cfg = Stage1Config(rm={"mode": args.rm_mode, "epochs": 2}, **overrides)
            names = run_row(store, max(rounds), cfg, annotators, humans)
            row = {
                "settings": overrides,
                "seed_rm": test_accuracy(store, names[0], test_rows, categories),
                "after": {},
            }
            for r in rounds:
                row["after"][str(r)] = {
                    "test": test_accuracy(store, names[r], test_rows, categories),
                    "spent": spent(store, names[: r + 1], truth),
                }
            results[name] = row
            (out / "results.json").write_text(json.dumps({"world": w and w.__dict__, "rows": results}, indent=2))
            log.info("%s done (%.0f s so far)", name, time.time() - t0)
    finally:
        if server is not None:
            server.stop()
    print(table(results, w))
    return 0


if __name__ == "__main__":
    sys.exit(main())
