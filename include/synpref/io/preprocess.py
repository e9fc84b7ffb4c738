"""Pre-processing (paper appendix C): structural check → quarantine, global de-duplication,
13-gram decontamination against benchmark prompts, and sharding into the unverified pool.

Streaming map/reduce, memory bounded by a batch and a partition, never by the input's size:

1. ``normalize_file`` (map, one task per input file, or per 64 MiB range of a large JSON-lines
   file): read in batches, quarantine what fails the structural check, and hash-partition the valid
   pairs by their orientation-free content key into ``partitions`` staged files (one partition per
   64 MiB of input) — exact copies and mirrored copies (same conversation and responses, opposite
   label) always land in the same partition;
2. ``reduce_partition`` (map, one task per partition): the rules of ``FILTERS`` top to bottom over
   the partition's pairs in input order (global exact dedup, mirrored copies = label conflicts,
   13-gram decontamination; a new rule is one ``PairFilter`` class); the kept pairs become shards;
3. ``write_pool``: the partitions one after the other — shards, one table per rule, the quarantine
   and, last, the manifest.

One partition (input under 64 MiB) gives the bytes of a single in-memory pass: everything in input
order, first occurrence wins. With several, first occurrence still wins (copies share a partition)
and each partition is in input order; the pool lists partition after partition.
Invariant, checked in code: ``input = pool + duplicates + contaminated + quarantined``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import multiprocessing
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synpref.io.layout import PoolLayout
from synpref.io.readers import FILE_LEVEL, InputError, RecordError, iter_raw, normalize_row, quarantine_row, splits
from synpref.io.storage import (
    PathLike,
    as_path,
    copy_file,
    list_files,
    parquet_writer,
    read_json,
    read_parquet,
    write_json,
    write_parquet,
)
from synpref.records import PoolManifest
from synpref.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, pair_keys
from synpref.settings import NGRAM, PrepareConfig

_WORD = re.compile(r"\w+", re.UNICODE)
DROPPED_SCHEMA = PAIR_SCHEMA.append(pa.field("reason", pa.string()))
CONFLICT_SCHEMA = pa.schema([("pair_id", pa.string()), ("mirrored_copies", pa.list_(pa.string()))])
CONTENT = "_content"  # the staged helper column: orientation-free content key (the partitioning key)
STAGED_SCHEMA = PAIR_SCHEMA.append(pa.field(CONTENT, pa.string()))
BATCH_ROWS = 8192  # records per batch in the map and reduce steps
MERGE_ROWS = 65536  # rows per write when the partitions' tables are joined (one row group below this)
PARTITION_BYTES = 64 * 2**20  # input bytes per partition (the reduce holds one partition's keys)
MAX_PARTITIONS = 1024
STAGING = "lz4"  # compression of the staged (temporary) files: fast; the pool itself is zstd


class ConservationError(RuntimeError):
    """Counts do not add up: a pair was lost or double-counted."""


def file_key(index: int, file_uri: str) -> str:
    """Deterministic per-input-file key used for staging paths."""
    digest = hashlib.sha256(file_uri.encode()).hexdigest()[:10]
    return f"{index:05d}-{digest}"


def partitions_for(files: list[str]) -> int:
    """Partitions of a run: one per ``PARTITION_BYTES`` of input (at least 1, at most ``MAX_PARTITIONS``)."""
    size = sum(as_path(f).stat().st_size for f in files)
    return max(1, min(MAX_PARTITIONS, math.ceil(size / PARTITION_BYTES)))


def content_key(row: dict) -> str:
    """Orientation-free identity: the same conversation and responses whichever is chosen."""
    return pair_keys(row["conversation"], row["chosen"], row["rejected"])[1]


def _partition(key: str, partitions: int) -> int:
    return int(key[:8], 16) % partitions


def clear_staging(pool: PoolLayout) -> None:
    """Remove a previous run's staged outputs (the listing task owns the staging directory)."""
    for stale in list_files(pool.staging):
        stale.unlink()


def plan_run(pool: PoolLayout, files: list[str], skipped: list[dict] | None = None) -> int:
    """Record the input paths this run skipped (they go into the pool manifest with their reasons) and
    its number of partitions (``partitions_for``), which it returns."""
    partitions = partitions_for(files)
    write_json(skipped or [], pool.skipped_inputs)
    write_json({"partitions": partitions, "files": len(files)}, pool.plan)
    return partitions


def partitions(pool: PoolLayout) -> list[int]:
    """The partitions of the planned run (the reduce step maps over them)."""
    return list(range(read_json(pool.plan)["partitions"] if pool.plan.exists() else 1))


class _Partitioner:
    """Valid pairs of one input file → one staged Parquet file per partition (writers opened lazily, closed
    by ``stack``: all written, or none on an error)."""

    def __init__(self, pool: PoolLayout, key: str, partitions: int, stack: ExitStack) -> None:
        self.pool, self.key, self.partitions, self.stack = pool, key, partitions, stack
        self.writers: dict[int, pq.ParquetWriter] = {}

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=STAGED_SCHEMA)
        parts = np.array([_partition(k, self.partitions) for k in table.column(CONTENT).to_pylist()])
        for p in np.unique(parts).tolist():
            if p not in self.writers:
                path = self.pool.staged(self.key, f"part-{p:05d}.parquet")
                self.writers[p] = self.stack.enter_context(parquet_writer(path, STAGED_SCHEMA, STAGING))
            self.writers[p].write_table(table.filter(pa.array(parts == p)))


def map_items(files: list[str]) -> list[list]:
    """The map step's work items, ``[file index, file URI, split]``: one per file, or one per byte range
    of a large JSON-lines file (``readers.splits``)."""
    return [[i, f, split] for i, f in enumerate(files) for split in splits(f)]


def normalize_file(
    file_uri: str, index: int, pool: PoolLayout, source: str | None = None, split: list[int] | None = None
) -> dict:
    """Map step: the structural check of one input file (or one byte range of it), streamed in batches;
    valid pairs are hash-partitioned by content key, failures become quarantine rows (with reasons)."""
    key = file_key(index, file_uri)
    stage = key + (f"-{split[0]:013d}" if split else "")  # staged outputs of this task
    for old in list_files(pool.staging):
        if old.name.startswith(f"{stage}."):
            old.unlink()
    p = as_path(file_uri)
    src, default_source = str(p), source or p.name.split(".")[0]
    counts = {"file": file_uri, "key": key, "input": 0, "valid": 0, "quarantined": 0, "repaired": 0}
    rows: list[dict] = []
    bad: list[dict] = []
    repaired: list[dict] = []  # kept pairs whose malformed optional fields were dropped, with what was dropped
    with ExitStack() as stack:
        partitioner = _Partitioner(pool, stage, len(partitions(pool)), stack)
        quarantine = stack.enter_context(
            parquet_writer(pool.staged(stage, "quarantine.parquet"), QUARANTINE_SCHEMA, STAGING)
        )
        for i, raw, error in iter_raw(p, tuple(split) if split else None):
            row = _checked_row(i, raw, error, src, default_source, bad, repaired)
            if row is not None:
                rows.append(row)
            if len(rows) >= BATCH_ROWS:
                counts["valid"] += len(rows)
                partitioner.write(rows)
                rows = []
            if len(bad) >= BATCH_ROWS:
                counts["quarantined"] += len(bad)
                quarantine.write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA))
                bad = []
        counts["valid"] += len(rows)
        partitioner.write(rows)
        if counts["valid"] + counts["quarantined"] + len(bad) == 0 and not (split and split[0]):
            bad.append(quarantine_row(src, FILE_LEVEL, "empty file: no records", ""))
        counts["quarantined"] += len(bad)
        quarantine.write_table(pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA))
    counts["repaired"] = len(repaired)
    write_parquet(pa.Table.from_pylist(repaired, schema=QUARANTINE_SCHEMA), pool.staged(stage, "repaired.parquet"))
    counts["input"] = counts["valid"] + counts["quarantined"]
    write_json(counts, pool.staged(stage, "counts.json"))
    return counts


def _checked_row(
    i: int, raw: Any, error: str | None, src: str, default_source: str, bad: list[dict], repaired: list[dict]
) -> dict | None:
    """A valid pair as a row (a malformed optional field dropped: noted in ``repaired``), or None with its
    quarantine row appended to ``bad``."""
    if error:
        bad.append(quarantine_row(src, i, error, raw))
        return None
    try:
        repairs: list[str] = []
        row, row[CONTENT] = normalize_row(raw, default_source, repairs)
        if repairs:
            repaired.append(quarantine_row(src, i, "; ".join(repairs), raw))
        return row
    except RecordError as e:
        bad.append(quarantine_row(src, i, str(e), raw))
    except (ValueError, TypeError, RecursionError) as e:  # a reader bug must not stop the line either
        bad.append(quarantine_row(src, i, f"unreadable record: {type(e).__name__}", raw))
    return None


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
    """Flags pairs whose user turns share any n-gram with a benchmark prompt.

    The benchmark's n-grams are a compact sorted array of 64-bit hashes (8 bytes each, with the first
    prompt holding each), searched with ``np.searchsorted``."""

    def __init__(self, prompts: Iterable[str], n: int = NGRAM):
        self.n = n
        grams: dict[int, int] = {}
        for i, prompt in enumerate(prompts):
            for g in ngrams(prompt, n):
                grams.setdefault(g, i)
        keys = np.fromiter(grams, dtype=np.int64, count=len(grams))
        order = np.argsort(keys)
        self.grams = keys[order]
        self.prompt = np.fromiter(grams.values(), dtype=np.int64, count=len(grams))[order]

    def __len__(self) -> int:
        return len(self.grams)

    def match(self, conversation: list[dict]) -> int | None:
        """The lowest index of a benchmark prompt sharing an n-gram with a user turn, else None."""
        if not len(self.grams):
            return None
        hashes = [g for m in conversation if m["role"] == "user" for g in ngrams(m["content"], self.n)]
        if not hashes:
            return None
        q = np.fromiter(hashes, dtype=np.int64, count=len(hashes))
        pos = np.minimum(np.searchsorted(self.grams, q), len(self.grams) - 1)
        hit = self.grams[pos] == q
        return int(self.prompt[pos[hit]].min()) if hit.any() else None


# --- pre-processing rules: each one class; a pool records one table and one count per rule ---------


class PairFilter(ABC):
    """A pre-processing rule over valid pairs, in input order: ``None`` keeps the pair, a string drops it.

    ``name`` is the rule's table (``<pool>/<name>.parquet``) and count in the pool manifest;
    ``decision`` is the recorded state of the pairs it drops; ``columns`` the row fields it reads
    (None: all). Rules run per partition, and a partition holds every copy of a pair's content: a
    rule that compares pairs must compare copies of the same content. Subclasses implement ``reason``.
    """

    name: str = ""
    decision: str = ""
    columns: tuple[str, ...] | None = None

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

    name, decision, columns = "duplicates", "duplicate", ("pair_id",)

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

    name, decision, columns = "duplicates", "duplicate", ("pair_id", CONTENT)

    def __init__(self) -> None:
        self.first: dict[str, tuple[str, str]] = {}  # orientation-free content → (pair id, file)
        self.conflicts: dict[str, list[str]] = {}

    def reason(self, row: dict, source_file: str) -> str | None:
        key = row.get(CONTENT) or content_key(row)
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

    name, decision, columns = "contaminated", "contaminated", ("conversation",)

    def __init__(self, prompts: Iterable[str], n: int = NGRAM) -> None:
        self.decontaminator = Decontaminator(prompts, n)
        if not len(self.decontaminator):
            self.columns = ()

    @classmethod
    def create(cls, config: PrepareConfig, benchmark_prompts: list[str]) -> PairFilter:
        return cls(benchmark_prompts, config.ngram)

    def reason(self, row: dict, source_file: str) -> str | None:
        if not self.columns:
            return None
        hit = self.decontaminator.match(row["conversation"])
        return None if hit is None else f"shares a {self.decontaminator.n}-gram with benchmark prompt #{hit}"


# The pre-processing pipeline after the structural check (``normalize_file``), top to bottom.
FILTERS: tuple[type[PairFilter], ...] = (ExactDuplicate, MirroredCopy, Decontamination)


def build_filters(config: PrepareConfig, benchmark_uri: PathLike | None = None) -> list[PairFilter]:
    prompts = load_benchmark_prompts(benchmark_uri)
    return [f.create(config, prompts) for f in FILTERS]


def _staged(pool: PoolLayout) -> list[str]:
    return [p.name[: -len(".counts.json")] for p in list_files(pool.staging, (".counts.json",))]


def _reduced(partition: int) -> str:
    return f"reduce-{partition:05d}"


def _batches(path: Any, columns: list[str] | None = None, batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    with as_path(path).open("rb") as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def reduce_partition(
    pool: PoolLayout,
    partition: int,
    benchmark_uri: PathLike | None = None,
    config: PrepareConfig = PrepareConfig(),
    filters: list[PairFilter] | None = None,
) -> dict:
    """Reduce step: the rules over one partition's pairs in input order; writes its kept pairs as shards,
    one table per rule and the rules' side tables (all in input order) and, last, its counts."""
    filters = build_filters(config, benchmark_uri) if filters is None else filters
    out = _reduced(partition)
    columns = None if any(f.columns is None for f in filters) else sorted({c for f in filters for c in f.columns})
    names = list(dict.fromkeys(f.name for f in filters))
    counts = dict.fromkeys(["pool", *names], 0)
    kept = _ShardWriter(pool, out, config.shard_size)
    with _RuleWriters(pool, out, names) as dropped:
        for key in _staged(pool):
            part = pool.staged(key, f"part-{partition:05d}.parquet")
            if not part.exists():
                continue
            source_file = read_json(pool.staged(key, "counts.json"))["file"]
            for batch in _batches(part):
                rows = batch.select(columns).to_pylist() if columns is not None else batch.to_pylist()
                verdicts = [_verdict(filters, row, source_file) for row in rows]
                kept.add(batch.filter(pa.array([v is None for v in verdicts])))
                for name in names:
                    hit = [v is not None and v[0] == name for v in verdicts]
                    if any(hit):
                        reasons = [v[1] for v in verdicts if v is not None and v[0] == name]
                        table = pa.Table.from_batches([batch.filter(pa.array(hit))])
                        dropped.write(name, table.append_column("reason", pa.array(reasons, pa.string())))
                        counts[name] += len(reasons)
    kept.flush()
    counts["pool"] = sum(kept.shards)
    side = [name for f in filters for name in f.side_tables()]
    for f in filters:
        for name, table in f.side_tables().items():
            write_parquet(table, pool.staged(out, f"{name}.side.parquet"))
    write_json({"counts": counts, "shards": kept.shards, "side_tables": side}, pool.staged(out, "reduced.json"))
    return counts


class _ShardWriter:
    """A partition's kept pairs → staged shards of ``shard_size`` pairs (the last one shorter)."""

    def __init__(self, pool: PoolLayout, out: str, shard_size: int) -> None:
        self.pool, self.out, self.size = pool, out, shard_size
        self.buffer: list[pa.RecordBatch] = []
        self.shards: list[int] = []  # pairs per shard

    def add(self, batch: pa.RecordBatch) -> None:
        self.buffer.append(batch)
        while sum(len(b) for b in self.buffer) >= self.size:
            self.flush(self.size)

    def flush(self, rows: int | None = None) -> None:
        table = pa.Table.from_batches(self.buffer, STAGED_SCHEMA)
        rows = len(table) if rows is None else rows
        if rows:
            shard = table.slice(0, rows).select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA).combine_chunks()
            write_parquet(shard, self.pool.staged(self.out, f"shard-{len(self.shards):05d}.parquet"))
            self.shards.append(rows)
        self.buffer = table.slice(rows).to_batches()


def _verdict(filters: list[PairFilter], row: dict, source_file: str) -> tuple[str, str] | None:
    for f in filters:
        why = f.reason(row, source_file)
        if why is not None:
            return f.name, why
    return None


class _RuleWriters:
    """One staged table per rule of a partition (opened on the rule's first dropped pair)."""

    def __init__(self, pool: PoolLayout, out: str, names: list[str]) -> None:
        self.pool, self.out, self.names, self.open = pool, out, names, {}
        self.schema = STAGED_SCHEMA.append(pa.field("reason", pa.string()))

    def __enter__(self) -> _RuleWriters:
        return self

    def write(self, name: str, table: pa.Table) -> None:
        if name not in self.open:
            cm = parquet_writer(self.pool.staged(self.out, f"{name}.parquet"), self.schema, STAGING)
            self.open[name] = (cm, cm.__enter__())
        self.open[name][1].write_table(table)

    def __exit__(self, *exc: Any) -> None:
        for cm, _ in self.open.values():
            cm.__exit__(*exc)


# --- write_pool: the partitions one after the other, each in input order -------------------------


def _concat(paths: list[Any], schema: pa.Schema, target: Any) -> int:
    """Staged tables → one table of ``schema`` (helper columns dropped), written ``MERGE_ROWS`` rows at a
    time (memory: one write)."""
    rows, buffer = 0, []
    with parquet_writer(target, schema) as w:
        for path in paths:
            for batch in _batches(path, schema.names, MERGE_ROWS):
                buffer.append(batch)
                if sum(len(b) for b in buffer) >= MERGE_ROWS:
                    table = pa.Table.from_batches(buffer, schema)
                    w.write_table(table.slice(0, MERGE_ROWS))
                    rest = table.slice(MERGE_ROWS)
                    buffer = rest.to_batches() if len(rest) else []
                    rows += MERGE_ROWS
        if buffer or not rows:
            table = pa.Table.from_batches(buffer, schema)
            w.write_table(table)
            rows += len(table)
    return rows


def write_pool(pool: PoolLayout, config: PrepareConfig = PrepareConfig()) -> PoolManifest:
    """Last step: the reduced partitions one after the other become the pool — shards, one table per rule,
    the rules' side tables, ``quarantine.parquet`` and, last, ``manifest.json``. Memory: one batch."""
    keys = _staged(pool)
    files = _per_file([read_json(pool.staged(key, "counts.json")) for key in keys])
    parts = partitions(pool)
    reduced = [read_json(pool.staged(_reduced(p), "reduced.json")) for p in parts]
    for old in list_files(pool.dir, (".parquet",)):
        if old.name.startswith("shard-"):
            old.unlink()
    shards = []
    for p, r in zip(parts, reduced):
        for k, count in enumerate(r["shards"]):
            path = pool.shard(len(shards))
            copy_file(pool.staged(_reduced(p), f"shard-{k:05d}.parquet"), path)
            shards.append({"name": path.name, "count": count})
    staged = lambda name: [s for s in (pool.staged(_reduced(p), f"{name}.parquet") for p in parts) if s.exists()]  # noqa: E731
    counts = {"input": sum(c["input"] for c in files), "pool": sum(s["count"] for s in shards)}
    for name in reduced[0]["counts"]:
        if name != "pool":
            counts[name] = _concat(staged(name), DROPPED_SCHEMA, pool.table(name))
    side = {
        name: _sorted_side_table([pool.staged(_reduced(p), f"{name}.side.parquet") for p in parts])
        for name in reduced[0]["side_tables"]
    }
    for name, table in side.items():
        write_parquet(table, pool.table(name))
    counts["quarantined"] = _concat(
        [pool.staged(k, "quarantine.parquet") for k in keys], QUARANTINE_SCHEMA, pool.quarantine
    )
    repaired = _concat(  # kept pairs (in the shards) that lost a malformed optional field: not a separate outcome
        [s for s in (pool.staged(k, "repaired.parquet") for k in keys) if s.exists()], QUARANTINE_SCHEMA, pool.repaired
    )
    check_conservation(counts["input"], {k: v for k, v in counts.items() if k != "input"}, where=str(pool.dir))
    for name in reduced[0]["counts"]:
        if sum(r["counts"][name] for r in reduced) != counts[name]:
            raise ConservationError(f"{pool.dir}: the partitions counted {name} differently from the tables written")
    if counts["pool"] == 0:  # the tables above say why; no manifest: an empty pool is not a usable pool
        parts_text = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "pool")
        raise InputError(f"no usable pair in the input ({parts_text}); the reasons are in {pool.quarantine}")
    skipped = read_json(pool.skipped_inputs) if pool.skipped_inputs.exists() else []
    sides = {name: table.num_rows for name, table in side.items()}
    manifest = PoolManifest(
        kind="pool", counts=counts, shards=shards, files=files, skipped_files=skipped, repaired=repaired, **sides
    )
    manifest.write(pool.manifest)
    return manifest


def _per_file(counts: list[dict]) -> list[dict]:
    """The map tasks' counts summed per input file (a large file is read in several ranges)."""
    out: dict[str, dict] = {}
    for c in counts:
        if c["file"] not in out:
            out[c["file"]] = dict(c)
        else:
            for k in ("input", "valid", "quarantined", "repaired"):
                out[c["file"]][k] += c.get(k, 0)
    return list(out.values())


def _sorted_side_table(paths: list[Any]) -> pa.Table:
    """A rule's side table of every partition, concatenated and sorted by pair id."""
    tables = [read_parquet(path) for path in paths]
    fields = [
        pa.field(f.name, pa.list_(f.type.value_type)) if pa.types.is_list(f.type) else f for f in tables[0].schema
    ]
    rows = sorted((row for t in tables for row in t.to_pylist()), key=lambda r: r["pair_id"])
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))  # list items named as the rule made them


def finalize_pool(
    pool: PoolLayout,
    benchmark_uri: PathLike | None = None,
    config: PrepareConfig = PrepareConfig(),
    filters: list[PairFilter] | None = None,
) -> PoolManifest:
    """Reduce every partition in this process, then ``write_pool`` (CLI, tests, stage 2's own input)."""
    prompts = load_benchmark_prompts(benchmark_uri)
    for p in partitions(pool):
        fresh = [f.create(config, prompts) for f in FILTERS] if filters is None else copy.deepcopy(filters)
        reduce_partition(pool, p, config=config, filters=fresh)
    return write_pool(pool, config)


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
    workers: int | None = None,
) -> PoolManifest:
    """The whole pre-processing step from one call (CLI / tests), the same steps the DAG maps: map items
    and partitions run in ``workers`` processes (default: one per CPU) when there is more than one."""
    load_benchmark_prompts(benchmark_uri)  # checked before any work starts
    inputs = list(inputs)
    clear_staging(pool)
    parts = range(plan_run(pool, inputs, skipped))
    items = map_items(inputs)
    workers = min(workers or len(os.sched_getaffinity(0)), max(len(items), len(parts)))
    if workers <= 1:
        for i, f, split in items:
            normalize_file(f, i, pool, split=split)
        return finalize_pool(pool, benchmark_uri, config)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:  # as datasets' num_proc
        list(ex.map(normalize_file, *zip(*[(f, i, pool, None, split) for i, f, split in items])))
        list(ex.map(reduce_partition, *zip(*[(pool, p, benchmark_uri, config) for p in parts])))
    return write_pool(pool, config)
