"""Every benchmark, one after the other; each prints its table and saves it under benchmarks/results/.

python benchmarks/run_all.py            # the README's figures (about 35 minutes on 2 cores)
python benchmarks/run_all.py --smoke    # tiny sizes, one repeat: checks the scripts run (about 3 minutes)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import airflow_overhead  # noqa: E402
import dag_parse  # noqa: E402
import gpu_speed  # noqa: E402
import judges_speed  # noqa: E402
import prepare_speed  # noqa: E402
import retrieval_speed  # noqa: E402
import scoring_speed  # noqa: E402
import threads_per_task  # noqa: E402
import training_speed  # noqa: E402

SMOKE = {
    prepare_speed: ["--sizes", "2000", "--repeats", "1"],
    retrieval_speed: ["--sizes", "3000", "25000", "--repeats", "1"],
    scoring_speed: ["--pairs", "8", "--repeats", "1"],
    gpu_speed: ["--smoke"],
    training_speed: ["--pairs", "64", "--steps", "4", "--repeats", "1"],
    judges_speed: ["--concurrency", "8", "--requests", "32", "--latency", "0.05", "--repeats", "1"],
    airflow_overhead: ["--repeats", "1"],
    dag_parse: ["--repeats", "1"],
    threads_per_task: ["--tasks", "2", "--pairs", "16", "--passes", "1", "--repeats", "1"],
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", nargs="+", choices=[m.__name__ for m in SMOKE], default=None)
    a = ap.parse_args(argv)
    results = {}
    for module, smoke_args in SMOKE.items():
        if a.only is None or module.__name__ in a.only:
            results[module.__name__] = module.main(smoke_args if a.smoke else [])
    return results


if __name__ == "__main__":
    main()
