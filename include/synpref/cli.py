"""``synpref`` command line: every pipeline step runnable by hand, on the same storage layout as the DAGs."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


@command
def cmd_prepare(a: argparse.Namespace) -> int:
    from .preprocess import PrepareConfig, prepare
    from .readers import input_files

    files = [f for uri in a.input for f in input_files(uri)]
    manifest = prepare(files, a.out, a.benchmark, PrepareConfig(shard_size=a.shard_size))
    _print({"pool": a.out, **manifest["counts"], "shards": len(manifest["shards"])})
    return 0


@command
def cmd_synth(a: argparse.Namespace) -> int:
    from .storage import write_parquet
    from .synthetic import generate

    pairs, truth = generate(a.n, seed=a.seed, noise=a.noise, source=a.source, with_attributes=not a.no_attributes)
    write_parquet(pairs, a.out)
    write_parquet(truth, a.truth)
    _print({"pairs": a.out, "truth": a.truth, "n": pairs.num_rows, "noise": a.noise})
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synpref", description="SynPref preference-data curation (Skywork-Reward-V2) — run steps by hand.")
    sp = p.add_subparsers(dest="command", required=True)

    s = sp.add_parser("prepare", help="raw pairs → quarantine, dedup, decontamination → unverified pool shards")
    s.add_argument("--input", action="append", required=True, help="file or directory URI (repeatable); jsonl/json/parquet/csv")
    s.add_argument("--out", required=True, help="pool directory URI, e.g. file:///data/root/pool or s3://bucket/root/pool")
    s.add_argument("--benchmark", default=None, help="benchmark prompts (.txt one per line, or JSONL with 'prompt') for 13-gram decontamination")
    s.add_argument("--shard-size", type=int, default=20_000)

    s = sp.add_parser("synth", help="generate synthetic objective preference pairs with a separate hidden-truth table")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--noise", type=float, default=0.0, help="fraction of pairs with chosen/rejected flipped")
    s.add_argument("--source", default="synthetic")
    s.add_argument("--no-attributes", action="store_true", help="leave the 5 preference attributes empty")
    s.add_argument("--out", required=True, help="output Parquet URI")
    s.add_argument("--truth", required=True, help="hidden-truth Parquet URI (keep it out of the input directory)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
