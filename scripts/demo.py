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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(REPO / "demo_output"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--first-date", default="2026-11-01")
    ap.add_argument("--pool", type=int, default=4000, help="unverified pool size (30%% label noise, no attributes)")
    ap.add_argument("--wild", type=int, default=5000, help="stage-2 in-the-wild set size (30%% flipped)")
    ap.add_argument("--rm-mode", default="frozen", choices=["frozen", "full"])
    args = ap.parse_args()

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    storage, truth_dir, logs = out / "storage", out / "truth", out / "logs"
    for d in (storage, truth_dir, logs):
        d.mkdir(parents=True)
    env = dict(os.environ, SYNPREF_ROOT=f"file://{storage}", SYNPREF_TASK_RETRIES="1", SYNPREF_RETRY_DELAY_S="2")
    synpref = [str(REPO / ".venv/bin/synpref")]
    airflow = str(REPO / ".venv/bin/airflow")

    t0 = time.time()
    print(f"== synthetic data (hidden truth kept apart in {truth_dir})")
    datasets = {  # name: (n, seed, noise, with attributes, path under storage)
        "seed_gold": (200, 1, 0.0, True, "seed/gold.parquet"),
        "seed_silver": (800, 2, 0.2, True, "seed/silver.parquet"),
        "pool": (args.pool, 3, 0.3, False, "raw/pool.parquet"),
        "wild": (args.wild, 4, 0.3, False, "wild/wild.parquet"),
    }
    made: list[Path] = []  # every set is disjoint from the earlier ones (no shared or mirrored pair)
    for name, (n, seed, noise, attrs, rel) in datasets.items():
        cmd = (
            synpref
            + [
                "synth",
                "--n",
                str(n),
                "--seed",
                str(seed),
                "--noise",
                str(noise),
                "--out",
                str(storage / rel),
                "--truth",
                str(truth_dir / f"{name}.parquet"),
                "--source",
                name,
            ]
            + ([] if attrs else ["--no-attributes"])
            + [a for earlier in made for a in ("--disjoint-from", str(earlier))]
        )
        made.append(storage / rel)
        sh(cmd, logs / f"synth-{name}.log", env)
        print(f"   {name:12s} {n:6d} pairs, label noise {noise:.0%}")

    port = free_port()
    sim_cmd = (
        synpref
        + ["simulate-annotators", "--port", str(port)]
        + [a for t in datasets for a in ("--truth", str(truth_dir / f"{t}.parquet"))]
    )
    sim_cmd += [a for spec in ANNOTATORS.values() for a in ("--model", spec)]
    sim_log = (logs / "simulated-annotators.log").open("w")
    sim = subprocess.Popen(sim_cmd, stdout=sim_log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    for conn, spec in ANNOTATORS.items():
        extra = {
            "model": spec.split("=")[0],
            "samples": 3,
            "timeout_s": 5,
            "max_concurrency": 8,
            "price_in_per_1k": 0.0005,
            "price_out_per_1k": 0.0015,
        }
        env[f"AIRFLOW_CONN_{conn.upper()}"] = json.dumps(
            {"conn_type": "openai", "host": f"http://127.0.0.1:{port}/v1", "password": "sk-simulated", "extra": extra}
        )
    print(
        f"== SIMULATED LLM annotators on http://127.0.0.1:{port}/v1 ({', '.join(ANNOTATORS.values())}; "
        "accuracy,position bias,fault rate)"
    )
    print(
        "   they answer from the synthetic truth. Point the connections synpref_judge_* at real endpoints for "
        "real curation (README)."
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or sim.poll() is not None:
                    sys.exit(f"simulated annotators did not start; log: {logs / 'simulated-annotators.log'}")
                time.sleep(0.3)

        first = dt.date.fromisoformat(args.first_date)
        print("== synpref_prepare (airflow dags test)")
        sh(
            [
                airflow,
                "dags",
                "test",
                "synpref_prepare",
                str(first - dt.timedelta(days=1)),
                "-c",
                json.dumps({"shard_size": 2000}),
            ],
            logs / "prepare.log",
            env,
        )
        pool = PoolManifest.read(storage / "pool" / "manifest.json").counts
        print(f"   pool {pool}")

        conf = {"rm_mode": args.rm_mode, "k_max": 8, "samples": 3}
        truth_args = [a for t in datasets for a in ("--truth", str(truth_dir / f"{t}.parquet"))]
        print(
            f"== synpref_stage1: {args.rounds} nightly rounds (airflow dags test), SIMULATED human verifier "
            "(accuracy 0.97)"
        )
        for line in (
            "   columns: gold = cumulative human-verified pairs; best RM = its accuracy on all gold (the gold set",
            "   grows every round, so it is not comparable across rounds) and on a fixed slice (the first round's",
            "   gold-validation pairs, the same every round); gold RM = its accuracy on gold-validation; retrieved =",
            "   pool pairs pulled by adaptive retrieval; +silver = LLM-labelled pairs added, and their accuracy",
            "   against the hidden truth; queue = pairs for the humans' next day; sim. cost = SIMULATED spend at",
            "   the configured prices (the judges are simulated).",
        ):
            print(line)
        print(
            f"   {'round':10s} {'gold':>5s} {'best RM: gold':>13s} {'fixed':>6s} {'gold RM':>7s} "
            f"{'retrieved':>9s} {'+silver':>7s} {'acc':>6s} {'queue':>5s} {'sim. cost $':>11s}"
        )
        for i in range(args.rounds):
            date = first + dt.timedelta(days=i)
            sh(
                [airflow, "dags", "test", "synpref_stage1", str(date), "-c", json.dumps(conf)],
                logs / f"stage1-{date}.log",
                env,
            )
            rep = json.loads(
                subprocess.run(
                    synpref + ["report", "--root", f"file://{storage}"] + truth_args,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            r = next(x for x in rep["rounds"] if x["round"] == str(date))
            print(
                f"   {r['round']:10s} {r['gold']:5d} {fmt(r['best_rm_gold_accuracy']):>13s} "
                f"{fmt(r['best_rm_fixed_slice_accuracy']):>6s} "
                f"{fmt(r['gold_rm_validation_accuracy']):>7s} {r['retrieved']:9d} {r['silver_added']:7d} "
                f"{fmt(r.get('silver_added_accuracy_vs_truth')):>6s} "
                f"{r['review_queue']:5d} {r['cost_usd']:11.2f}"
            )
            nxt = date + dt.timedelta(days=1)
            sh(
                synpref
                + [
                    "simulate-humans",
                    "--queue",
                    str(storage / "rounds" / str(date) / "review_queue" / "tasks.json"),
                    "--out",
                    str(storage / "inbox" / str(nxt) / "labelstudio-export.json"),
                ]
                + truth_args,
                logs / f"humans-{nxt}.log",
                env,
            )

        stage2_date = first + dt.timedelta(days=args.rounds)
        print(f"== synpref_stage2 on {args.wild} in-the-wild pairs (airflow dags test)")
        sh(
            [
                airflow,
                "dags",
                "test",
                "synpref_stage2",
                str(stage2_date),
                "-c",
                json.dumps({"shard_size": 2000, "samples": 3}),
            ],
            logs / "stage2.log",
            env,
        )
        s2 = storage / "stage2" / str(stage2_date)
        full = json.loads(
            subprocess.run(
                synpref + ["report", "--root", f"file://{storage}", "--stage2", str(s2)] + truth_args,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
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
                    f"{k.replace('_', ' ')} {fmt(v.estimate)} [{fmt(v.ci_low)}, {fmt(v.ci_high)}]"
                    for k, v in est.items()
                )
            )
        print(f"   decision rule: {manifest.config['decision_rule']}")
        print(f"== done in {time.time() - t0:.0f} s. Outputs:")
        print(f"   storage root      {storage}")
        print(f"   stage-1 rounds    {storage / 'rounds'}/<date>/manifest.json")
        print(f"   curated dataset   {s2}/kept, {s2}/recycled (TRL-ready Parquet), card {s2 / 'README.md'}")
        print(f"   logs              {logs}")
        print(
            f"   HTML report       {full['html']}  (open it in a browser; in the Airflow UI: scripts/ui.sh, "
            "then Browse → Curation)"
        )
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
