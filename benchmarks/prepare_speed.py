"""``synpref prepare`` vs a minimal pandas pipeline, side by side in one run: time and peak RSS.

Input: one JSON-lines file per size of conversational pairs (~1 KB each) with 5% exact copies and 1%
mirrored copies (chosen and rejected swapped); no broken line (``pandas.read_json`` stops at the first
one, the project quarantines it), and 1,000 benchmark prompts (10 of them taken from the input).
Baseline: ``pandas.read_json`` + the same sha256 pair id + ``drop_duplicates`` + a 13-gram
decontamination against the same prompts (a Python set of word 13-grams) + ``to_parquet``, in one
process. Project: ``synpref.io.preprocess.prepare`` with the same prompts (streaming map/reduce), once on
one worker process (pandas' one core) and once on one per core. Each run is a fresh process; peak RSS is
the whole process tree's (sampled every 50 ms).

    python benchmarks/prepare_speed.py                          # 10k, 100k, 1M pairs, 3 repeats
    python benchmarks/prepare_speed.py --sizes 2000 --repeats 1 # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import in_subprocess, interleaved, report, summary, table  # noqa: E402

CORES = len(os.sched_getaffinity(0))

PANDAS = """
import hashlib, json, time
import pandas as pd
start = time.perf_counter()
df = pd.read_json({src!r}, lines=True)
enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
df["pair_id"] = [hashlib.sha256(enc([c, a, b]).encode()).hexdigest()[:32]
                 for c, a, b in zip(df.conversation, df.chosen, df.rejected)]
df = df.drop_duplicates("pair_id")
grams = lambda t: (lambda w: {{" ".join(w[i:i + 13]) for i in range(len(w) - 12)}})(t.lower().split())
bench = set().union(*(grams(line) for line in open({bench!r}) if line.strip()))
clean = [not any(grams(m["content"]) & bench for m in conv if m["role"] == "user") for conv in df.conversation]
df = df[clean]
df.to_parquet({out!r})
print(json.dumps({{"s": time.perf_counter() - start, "kept": len(df)}}))
"""

PROJECT = """
import json, time
from synpref.io.layout import PoolLayout
from synpref.io.preprocess import prepare
start = time.perf_counter()
m = prepare([{src!r}], PoolLayout({out!r}), {bench!r}, workers={workers})
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


def make_prompts(path: Path, src: Path, n: int = 1000) -> None:
    """``n`` benchmark prompts: 10 first-turn prompts of the input (so decontamination has work), the rest new."""
    r = random.Random(1)
    taken = []
    with open(src) as f:
        for line in f:
            taken.append(json.loads(line)["conversation"][0]["content"])
            if len(taken) == 10:
                break
    words = [f"b{i}" for i in range(5000)]
    fresh = [" ".join(r.choice(words) for _ in range(40)) for _ in range(n - len(taken))]
    path.write_text("\n".join(taken + fresh) + "\n")


def sides(src: Path, bench: Path, tmp: str) -> dict:
    """The runs compared: pandas (one process) and the project on one process and on one per core."""
    common = {"src": str(src), "bench": str(bench)}

    def project(workers: int) -> dict:
        return in_subprocess(PROJECT.format(**common, out=f"{tmp}/pool", workers=workers))

    return {
        "pandas": lambda: in_subprocess(PANDAS.format(**common, out=f"{tmp}/pandas.parquet")),
        "project, 1 process": lambda: project(1),
        f"project, {CORES} processes": lambda: project(CORES),
    }


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
            bench = Path(tmp) / "benchmark_prompts.txt"
            make_prompts(bench, src)
            runs = interleaved(
                sides(src, bench, tmp),
                a.repeats,
            )
            base_t, base_m = summary(runs["pandas"], "s"), summary(runs["pandas"], "peak_mb")
            for name in list(runs)[1:]:
                ours_t, ours_m = summary(runs[name], "s"), summary(runs[name], "peak_mb")
                ratio = ours_t["median"] / base_t["median"]
                size = f"{src.stat().st_size / 2**20:,.0f}"
                rows.append(
                    [
                        f"{n:,}",
                        size,
                        name,
                        base_t["median"],
                        ours_t["median"],
                        ratio,
                        base_m["median"],
                        ours_m["median"],
                    ]
                )
                out.setdefault(n, {})[name] = {"time_ratio": ratio, "peak_mb": ours_m["median"]}
    head = [
        "pairs",
        "input MB",
        "project",
        "pandas s",
        "project s",
        "project / pandas",
        "pandas peak MB",
        "project peak MB",
    ]
    report("prepare", table(f"prepare vs pandas (medians of {a.repeats}, interleaved)", head, rows))
    return out


if __name__ == "__main__":
    main()
