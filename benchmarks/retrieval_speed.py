"""Retrieval: the project's pool index vs plain numpy exact search, side by side in one run.

Pool vectors: 384-d unit vectors, ``random`` (no structure: the hard case for any approximate index)
or ``clustered`` (2,000 centres with noise, like sentence embeddings of real prompts). Queries: 1,000
noisy copies of pool vectors (gold pairs resemble pool pairs). numpy: ``queries @ pool.T`` in blocks
of 256 queries + ``argpartition`` (BLAS, exact). Project: ``adaptive_retrieval.build_index`` (Flat up to
20k vectors; IVF with ``nprobe`` calibrated to recall@8 ≥ 0.95 on the pool's own vectors, else Flat).
Recall@8 is measured on the benchmark's own queries against numpy's exact answer.

    python benchmarks/retrieval_speed.py                               # 10k, 100k, 1M
    python benchmarks/retrieval_speed.py --sizes 5000 --repeats 1      # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, report, summary, table, timed  # noqa: E402

DIM, K, QUERIES = 384, 8, 1000


def vectors(n: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.standard_normal((n, DIM), dtype=np.float32)
    else:
        centres = rng.standard_normal((2000, DIM), dtype=np.float32)
        x = centres[rng.integers(0, 2000, n)] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(n, QUERIES, replace=False)] + 0.05 * rng.standard_normal((QUERIES, DIM), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def numpy_search(pool: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    out = []
    for s in range(0, len(queries), 256):
        scores = queries[s : s + 256] @ pool.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(top, order, 1))
    return np.concatenate(out)


def recall(got: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(e)) / K for g, e in zip(got, exact)]))


def main(argv: list[str] | None = None) -> dict:
    from synpref.stage1.adaptive_retrieval import build_index

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--kinds", nargs="+", default=["clustered", "random"])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    rows, out = [], {}
    for n in a.sizes:
        for kind in a.kinds:
            pool, queries = vectors(n, kind)
            start = time.perf_counter()
            index, record = build_index(pool)
            build_s = time.perf_counter() - start
            runs = interleaved(
                {
                    "numpy": lambda pool=pool, queries=queries: timed(lambda: numpy_search(pool, queries)),
                    "project": lambda index=index, queries=queries: timed(lambda: index.search(queries, K)[1]),
                },
                a.repeats,
            )
            exact = runs["numpy"][0]["result"]
            got_recall = recall(runs["project"][0]["result"], exact)
            base, ours = summary(runs["numpy"], "s")["median"], summary(runs["project"], "s")["median"]
            kind_label = record["kind"] + (f" nprobe {record['nprobe']}" if "nprobe" in record else "")
            rows.append(
                [
                    f"{n:,}",
                    kind,
                    kind_label,
                    build_s,
                    QUERIES / base,
                    QUERIES / ours,
                    base / ours,
                    record["recall_at_8"],
                    got_recall,
                ]
            )
            out[(n, kind)] = {"speedup": base / ours, "recall": got_recall}
    head = [
        "pool",
        "vectors",
        "index chosen",
        "build s",
        "numpy q/s",
        "project q/s",
        "search speed-up",
        "recall@8 at build",
        "recall@8 on queries",
    ]
    report("retrieval", table(f"Retrieval of {K} neighbours, {QUERIES} queries (medians of {a.repeats})", head, rows))
    return out


if __name__ == "__main__":
    main()
