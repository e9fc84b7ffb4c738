"""Threads per task on a worker that runs several tasks at once: torch's default (a thread per core in every task
process) against ``OMP_NUM_THREADS`` = cores ÷ tasks, side by side in one run.

Each of ``--tasks`` processes does what an ``embed_pool_shard`` task does, through the project's own
``synpref.models.embedding.embed_texts`` (the packaged MiniLM): it embeds a synthetic pool shard (``--pairs``, 150)
``--passes`` times. All start together; the figure is the wall time until the last one ends.

    python benchmarks/threads_per_task.py                       # 4 tasks at once (a test deployment's slots)
    python benchmarks/threads_per_task.py --tasks 2 --pairs 16 --passes 1 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import interleaved, report, summary, table  # noqa: E402

TASK = """
import sys
from synpref.models.embedding import embed_texts, embedding_text
from synpref.simulation.synthetic import generate
texts = [embedding_text(r) for r in generate({pairs}, seed=13, noise=0.3, source="pool")[0].to_pylist()]
for _ in range({passes}):
    embed_texts(texts)
"""


def _run_tasks(tasks: int, pairs: int, passes: int, threads: int | None) -> dict:
    """``tasks`` processes at once, each with ``threads`` OpenMP threads (None: torch's default); → wall seconds."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    code = TASK.format(pairs=pairs, passes=passes)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL) for _ in range(tasks)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a benchmark task failed")
    return {"s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    per_task = max(1, cores // a.tasks)
    runs = {
        f"torch default ({cores} threads each)": lambda: _run_tasks(a.tasks, a.pairs, a.passes, None),
        f"OMP_NUM_THREADS={per_task}": lambda: _run_tasks(a.tasks, a.pairs, a.passes, per_task),
    }
    samples = interleaved(runs, a.repeats)
    results = {name: summary(s, "s") for name, s in samples.items()}
    base = results[next(iter(runs))]["median"]
    rows = [[name, r["median"], r["min"], base / r["median"]] for name, r in results.items()]
    title = f"{a.tasks} embed tasks at once on {cores} cores, each {a.pairs} pairs × {a.passes} passes"
    title += f" ({a.repeats} repeats)"
    report("threads", table(title, ["threads per task", "wall s (median)", "min", "speed-up"], rows))
    return results


if __name__ == "__main__":
    main()
