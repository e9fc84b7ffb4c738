"""DAG parse time: loading ``dags/`` into a DagBag (what the dag-processor does every parse) vs a folder of three
trivial DAGs with the same imports a competent user would write, side by side, each in a fresh process.

The project's DAG files import only ``synpref.settings`` and the Airflow glue at parse time (heavy
libraries are imported inside tasks: ``tests/test_dags.py`` checks it), so their parse time should stay
close to the trivial folder's. The check that used to assert "< 2 s" in the tests is this ratio.

    python benchmarks/dag_parse.py                 # 5 repeats
    python benchmarks/dag_parse.py --repeats 1     # smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from _common import in_subprocess, interleaved, report, summary, table  # noqa: E402

from conftest import REPO, airflow_env  # noqa: E402

TRIVIAL = """
import pendulum
from airflow.sdk import dag, task


@dag(dag_id="trivial_{i}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def trivial():
    @task
    def step(x: int) -> int:
        return x

    step.expand(x=step.expand(x=[1, 2]))


trivial()
"""

PARSE = """
import json, os, sys, time
sys.path.insert(0, {folder!r})
start = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
imported = time.perf_counter()
bag = DagBag(dag_folder={folder!r})
assert not bag.import_errors, bag.import_errors
print(json.dumps({{"parse_s": time.perf_counter() - imported, "dags": len(bag.dag_ids)}}))
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    os.environ.update(airflow_env("file:///tmp/dag-parse"))
    with tempfile.TemporaryDirectory() as d:
        for i in range(3):
            (Path(d) / f"trivial_{i}.py").write_text(TRIVIAL.replace("{i}", str(i)))
        runs = {
            "project dags/": lambda: in_subprocess(PARSE.format(folder=str(REPO / "dags"))),
            "3 trivial DAGs": lambda: in_subprocess(PARSE.format(folder=d)),
        }
        samples = interleaved(runs, a.repeats)
    stats = {name: summary(s, "parse_s") for name, s in samples.items()}
    ratio = stats["project dags/"]["median"] / stats["3 trivial DAGs"]["median"]
    rows = [[name, s["min"], s["median"], samples[name][0]["dags"]] for name, s in stats.items()]
    text = table("DAG parse time (DagBag of the folder, fresh process)", ["folder", "min s", "median s", "DAGs"], rows)
    report("dag_parse", f"{text}\n\nproject / trivial (median): {ratio:.2f}×")
    return {"stats": stats, "ratio": ratio}


if __name__ == "__main__":
    main()
