"""``synpref prepare`` vs a minimal pandas pipeline, side by side in one run: time and peak RSS.

Input: one JSON-lines file per size of conversational pairs (~1 KB each) with 5% exact copies and 1%
mirrored copies (chosen and rejected swapped); no broken line (``pandas.read_json`` stops at the first
one, the project quarantines it). Baseline: ``pandas.read_json``
+ the same sha256 pair id + ``drop_duplicates`` + ``to_parquet`` (no quarantine, no conflicts, no
decontamination). Project: ``synpref.io.preprocess.prepare`` (streaming map/reduce, one worker process per
core). Each run is a fresh process; peak RSS is the whole process tree's (sampled every 50 ms).

    python benchmarks/prepare_speed.py                          # 10k, 100k, 1M pairs, 3 repeats
    python benchmarks/prepare_speed.py --sizes 2000 --repeats 1 # smoke
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import in_subprocess, interleaved, report, summary, table  # noqa: E402

PANDAS = """
import hashlib, json, time
import pandas as pd
start = time.perf_counter()
df = pd.read_json({src!r}, lines=True)
enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
df["pair_id"] = [hashlib.sha256(enc([c, a, b]).encode()).hexdigest()[:32]
                 for c, a, b in zip(df.conversation, df.chosen, df.rejected)]
df = df.drop_duplicates("pair_id")
df.to_parquet({out!r})
print(json.dumps({{"s": time.perf_counter() - start, "kept": len(df)}}))
"""

PROJECT = """
import json, time
from synpref.io.layout import PoolLayout
from synpref.io.preprocess import prepare
start = time.perf_counter()
m = prepare([{src!r}], PoolLayout({out!r}))
print(json.dumps({{"s": time.perf_counter() - start, "kept": m.counts["pool"]}}))
"""


def make_input(path: Path, n: int, seed: int = 0) -> None:
    """``n`` lines: unique pairs plus exact copies and mirrored copies."""
    r = random.Random(seed)
    words = [f"w{i}" for i in range(5000)]
    text = lambda k: " ".join(r.choice(words) for _ in range(k))  # noqa: E731
    rows: list[dict] = []
    with open(path, "w") as f:
        for _ in range(n):
            x = r.random()
            if rows and x < 0.05:
                rec = r.choice(rows)
            elif rows and x < 0.06:
                src = r.choice(rows)
                rec = {**src, "chosen": src["rejected"], "rejected": src["chosen"]}
            else:
                rec = {
                    "conversation": [{"role": "user", "content": text(30)}],
                    "chosen": text(60),
                    "rejected": text(60),
                }
                if len(rows) < 10_000:
                    rows.append(rec)
            f.write(json.dumps(rec) + "\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    rows, out = [], {}
    with tempfile.TemporaryDirectory(prefix="synpref-bench-prepare-") as tmp:
        for n in a.sizes:
            src = Path(tmp) / f"pairs-{n}.jsonl"
            make_input(src, n)
            runs = interleaved(
                {
                    "pandas": lambda src=src: in_subprocess(PANDAS.format(src=str(src), out=f"{tmp}/pandas.parquet")),
                    "project": lambda src=src: in_subprocess(PROJECT.format(src=str(src), out=f"{tmp}/pool")),
                },
                a.repeats,
            )
            base_t, ours_t = summary(runs["pandas"], "s"), summary(runs["project"], "s")
            base_m, ours_m = summary(runs["pandas"], "peak_mb"), summary(runs["project"], "peak_mb")
            ratio = ours_t["median"] / base_t["median"]
            rows.append(
                [
                    f"{n:,}",
                    f"{src.stat().st_size / 2**20:,.0f}",
                    base_t["median"],
                    ours_t["median"],
                    ratio,
                    base_m["median"],
                    ours_m["median"],
                ]
            )
            out[n] = {"time_ratio": ratio, "peak_mb": ours_m["median"]}
    head = ["pairs", "input MB", "pandas s", "project s", "project / pandas", "pandas peak MB", "project peak MB"]
    report("prepare", table(f"prepare vs pandas (medians of {a.repeats}, interleaved)", head, rows))
    return out


if __name__ == "__main__":
    main()
