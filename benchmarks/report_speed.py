"""How fast the curation report renders at scale: 30 stage-1 rounds and a 1M-pair stage-2 run.

The report reads manifests and per-shard summaries (``_SUCCESS.json``: p histograms and category counts
by decision, written by ``decide``), never the pairs. Side by side, in one run: the report's stage-2
figures from the summaries vs the same histograms computed the naive way, by reading every pair's scores
(``p_best``, ``p_gold``, decision) from the shards. Both on the same fabricated run (manifests and
summaries in the pipeline's structure, made-up numbers: ``tests/report_fixtures.py``).

    python benchmarks/report_speed.py                    # 30 rounds, 50 shards × 20,000 pairs
    python benchmarks/report_speed.py --rounds 5 --shards 5 --pairs 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from report_fixtures import fake_rounds, fake_stage2  # noqa: E402

from synpref.io.layout import DECISIONS, StorageLayout  # noqa: E402
from synpref.io.storage import read_parquet, write_parquet  # noqa: E402
from synpref.reporting.report import round_page, stage2_page, stage2_summary, write_page  # noqa: E402
from synpref.settings import HIST_BINS  # noqa: E402


def _scores(store: StorageLayout, run: str, shards: int, pairs: int) -> list[Path]:
    """Per-shard scores of every pair (what a report that reads the pairs would have to read)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(shards):
        t = pa.table(
            {
                "p_best": rng.random(pairs),
                "p_gold": rng.random(pairs),
                "decision": rng.choice(np.array(DECISIONS), pairs),
            }
        )
        path = Path(store.stage2(run).shard(f"shard-{i:05d}").dir.path) / "all_scores.parquet"
        write_parquet(t, path)
        paths.append(path)
    return paths


def _naive_histograms(paths: list[Path]) -> dict:
    hist = {k: {d: np.zeros(HIST_BINS, int) for d in DECISIONS} for k in ("p_best", "p_gold")}
    for p in paths:
        t = read_parquet(p).to_pandas()
        for k in hist:
            for d in DECISIONS:
                hist[k][d] += np.histogram(t.loc[t.decision == d, k], bins=HIST_BINS, range=(0, 1))[0]
    return hist


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--shards", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=20_000, help="pairs per shard")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        store = StorageLayout(Path(d))
        names = fake_rounds(store, a.rounds)
        fake_stage2(store, "run", a.shards, a.pairs)
        paths = _scores(store, "run", a.shards, a.pairs)
        out = Path(d) / "out"
        rounds = _time(lambda: write_page(out / "round", round_page(store, names[-1])), a.repeats)
        stage2 = _time(lambda: write_page(out / "stage2", stage2_page(store.stage2("run"))), a.repeats)
        summaries = _time(lambda: stage2_summary(store.stage2("run")), a.repeats)
        naive = _time(lambda: _naive_histograms(paths), a.repeats)
    total = a.shards * a.pairs
    rows = [
        (f"round report, {a.rounds} rounds (read + 8 figures + write)", rounds),
        ("stage-2 report (read summaries + 5 figures + write)", stage2),
        ("  of which: reading the shard summaries", summaries),
        ("  naive instead: reading every pair's scores", naive),
    ]
    print(f"report speed, {a.repeats} repeats, median [min]; stage 2 of {total:,} pairs in {a.shards} shards")
    for label, t in rows:
        print(f"  {label:58s} {statistics.median(t):6.2f} s [{min(t):.2f}]")
    ratio = statistics.median(naive) / statistics.median(summaries)
    print(f"  {'naive / summaries (reading only)':58s} {ratio:6.1f}x")


if __name__ == "__main__":
    main()
