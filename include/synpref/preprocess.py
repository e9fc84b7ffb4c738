"""Pre-processing (paper appendix C): structural check → quarantine, global de-duplication,
13-gram decontamination against benchmark prompts, and sharding into the unverified pool.

Two steps so the heavy part maps over input files:
``normalize_file`` (one per input file) → ``finalize_pool`` (global dedup, decontam, shards).
Invariant, checked in code: ``input = pool + duplicates + contaminated + quarantined``.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa

from .readers import read_pairs
from .schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, records_to_table
from .storage import PathLike, as_path, list_files, read_json, read_parquet, write_json, write_manifest, write_parquet

NGRAM = 13
_WORD = re.compile(r"\w+", re.UNICODE)
DROPPED_SCHEMA = PAIR_SCHEMA.append(pa.field("reason", pa.string()))


class ConservationError(RuntimeError):
    """Counts do not add up: a pair was lost or double-counted."""


@dataclass(frozen=True)
class PrepareConfig:
    shard_size: int = 20_000
    ngram: int = NGRAM


def file_key(index: int, file_uri: str) -> str:
    """Deterministic per-input-file key used for staging paths."""
    digest = hashlib.sha256(file_uri.encode()).hexdigest()[:10]
    return f"{index:05d}-{digest}"


def normalize_file(file_uri: str, index: int, staging: PathLike, source: str | None = None) -> dict:
    """Read + validate one input file; write its valid records and its quarantine rows."""
    staging = as_path(staging)
    key = file_key(index, file_uri)
    result = read_pairs(file_uri, source=source)
    write_parquet(records_to_table(result.records), staging / f"{key}.pairs.parquet")
    write_parquet(pa.Table.from_pylist(result.quarantine, schema=QUARANTINE_SCHEMA), staging / f"{key}.quarantine.parquet")
    counts = {"file": file_uri, "key": key, "input": result.total, "valid": len(result.records), "quarantined": len(result.quarantine)}
    write_json(counts, staging / f"{key}.counts.json")
    return counts


def ngrams(text: str, n: int = NGRAM) -> set[int]:
    """Hashed word n-grams of lower-cased text."""
    words = _WORD.findall(text.lower())
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


def load_benchmark_prompts(uri: PathLike | None) -> list[str]:
    """Benchmark first-turn prompts: ``.txt`` (one per line) or JSONL with ``prompt`` (string or messages)."""
    if not uri:
        return []
    p = as_path(uri)
    text = p.read_text()
    if not p.name.endswith((".jsonl", ".json")):
        return [line for line in text.splitlines() if line.strip()]
    prompts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        prompt = json.loads(line)["prompt"]
        if isinstance(prompt, list):
            prompt = next(m["content"] for m in prompt if m["role"] == "user")
        prompts.append(prompt)
    return prompts


class Decontaminator:
    """Flags pairs whose user turns share any n-gram with a benchmark prompt."""

    def __init__(self, prompts: Iterable[str], n: int = NGRAM):
        self.n = n
        self.index: dict[int, int] = {}
        for i, prompt in enumerate(prompts):
            for g in ngrams(prompt, n):
                self.index.setdefault(g, i)

    def match(self, conversation: list[dict]) -> int | None:
        """Index of the first benchmark prompt sharing an n-gram, else None."""
        if not self.index:
            return None
        for m in conversation:
            if m["role"] == "user":
                for g in ngrams(m["content"], self.n):
                    if g in self.index:
                        return self.index[g]
        return None


def _staged(staging: PathLike) -> list[str]:
    return [p.name[: -len(".counts.json")] for p in list_files(staging, (".counts.json",))]


def finalize_pool(staging: PathLike, out_dir: PathLike, benchmark_uri: PathLike | None = None, config: PrepareConfig = PrepareConfig()) -> dict:
    """Global dedup (first occurrence wins, in input-file order), decontamination, sharding.

    Writes ``shard-XXXXX.parquet``, ``duplicates.parquet``, ``contaminated.parquet``,
    ``quarantine.parquet`` and, last, ``manifest.json`` under ``out_dir``.
    """
    staging, out_dir = as_path(staging), as_path(out_dir)
    keys = _staged(staging)
    decon = Decontaminator(load_benchmark_prompts(benchmark_uri), config.ngram)
    for old in list_files(out_dir, (".parquet",)):
        if old.name.startswith("shard-"):
            old.unlink()

    seen: dict[str, str] = {}
    duplicates, contaminated, buffer, shards = [], [], [], []
    input_total = quarantined = 0
    quarantine_tables = []

    def flush(final: bool = False) -> None:
        while len(buffer) >= config.shard_size or (final and buffer):
            chunk = buffer[: config.shard_size]
            del buffer[: config.shard_size]
            path = out_dir / f"shard-{len(shards):05d}.parquet"
            write_parquet(pa.Table.from_pylist(chunk, schema=PAIR_SCHEMA), path)
            shards.append({"name": path.name, "count": len(chunk)})

    for key in keys:
        counts = read_json(staging / f"{key}.counts.json")
        input_total += counts["input"]
        quarantined += counts["quarantined"]
        quarantine_tables.append(read_parquet(staging / f"{key}.quarantine.parquet"))
        for row in read_parquet(staging / f"{key}.pairs.parquet").to_pylist():
            pid = row["pair_id"]
            if pid in seen:
                duplicates.append({**row, "reason": f"duplicate of {pid} first seen in {seen[pid]}"})
                continue
            seen[pid] = counts["file"]
            hit = decon.match(row["conversation"])
            if hit is not None:
                contaminated.append({**row, "reason": f"shares a {config.ngram}-gram with benchmark prompt #{hit}"})
                continue
            buffer.append(row)
            flush()
    flush(final=True)

    write_parquet(pa.Table.from_pylist(duplicates, schema=DROPPED_SCHEMA), out_dir / "duplicates.parquet")
    write_parquet(pa.Table.from_pylist(contaminated, schema=DROPPED_SCHEMA), out_dir / "contaminated.parquet")
    quarantine = pa.concat_tables(quarantine_tables) if quarantine_tables else QUARANTINE_SCHEMA.empty_table()
    write_parquet(quarantine, out_dir / "quarantine.parquet")
    counts = {
        "input": input_total,
        "pool": sum(s["count"] for s in shards),
        "duplicates": len(duplicates),
        "contaminated": len(contaminated),
        "quarantined": quarantined,
    }
    check_conservation(counts["input"], {k: v for k, v in counts.items() if k != "input"}, where=str(out_dir))
    manifest = {"kind": "pool", "counts": counts, "shards": shards, "files": [read_json(staging / f"{k}.counts.json") for k in keys]}
    write_manifest(out_dir, manifest)
    return manifest


def check_conservation(total: int, parts: dict[str, int], where: str = "") -> None:
    """Raise ConservationError unless ``total == sum(parts)``."""
    s = sum(parts.values())
    if s != total:
        raise ConservationError(f"{where}: input {total} != {' + '.join(f'{k} {v}' for k, v in parts.items())} = {s}")


def prepare(inputs: Iterable[str], out_dir: PathLike, benchmark_uri: PathLike | None = None, config: PrepareConfig = PrepareConfig()) -> dict:
    """The whole pre-processing step in one call (CLI / tests); the DAG maps normalize_file."""
    staging = as_path(out_dir) / "_staging"
    for old in list_files(staging):
        old.unlink()
    for i, f in enumerate(inputs):
        normalize_file(f, i, staging)
    return finalize_pool(staging, out_dir, benchmark_uri, config)


def pool_shards(pool_dir: PathLike) -> list[str]:
    """URIs of the shards of a completed pool (from its manifest)."""
    pool_dir = as_path(pool_dir)
    manifest = read_json(pool_dir / "manifest.json")
    return [str(pool_dir / s["name"]) for s in manifest["shards"]]
