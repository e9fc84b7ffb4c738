"""Stage 2 with judges as people have them, against a hidden truth: deterministic, weak, order-sensitive, erring
together on hard pairs — and reward models at chance.

SIMULATED stand-ins for the real-judge case of the project's issue (recorded verdicts of one LLM judge, 0.76 right,
and two reward models used as judges, 0.63 and 0.64, on hard objective pairs; the RMs trained here at chance): one
LLM judge at temperature 0 whose verdict is a new draw in the other order, two order-invariant RM-judges, errors
concentrated on pairs every judge finds hard (``difficulty`` 1), 30% of the labels flipped. The round's RMs get
weight 0 (not better than chance on gold, as there). The judges are measured on a blind gold probe as stage 1
measures them, then ``run_stage2`` curates 300 in-the-wild pairs at several targets, every judge asked in a seeded
order (``order: random``, the default before) or as its probe chooses (``order: auto``, the default: a judge that
answers the same every time is asked each order once, or once if it says the same in either order). A useless world
(one judge at chance) checks that weak-judge weighting never turns noise into evidence.

Per run: the input-accuracy estimate (the prior) against the truth, what was kept and flipped and how right it is
(truth) against what stage 2 estimated (the frontier's precision at that point), and the frontier's one line when
nothing reached the target.

    python benchmarks/real_judges.py            # ~5 minutes on 2 cores → benchmarks/results/real_judges.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from _common import RESULTS, machine  # noqa: E402

from synpref.io.layout import Stage2Layout, StorageLayout  # noqa: E402
from synpref.io.preprocess import prepare  # noqa: E402
from synpref.io.storage import read_json, read_parquet, write_json, write_parquet  # noqa: E402
from synpref.llm.annotation import probe_judge  # noqa: E402
from synpref.llm.client import AnnotatorConfig  # noqa: E402
from synpref.models.reliability import judge_reliability  # noqa: E402
from synpref.models.reward_model import RMConfig, train_reward_model  # noqa: E402
from synpref.pipeline import run_round, run_stage2  # noqa: E402
from synpref.settings import Stage1Config, Stage2Config  # noqa: E402
from synpref.simulation.evaluation import accuracy_report, label_accuracy  # noqa: E402
from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex  # noqa: E402
from synpref.simulation.synthetic import generate, generate_disjoint  # noqa: E402

RND = "2026-11-01"
HARD = ("arithmetic", "code", "factual")  # objective categories
SIZES = {"gold": 100, "pool": 400, "wild": 300}  # a smoke test makes them tiny
WORLDS = {
    "real-like": {
        "llm": JudgeProfile(0.76, difficulty=1.0, deterministic=True),
        "rm_a": JudgeProfile(0.63, difficulty=1.0, deterministic=True, order_invariant=True),
        "rm_b": JudgeProfile(0.64, difficulty=1.0, deterministic=True, order_invariant=True),
    },
    "useless": {"coin": JudgeProfile(0.5, deterministic=True)},
}


def _round(store: StorageLayout, gold, annotators: list[AnnotatorConfig]) -> dict:
    """A published round: gold, two RMs at chance (weight 0), the judges measured on a blind probe of 64 gold pairs,
    the other 36 held out as stage 2's blind canaries."""
    rnd = store.round(RND)
    write_parquet(gold, rnd.gold)
    write_parquet(gold.slice(64), rnd.gold_validation)  # the canaries: gold the probe below never saw
    rows = gold.to_pylist()
    for rm in (rnd.best_rm, rnd.gold_rm):
        train_reward_model(
            rows[: len(rows) * 3 // 5], rows[len(rows) * 3 // 5 :], RMConfig(mode="frozen", head_epochs=3), rm
        )
    write_json({"joint_weights": {"best": 0.0, "gold": 0.0}}, rnd.calibration)  # not better than chance on gold
    probed = [probe_judge(rows[:64], {}, a, store.llm_cache) for a in annotators]  # as stage 1's annotate task does
    judges = judge_reliability(pa.concat_tables([samples for _, _, samples, _ in probed]))
    for a, (_, chosen, _, _) in zip(annotators, probed):
        judges["annotators"][a.name]["asking"] = chosen  # as stage 1's merge records it
    write_json(judges, rnd.judges)
    write_json({"round": RND}, rnd.manifest)
    return judges


@contextmanager
def _world(profiles: dict, seed: int, size: str, noise: float) -> Iterator[tuple]:
    """Hard objective gold and a disjoint ``size`` set with ``noise`` of its labels flipped, SIMULATED judges of
    ``profiles`` answering from their truth; → (gold, the set, its truth, annotators by order)."""
    gold, gold_truth = generate(SIZES["gold"], seed=seed, categories=HARD)
    pairs, truth = generate_disjoint(SIZES[size], [gold], seed=seed + 1, noise=noise, categories=HARD)
    server = SimulatedJudgeServer(TruthIndex.from_tables(gold_truth, truth), profiles)
    server.start()
    annotators = {  # the candidates' order as before, or as the probe chooses (the default)
        order: [AnnotatorConfig(name=m, base_url=server.base_url, model=m, order=order) for m in profiles]
        for order in ("random", "auto")
    }
    try:
        yield gold, pairs, truth, annotators
    finally:
        server.stop()


def stage1_silver(name: str, profiles: dict, work: Path) -> list[dict]:
    """One stage-1 round (``run_round``, frozen RMs) over a 400-pair unverified pool of the same kind (35% flipped)
    with these judges: what joins silver from the pool, and how right it is against the truth."""
    rows = []
    with _world(profiles, 33, "pool", 0.35) as (gold, pool, pool_truth, by_order):
        for order, annotators in by_order.items():
            store = StorageLayout(work / name / f"stage1-{order}")
            write_parquet(gold, store.seed / "gold.parquet")
            write_parquet(pool, work / name / f"pool-{order}.parquet")
            prepare([str(work / name / f"pool-{order}.parquet")], store.pool)
            cfg = Stage1Config(rm=RMConfig(mode="frozen"), seed_silver=SIZES["pool"] * 3 // 8)
            run_round(store, RND, annotators, cfg)
            out = store.round(RND)
            merge = read_json(out.steps / "merge.json")
            added = read_parquet(out.silver).filter(pc.equal(read_parquet(out.silver)["round"], RND))
            rows.append(
                {
                    "world": name,
                    "order": order,
                    "pool acc": label_accuracy(pool, pool_truth),
                    "pool prior (est.)": merge.get("pool_prior"),
                    "retrieved": read_json(out.steps / "retrieve.json")["retrieved"],
                    "silver added": added.num_rows,
                    "silver acc": label_accuracy(added, pool_truth) if added.num_rows else None,
                    "silver est. precision": merge.get("silver_estimated_precision"),
                    "stayed in pool (low confidence)": merge.get("deferred_low_confidence", 0),
                    "review queue (contested)": merge.get("queued_contested", 0),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_world(name: str, profiles: dict, work: Path, targets: list[float]) -> list[dict]:
    rows = []
    with _world(profiles, 31, "wild", 0.3) as (gold, wild, wild_truth, by_order):
        for order, annotators in by_order.items():
            store = StorageLayout(work / name / order / "root")
            judges = _round(store, gold, annotators)
            write_parquet(wild, work / name / order / "wild.parquet")
            for target in targets:
                out = work / name / order / f"out-{target}"
                cfg = Stage2Config(target_precision=target)
                manifest = run_stage2(store, out, work / name / order / "wild.parquet", annotators, RND, cfg)
                acc = accuracy_report(out, wild_truth)
                shards = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*/_SUCCESS.json"))]
                c, canary = manifest["counts"], manifest["quality_estimates"].get("kept_precision") or {}
                frontier = manifest.get("frontier") or {}
                rows.append(
                    {
                        "world": name,
                        "order": order,
                        "target": target,
                        "input acc": acc["input"],
                        "prior (est.)": shards[0]["rule"].get("prior") if shards else None,
                        "kept at (est.)": shards[0]["fitted"].get("operating_precision") if shards else None,
                        "kept": c["kept"],
                        "kept acc": acc["kept"],
                        "kept posterior": frontier.get("kept_posterior"),
                        "canary kept precision": _interval(canary),
                        "retention": _retention(out, wild_truth),
                        "recycled": c["recycled"],
                        "recycled acc": acc["recycled"],
                        "judges (probe acc, asked)": ", ".join(
                            f"{n} {j['accuracy']:.2f} {(j.get('asking') or {}).get('order', order)}"
                            for n, j in sorted(judges["annotators"].items())
                        ),
                        "reason": frontier.get("reason") or frontier.get("fallback") or "",
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _retention(out: Path, truth) -> float | None:
    """Kept pairs whose label is right, as a share of the input's right labels (the truth's)."""
    better = {t["pair_id"]: t["better"] for t in truth.select(["pair_id", "better"]).to_pylist()}
    shards = [read_parquet(p).to_pylist() for p in Stage2Layout(out).pool().shard_uris()]
    right = sum(better.get(r["pair_id"]) == r["chosen"] for rows in shards for r in rows)
    kept = [read_parquet(p).to_pylist() for p in sorted((out / "kept").glob("*.parquet"))]
    good = sum(better.get(r["pair_id"]) == r["chosen"][-1]["content"] for rows in kept for r in rows)
    return good / right if right else None


def _interval(i: dict) -> str:
    return "—" if i.get("estimate") is None else f"{i['estimate']:.3f} [{i['ci_low']:.3f}, {i['ci_high']:.3f}]"


def _table(rows: list[dict]) -> str:
    columns = list(rows[0])
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(table + ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]) + "\n"


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.98, 0.9, 0.85])
    parser.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out or tmp)
        silver = [r for name, profiles in WORLDS.items() for r in stage1_silver(name, profiles, work)]
        rows = [r for name, profiles in WORLDS.items() for r in run_world(name, profiles, work, args.targets)]
    text = (
        "# Real-like judges (SIMULATED), against the hidden truth\n\n"
        f"`python benchmarks/real_judges.py` on {machine()}.\n\n"
        "## Stage 1: silver from the unverified pool (one round, frozen RMs, `silver_precision` 0.9)\n\n"
        + _table(silver)
        + "\n## Stage 2: 300 in-the-wild pairs, RMs at chance "
        "(defaults: `target_retention` 0.3, `precision_floor` 0.9)\n\n" + _table(rows)
    )
    (RESULTS / "real_judges.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
