"""Airflow's overhead on a stage-1 round: ``airflow dags test synpref_stage1`` vs the same steps called
directly (``synpref stage1``, one process), side by side in one run.

Both start from identical copies of one storage root (80 seed gold, 300 seed silver, a 600-pair pool;
the demo's settings: frozen RMs, k_max 4, one sample per judge) with an empty LLM cache, so both do
the same work, judged by the same SIMULATED judges over real HTTP. Overhead = (Airflow − direct) /
Airflow: the share of a round's wall time that the scheduler-less ``dags test`` loop, task start-up
and XCom cost.

    python benchmarks/airflow_overhead.py                 # 3 repeats
    python benchmarks/airflow_overhead.py --repeats 1     # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from _common import interleaved, report, summary, table  # noqa: E402

from conftest import REPO, airflow_env, conn_env, write_synthetic_sets  # noqa: E402

CONF = {"rm_mode": "frozen", "k_max": 4, "samples": 1, "max_examples": 4, "spot_check": 5}
DATE = "2026-11-01"


def _template(d: Path):
    """A prepared storage root and the SIMULATED judges serving its truth."""
    from synpref.io.layout import PoolLayout
    from synpref.io.preprocess import prepare
    from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex

    root = d / "template"
    sets = {
        "gold": (80, 11, 0.0, True, "seed/gold.parquet"),
        "silver": (300, 12, 0.2, True, "seed/silver.parquet"),
        "pool": (600, 13, 0.3, False, "raw/pool.parquet"),
    }
    truths = write_synthetic_sets(root, sets)
    prepare([str(root / "raw" / "pool.parquet")], PoolLayout(root / "pool"), config=_prepare_cfg())
    profiles = {m: JudgeProfile(acc, 0.05, 0.05) for m, acc in (("good", 0.9), ("ok", 0.85), ("meh", 0.8))}
    server = SimulatedJudgeServer(TruthIndex.from_tables(*truths.values()), profiles, api_key="sk-test")
    server.start()
    return root, server


def _prepare_cfg():
    from synpref.settings import PrepareConfig

    return PrepareConfig(shard_size=300)


def _fresh(template: Path, d: Path, name: str) -> Path:
    target = d / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target)
    return target


def direct(template: Path, d: Path, server) -> dict:
    root = _fresh(template, d, "direct")
    annotators = d / "annotators.json"
    judges = [
        {
            "name": f"synpref_judge_{x}",
            "base_url": server.base_url,
            "model": m,
            "api_key": "sk-test",
            "timeout_s": 5,
            "max_concurrency": 8,
        }
        for x, m in zip("abc", ("good", "ok", "meh"))
    ]
    annotators.write_text(json.dumps({"annotators": judges}))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in CONF.items()]
    cmd = [
        str(REPO / ".venv/bin/synpref"),
        "stage1",
        "--root",
        str(root),
        "--date",
        DATE,
        "--annotators",
        str(annotators),
        *flags,
    ]
    return _run(cmd, airflow_env(f"file://{root}"))


def airflow(template: Path, d: Path, server, home: Path) -> dict:
    root = _fresh(template, d, "airflow")
    env = airflow_env(f"file://{root}", {"AIRFLOW_HOME": str(home), **conn_env(server)})
    cmd = [str(REPO / ".venv/bin/airflow"), "dags", "test", "synpref_stage1", DATE, "-c", json.dumps(CONF)]
    return _run(cmd, env)


def _run(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed: {(proc.stdout + proc.stderr)[-3000:]}")
    return {"s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="synpref-bench-airflow-") as tmp:
        d = Path(tmp)
        home = d / "airflow_home"
        env = airflow_env("file:///nonexistent", {"AIRFLOW_HOME": str(home)})
        subprocess.run([str(REPO / ".venv/bin/airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
        for pool in (["llm_api", "4", "llm"], ["gpu", "1", "rm"]):
            subprocess.run(
                [str(REPO / ".venv/bin/airflow"), "pools", "set", *pool], env=env, check=True, capture_output=True
            )
        template, server = _template(d)
        try:
            runs = interleaved(
                {"direct": lambda: direct(template, d, server), "airflow": lambda: airflow(template, d, server, home)},
                a.repeats,
            )
        finally:
            server.stop()
    base, ours = summary(runs["direct"], "s")["median"], summary(runs["airflow"], "s")["median"]
    overhead = (ours - base) / ours
    rows = [
        ["direct (synpref stage1)", base, ""],
        ["airflow dags test synpref_stage1", ours, f"{100 * overhead:.1f}%"],
    ]
    report(
        "airflow",
        table(
            f"A stage-1 round, direct vs through Airflow (medians of {a.repeats})",
            ["run", "median s", "Airflow overhead"],
            rows,
        ),
    )
    return {"overhead": overhead}


if __name__ == "__main__":
    main()
