"""The offline default, end to end through Airflow (README command 1).

Synthetic data with a hidden truth → `synpref_prepare` → N nightly `synpref_stage1` rounds (a
SIMULATED human verifier answers each round's review queue into the next round's inbox; SIMULATED
LLM judges serve the annotation over real HTTP) → `synpref_stage2` on a separate in-the-wild set.
Every DAG runs with `airflow dags test` on the embedded SQLite metadata DB and `file://` storage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from synpref.records import PoolManifest, Stage2Manifest
from synpref.reporting.report import fmt

REPO = Path(__file__).resolve().parent.parent
ANNOTATORS = {
    "synpref_judge_a": "sim-a=0.85,0.1,0.05",
    "synpref_judge_b": "sim-b=0.8,0.1,0.05",
    "synpref_judge_c": "sim-c=0.75,0.1,0.05",
}


PROGRESS = re.compile(r"((?:[\w.-]+ )*[\w.-]+: [\d,]+/[\d,]+ \w+.*?/s, [\d,]+ s|RM training: step \d+/\d+)")
TASK = re.compile(r"task_id=([\w.]+)")
HEARTBEAT_S = 30


def _latest(log: Path) -> str:
    """The newest progress line (or task) in a log: what a long step is doing right now."""
    text = log.read_text(errors="replace")[-20000:]
    found = PROGRESS.findall(text) or [f"task {t}" for t in TASK.findall(text)]
    return found[-1] if found else "starting"


def sh(cmd: list[str], log: Path, env: dict) -> None:
    """Run a step with its output in ``log``; every 30 s say what it is doing (slow is not hung)."""
    start = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        next_beat = start + HEARTBEAT_S
        while proc.poll() is None:
            time.sleep(1)
            if time.time() >= next_beat:
                next_beat += HEARTBEAT_S
                print(f"     … {time.time() - start:4.0f} s  {_latest(log)}", flush=True)
    if proc.returncode != 0:
        sys.exit(
            f"FAILED: {' '.join(cmd)} (exit {proc.returncode}); log: {log}\n"
            + "".join(log.read_text().splitlines(True)[-40:])
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Demo:
    """Where the demo writes (a storage root, the hidden truth kept apart, logs) and how it runs the CLI."""

    out: Path
    env: dict
    synpref: tuple[str, ...] = (str(REPO / ".venv/bin/synpref"),)
    airflow: str = str(REPO / ".venv/bin/airflow")

    @property
    def storage(self) -> Path:
        return self.out / "storage"

    @property
    def truth(self) -> Path:
        return self.out / "truth"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def truth_args(self) -> list[str]:
        return [a for t in DATASETS for a in ("--truth", str(self.truth / f"{t}.parquet"))]

    def report(self, *more: str) -> dict:
        """``synpref report`` on the storage root (with the truth) as JSON."""
        cmd = [*self.synpref, "report", "--root", f"file://{self.storage}", *more, *self.truth_args]
        return json.loads(subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True).stdout)

    def dags_test(self, dag_id: str, date: dt.date, conf: dict, log: str) -> None:
        sh([self.airflow, "dags", "test", dag_id, str(date), "-c", json.dumps(conf)], self.logs / log, self.env)


DATASETS = {  # name: (seed, noise, with attributes, path under storage); sizes from the command line
    "seed_gold": (1, 0.0, True, "seed/gold.parquet"),
    "seed_silver": (2, 0.2, True, "seed/silver.parquet"),
    "pool": (3, 0.3, False, "raw/pool.parquet"),
    "wild": (4, 0.3, False, "wild/wild.parquet"),
    "rm_bench": (5, 0.0, False, "rm_benchmarks/held_out.parquet"),  # a public RM benchmark's stand-in: labels right
}
ROUND_COLUMNS = (
    "   columns: gold = cumulative human-verified pairs; best RM = its accuracy on all gold (the gold set",
    "   grows every round, so it is not comparable across rounds) and on a fixed slice (the first round's",
    "   gold-validation pairs, the same every round); gold RM = its accuracy on gold-validation; retrieved =",
    "   pool pairs pulled by adaptive retrieval; +silver = LLM-labelled pairs added, and their accuracy",
    "   against the hidden truth; queue = pairs for the humans' next day; sim. cost = SIMULATED spend at",
    "   the configured prices (the judges are simulated); held-out = the best RM's accuracy on a held-out RM",
    "   benchmark of 300 pairs (rm_benchmarks; intervals and the change per round in the report; ↓ = worse than the",
    "   round before beyond the paired interval: a DAG run would wait for a sign-off, the demo turns that off).",
)


def main() -> int:
    """The walk-through: data with a hidden truth, SIMULATED judges, the pool, the rounds, stage 2, the outputs."""
    args = _arguments()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, SYNPREF_TASK_RETRIES="1", SYNPREF_RETRY_DELAY_S="2")
    demo = Demo(out, env)
    env["SYNPREF_ROOT"] = f"file://{demo.storage}"
    for d in (demo.storage, demo.truth, demo.logs):
        d.mkdir(parents=True)
    t0 = time.time()
    sizes = {"seed_gold": 200, "seed_silver": 800, "pool": args.pool, "wild": args.wild, "rm_bench": 300}
    synthetic_data(demo, sizes)
    bench = {"rm_benchmarks": str(demo.storage / DATASETS["rm_bench"][3])}
    gate = {"benchmark_gate": False}  # no human here to approve a round whose best RM regressed: the table marks it
    judges = simulated_judges(demo)
    try:
        first = dt.date.fromisoformat(args.first_date)
        prepare_pool(demo, first - dt.timedelta(days=1))
        stage1_rounds(demo, first, args.rounds, {"rm_mode": args.rm_mode, "k_max": 8, "samples": 3, **bench, **gate})
        s2, html = stage2(demo, first + dt.timedelta(days=args.rounds), args.wild, bench)
        outputs(demo, s2, html, time.time() - t0)
    finally:
        judges.terminate()
        judges.wait(timeout=10)
    return 0


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(REPO / "demo_output"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--first-date", default="2026-11-01")
    ap.add_argument("--pool", type=int, default=4000, help="unverified pool size (30%% label noise, no attributes)")
    ap.add_argument("--wild", type=int, default=5000, help="stage-2 in-the-wild set size (30%% flipped)")
    ap.add_argument("--rm-mode", default="frozen", choices=["frozen", "full"])
    return ap.parse_args()


def synthetic_data(demo: Demo, sizes: dict[str, int]) -> None:
    """``synpref synth`` per set, each disjoint from the earlier ones (no shared or mirrored pair)."""
    print(f"== synthetic data (hidden truth kept apart in {demo.truth})")
    made: list[Path] = []
    for name, (seed, noise, attrs, rel) in DATASETS.items():
        n = sizes[name]
        cmd = [*demo.synpref, "synth", "--n", str(n), "--seed", str(seed), "--noise", str(noise)]
        cmd += ["--out", str(demo.storage / rel), "--truth", str(demo.truth / f"{name}.parquet"), "--source", name]
        cmd += ([] if attrs else ["--no-attributes"]) + [a for e in made for a in ("--disjoint-from", str(e))]
        made.append(demo.storage / rel)
        sh(cmd, demo.logs / f"synth-{name}.log", demo.env)
        print(f"   {name:12s} {n:6d} pairs, label noise {noise:.0%}")


def simulated_judges(demo: Demo) -> subprocess.Popen:
    """The SIMULATED OpenAI-compatible judges (real HTTP) and the annotator connections pointing at them."""
    port = free_port()
    cmd = [*demo.synpref, "simulate-annotators", "--port", str(port), *demo.truth_args]
    cmd += [a for spec in ANNOTATORS.values() for a in ("--model", spec)]
    log = (demo.logs / "simulated-annotators.log").open("w")
    sim = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=demo.env, cwd=REPO)
    for conn, spec in ANNOTATORS.items():
        extra = {
            "model": spec.split("=")[0],
            "samples": 3,
            "timeout_s": 5,
            "max_concurrency": 8,
            "price_in_per_1k": 0.0005,
            "price_out_per_1k": 0.0015,
        }
        demo.env[f"AIRFLOW_CONN_{conn.upper()}"] = json.dumps(
            {"conn_type": "openai", "host": f"http://127.0.0.1:{port}/v1", "password": "sk-simulated", "extra": extra}
        )
    print(
        f"== SIMULATED LLM annotators on http://127.0.0.1:{port}/v1 ({', '.join(ANNOTATORS.values())}; "
        "accuracy,position bias,fault rate)"
    )
    print(
        "   they answer from the synthetic truth. Point the connections synpref_judge_* at real endpoints for "
        "real curation (docs/getting-started.md)."
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return sim
        except OSError:
            if time.time() > deadline or sim.poll() is not None:
                sim.terminate()
                sys.exit(f"simulated annotators did not start; log: {demo.logs / 'simulated-annotators.log'}")
            time.sleep(0.3)


def prepare_pool(demo: Demo, date: dt.date) -> None:
    print("== synpref_prepare (airflow dags test)")
    demo.dags_test("synpref_prepare", date, {"shard_size": 2000}, "prepare.log")
    print(f"   pool {PoolManifest.read(demo.storage / 'pool' / 'manifest.json').counts}")


def stage1_rounds(demo: Demo, first: dt.date, rounds: int, conf: dict) -> None:
    """The nightly rounds; after each, the SIMULATED humans answer its review queue into the next day's inbox."""
    print(f"== synpref_stage1: {rounds} nightly rounds (airflow dags test), SIMULATED human verifier (accuracy 0.97)")
    for line in ROUND_COLUMNS:
        print(line)
    print(
        f"   {'round':10s} {'gold':>5s} {'best RM: gold':>13s} {'fixed':>6s} {'gold RM':>7s} "
        f"{'retrieved':>9s} {'+silver':>7s} {'acc':>6s} {'queue':>5s} {'sim. cost $':>11s} {'held-out':>8s}"
    )
    for i in range(rounds):
        date = first + dt.timedelta(days=i)
        demo.dags_test("synpref_stage1", date, conf, f"stage1-{date}.log")
        r = next(x for x in demo.report()["rounds"] if x["round"] == str(date))
        print(
            f"   {r['round']:10s} {r['gold']:5d} {fmt(r['best_rm_gold_accuracy']):>13s} "
            f"{fmt(r['best_rm_fixed_slice_accuracy']):>6s} "
            f"{fmt(r['gold_rm_validation_accuracy']):>7s} {r['retrieved']:9d} {r['silver_added']:7d} "
            f"{fmt(r.get('silver_added_accuracy_vs_truth')):>6s} "
            f"{r['review_queue']:5d} {r['cost_usd']:11.2f} {_held_out(demo, date):>8s}"
        )
        nxt = date + dt.timedelta(days=1)
        queue = demo.storage / "rounds" / str(date) / "review_queue" / "tasks.json"
        inbox = demo.storage / "inbox" / str(nxt) / "labelstudio-export.json"
        cmd = [*demo.synpref, "simulate-humans", "--queue", str(queue), "--out", str(inbox), *demo.truth_args]
        sh(cmd, demo.logs / f"humans-{nxt}.log", demo.env)


def _held_out(demo: Demo, date: dt.date) -> str:
    """The round's best RM on the held-out RM benchmark (its ``rm_benchmarks`` step); ↓ where it regressed beyond
    the paired interval (with ``benchmark_gate`` on, the round would wait for a human's sign-off)."""
    step = demo.storage / "rounds" / str(date) / "steps" / "rm_benchmarks.json"
    held_out = json.loads(step.read_text())["benchmarks"].get("held_out") if step.exists() else None
    if held_out is None:
        return "—"
    return fmt(held_out["best_rm"]["overall"]["accuracy"]) + ("↓" if held_out.get("regressed") else "")


def stage2(demo: Demo, date: dt.date, wild: int, bench: dict) -> tuple[Path, str]:
    """Stage 2 on the in-the-wild set: its funnel, its accuracy against the truth and its own estimates, and
    whether its curated set trains a better RM than the raw input (the downstream check)."""
    print(f"== synpref_stage2 on {wild} in-the-wild pairs (airflow dags test)")
    conf = {"shard_size": 2000, "samples": 3, **bench, "downstream_pairs": 1000}
    demo.dags_test("synpref_stage2", date, conf, "stage2.log")
    s2 = demo.storage / "stage2" / str(date)
    full = demo.report("--stage2", str(s2))
    rep = full["stage2"]
    acc = rep["label_accuracy_vs_truth"]
    print(
        f"   funnel: input {rep['input']} = kept {rep['kept']} + recycled {rep['recycled']} + dropped "
        f"{rep['dropped']} + quarantined {rep['quarantined']}"
        f" + duplicates {rep['duplicates']} + contaminated {rep['contaminated']}  (routed to LLM judges: "
        f"{rep['routed_to_llm']})"
    )
    print(
        f"   label accuracy vs hidden truth: input {acc['input']:.3f} | kept {acc['kept']:.3f} | recycled "
        f"{acc['recycled'] or 0:.3f} | dropped {acc['dropped'] or 0:.3f}"
    )
    manifest = Stage2Manifest.read(s2 / "manifest.json")
    quality = manifest.quality_estimates
    if quality.canaries:
        est = {k: getattr(quality, k) for k in ("kept_precision", "retention", "recycled_precision")}
        print(
            f"   estimated without the truth, from {quality.canaries} blind canaries (95% intervals): "
            + " | ".join(
                f"{k.replace('_', ' ')} {fmt(v.estimate)} [{fmt(v.ci_low)}, {fmt(v.ci_high)}]" for k, v in est.items()
            )
        )
    print(f"   decision rule: {manifest.config['decision_rule']}")
    if manifest.downstream:
        b = manifest.downstream.benchmarks["held_out"]
        n, d = manifest.downstream.pairs, b["difference"]
        print(
            f"   downstream check on the held-out RM benchmark: an RM trained on {n} curated pairs "
            f"{fmt(b['curated']['accuracy'])}, on {n} raw input pairs {fmt(b['raw']['accuracy'])} (difference "
            f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}])"
        )
    return s2, full["html"]


def outputs(demo: Demo, s2: Path, html: str, seconds: float) -> None:
    print(f"== done in {seconds:.0f} s. Outputs:")
    print(f"   storage root      {demo.storage}")
    print(f"   stage-1 rounds    {demo.storage / 'rounds'}/<date>/manifest.json")
    print(f"   curated dataset   {s2}/kept, {s2}/recycled (TRL-ready Parquet), card {s2 / 'README.md'}")
    print(f"   logs              {demo.logs}")
    ui = "in the Airflow UI: scripts/ui.sh, then Browse → Curation"
    print(f"   HTML report       {html}  (open it in a browser; {ui})")


if __name__ == "__main__":
    sys.exit(main())
