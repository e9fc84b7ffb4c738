"""Pre-processing (paper appendix C): structural check → quarantine, global de-duplication,
13-gram decontamination against benchmark prompts, and sharding into the unverified pool.

Two steps so the heavy part maps over input files: ``normalize_file`` (the structural check, one
per input file) → ``finalize_pool``, which runs the rules of ``FILTERS`` top to bottom (global exact
dedup, mirrored copies = label conflicts, 13-gram decontamination; a new rule is one ``PairFilter``
class) and writes the shards.
Invariant, checked in code: ``input = pool + duplicates + contaminated + quarantined``.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable

import pyarrow as pa

from .layout import PoolLayout
from .readers import InputError, read_pairs
from .schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, records_to_table
from .settings import NGRAM, PrepareConfig
from .storage import PathLike, as_path, list_files, read_json, read_parquet, write_json, write_parquet

_WORD = re.compile(r"\w+", re.UNICODE)
DROPPED_SCHEMA = PAIR_SCHEMA.append(pa.field("reason", pa.string()))
CONFLICT_SCHEMA = pa.schema([("pair_id", pa.string()), ("mirrored_copies", pa.list_(pa.string()))])


class ConservationError(RuntimeError):
    """Counts do not add up: a pair was lost or double-counted."""


def file_key(index: int, file_uri: str) -> str:
    """Deterministic per-input-file key used for staging paths."""
    digest = hashlib.sha256(file_uri.encode()).hexdigest()[:10]
    return f"{index:05d}-{digest}"


def normalize_file(file_uri: str, index: int, pool: PoolLayout, source: str | None = None) -> dict:
    """Structural check of one input file: its valid records and its quarantine rows (with reasons)."""
    key = file_key(index, file_uri)
    result = read_pairs(file_uri, source=source)
    write_parquet(records_to_table(result.records), pool.staged(key, "pairs.parquet"))
    quarantine = pa.Table.from_pylist(result.quarantine, schema=QUARANTINE_SCHEMA)
    write_parquet(quarantine, pool.staged(key, "quarantine.parquet"))
    counts = {
        "file": file_uri,
        "key": key,
        "input": result.total,
        "valid": len(result.records),
        "quarantined": len(result.quarantine),
    }
    write_json(counts, pool.staged(key, "counts.json"))
    return counts


def clear_staging(pool: PoolLayout, skipped: list[dict] | None = None) -> None:
    """Remove a previous run's per-file outputs (the listing task owns the staging directory) and record
    the input paths this run skipped (they go into the pool manifest with their reasons)."""
    for stale in list_files(pool.staging):
        stale.unlink()
    write_json(skipped or [], pool.skipped_inputs)


def ngrams(text: str, n: int = NGRAM) -> set[int]:
    """Hashed word n-grams of lower-cased text."""
    words = _WORD.findall(text.lower())
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


def load_benchmark_prompts(uri: PathLike | None) -> list[str]:
    """Benchmark first-turn prompts: ``.txt`` (one per line) or JSONL with ``prompt`` (string or messages)."""
    if not uri:
        return []
    p = as_path(uri)
    if not p.exists():
        raise InputError(f"benchmark prompts not found: {uri}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(f"benchmark prompts {uri} cannot be read as UTF-8 text: {e}") from None
    if not p.name.endswith((".jsonl", ".json")):
        return [line for line in text.split("\n") if line.strip()]
    prompts = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            prompts.append(_benchmark_prompt(line, f"{uri} line {n}"))
    return prompts


def _benchmark_prompt(line: str, where: str) -> str:
    try:
        prompt = json.loads(line)["prompt"]
        if isinstance(prompt, list):
            prompt = next(m["content"] for m in prompt if m["role"] == "user")
    except (ValueError, KeyError, TypeError, StopIteration):
        raise InputError(f"{where}: expected a JSON object with 'prompt' (a string or messages)") from None
    if not isinstance(prompt, str):
        raise InputError(f"{where}: 'prompt' must be a string or messages")
    return prompt


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


# --- pre-processing rules: each one class; a pool records one table and one count per rule ---------


class PairFilter(ABC):
    """A pre-processing rule over valid pairs, in input order: ``None`` keeps the pair, a string drops it.

    ``name`` is the rule's table (``<pool>/<name>.parquet``) and count in the pool manifest;
    ``decision`` is the recorded state of the pairs it drops. Subclasses implement ``reason``.
    """

    name: str = ""
    decision: str = ""

    @classmethod
    def create(cls, config: PrepareConfig, benchmark_prompts: list[str]) -> PairFilter:
        return cls()

    @abstractmethod
    def reason(self, row: dict, source_file: str) -> str | None:
        """None keeps the pair; a string drops it with that reason."""

    def side_tables(self) -> dict[str, pa.Table]:
        """Extra tables the rule records about the pairs it kept (written next to the shards)."""
        return {}


class ExactDuplicate(PairFilter):
    """Global de-duplication on (conversation, chosen, rejected): the first occurrence in input-file order wins."""

    name, decision = "duplicates", "duplicate"

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def reason(self, row: dict, source_file: str) -> str | None:
        pid = row["pair_id"]
        if pid in self.seen:
            return f"duplicate of {pid} first seen in {self.seen[pid]}"
        self.seen[pid] = source_file
        return None


class MirroredCopy(PairFilter):
    """Conflict-aware de-duplication: the same conversation and responses with chosen and rejected swapped.

    The sources disagree on the label, so the later copy is set aside as a duplicate (its reason names
    the pair it mirrors) and the pair kept is listed in the pool's ``label_conflicts`` table: stage 2
    then gives its stored label no prior weight, and the evidence (RMs, judges) decides it.
    """

    name, decision = "duplicates", "duplicate"

    def __init__(self) -> None:
        self.first: dict[str, tuple[str, str]] = {}  # orientation-free content → (pair id, file)
        self.conflicts: dict[str, list[str]] = {}

    @staticmethod
    def content(row: dict) -> str:
        conv = [{"role": m["role"], "content": m["content"]} for m in row["conversation"]]
        blob = json.dumps([conv, sorted((row["chosen"], row["rejected"]))], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def reason(self, row: dict, source_file: str) -> str | None:
        key = self.content(row)
        if key not in self.first:
            self.first[key] = (row["pair_id"], source_file)
            return None
        kept, file = self.first[key]
        self.conflicts.setdefault(kept, []).append(row["pair_id"])
        return f"mirrored copy of {kept} (opposite label) first seen in {file}; the label conflict is recorded"

    def side_tables(self) -> dict[str, pa.Table]:
        rows = [{"pair_id": k, "mirrored_copies": v} for k, v in sorted(self.conflicts.items())]
        return {"label_conflicts": pa.Table.from_pylist(rows, schema=CONFLICT_SCHEMA)}


class Decontamination(PairFilter):
    """Drop pairs whose user turns share an n-gram (13 by default) with a benchmark prompt."""

    name, decision = "contaminated", "contaminated"

    def __init__(self, prompts: Iterable[str], n: int = NGRAM) -> None:
        self.decontaminator = Decontaminator(prompts, n)

    @classmethod
    def create(cls, config: PrepareConfig, benchmark_prompts: list[str]) -> PairFilter:
        return cls(benchmark_prompts, config.ngram)

    def reason(self, row: dict, source_file: str) -> str | None:
        hit = self.decontaminator.match(row["conversation"])
        return None if hit is None else f"shares a {self.decontaminator.n}-gram with benchmark prompt #{hit}"


# The pre-processing pipeline after the structural check (``normalize_file``), top to bottom.
FILTERS: tuple[type[PairFilter], ...] = (ExactDuplicate, MirroredCopy, Decontamination)


def build_filters(config: PrepareConfig, benchmark_uri: PathLike | None = None) -> list[PairFilter]:
    prompts = load_benchmark_prompts(benchmark_uri)
    return [f.create(config, prompts) for f in FILTERS]


def _staged(pool: PoolLayout) -> list[str]:
    return [p.name[: -len(".counts.json")] for p in list_files(pool.staging, (".counts.json",))]


class _ShardWriter:
    """Buffers kept pairs and writes full shards as they fill."""

    def __init__(self, pool: PoolLayout, shard_size: int) -> None:
        self.pool, self.size, self.buffer, self.shards = pool, shard_size, [], []

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.size:
            self.flush()

    def flush(self) -> None:
        while self.buffer:
            chunk, self.buffer = self.buffer[: self.size], self.buffer[self.size :]
            path = self.pool.shard(len(self.shards))
            write_parquet(pa.Table.from_pylist(chunk, schema=PAIR_SCHEMA), path)
            self.shards.append({"name": path.name, "count": len(chunk)})


def finalize_pool(
    pool: PoolLayout,
    benchmark_uri: PathLike | None = None,
    config: PrepareConfig = PrepareConfig(),
    filters: list[PairFilter] | None = None,
) -> dict:
    """Run the rules over the staged pairs (in input-file order) and shard what passes.

    Writes the shards, one table per rule (``duplicates.parquet``, ``contaminated.parquet``),
    ``quarantine.parquet`` and, last, ``manifest.json``.
    """
    filters = build_filters(config, benchmark_uri) if filters is None else filters
    keys = _staged(pool)
    for old in list_files(pool.dir, (".parquet",)):
        if old.name.startswith("shard-"):
            old.unlink()
    dropped: dict[str, list[dict]] = {f.name: [] for f in filters}
    writer = _ShardWriter(pool, config.shard_size)
    files = [read_json(pool.staged(key, "counts.json")) for key in keys]
    for key, counts in zip(keys, files):
        for row in read_parquet(pool.staged(key, "pairs.parquet")).to_pylist():
            for f in filters:
                why = f.reason(row, counts["file"])
                if why is not None:
                    dropped[f.name].append({**row, "reason": why})
                    break
            else:
                writer.add(row)
    writer.flush()

    for name, rows in dropped.items():
        write_parquet(pa.Table.from_pylist(rows, schema=DROPPED_SCHEMA), pool.table(name))
    side = {name: table for f in filters for name, table in f.side_tables().items()}
    for name, table in side.items():
        write_parquet(table, pool.table(name))
    tables = [read_parquet(pool.staged(key, "quarantine.parquet")) for key in keys]
    write_parquet(pa.concat_tables(tables) if tables else QUARANTINE_SCHEMA.empty_table(), pool.quarantine)
    counts = {
        "input": sum(c["input"] for c in files),
        "pool": sum(s["count"] for s in writer.shards),
        **{name: len(rows) for name, rows in dropped.items()},
        "quarantined": sum(c["quarantined"] for c in files),
    }
    check_conservation(counts["input"], {k: v for k, v in counts.items() if k != "input"}, where=str(pool.dir))
    if counts["pool"] == 0:  # the tables above say why; no manifest: an empty pool is not a usable pool
        parts = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "pool")
        raise InputError(f"no usable pair in the input ({parts}); the reasons are in {pool.quarantine}")
    skipped = read_json(pool.skipped_inputs) if pool.skipped_inputs.exists() else []
    manifest = {"kind": "pool", "counts": counts, "shards": writer.shards, "files": files, "skipped_files": skipped}
    manifest.update({name: table.num_rows for name, table in side.items()})
    write_json(manifest, pool.manifest)
    return manifest


def check_conservation(total: int, parts: dict[str, int], where: str = "") -> None:
    """Raise ConservationError unless ``total == sum(parts)``."""
    s = sum(parts.values())
    if s != total:
        raise ConservationError(f"{where}: input {total} != {' + '.join(f'{k} {v}' for k, v in parts.items())} = {s}")


def prepare(
    inputs: Iterable[str],
    pool: PoolLayout,
    benchmark_uri: PathLike | None = None,
    config: PrepareConfig = PrepareConfig(),
    skipped: list[dict] | None = None,
) -> dict:
    """The whole pre-processing step in one call (CLI / tests); the DAG maps normalize_file."""
    load_benchmark_prompts(benchmark_uri)  # checked before any work starts
    clear_staging(pool, skipped)
    for i, f in enumerate(inputs):
        normalize_file(f, i, pool)
    return finalize_pool(pool, benchmark_uri, config)
