"""Error-driven adaptive retrieval (paper §3.2 step 2).

Embed (conversation, attributes) of gold and unverified-pool pairs (sentence-transformers,
the packaged all-MiniLM-L6-v2 by default; per-shard embedding cache keyed by pair_id + text
hash), index the pool with FAISS, and pull ``k(p)`` neighbours for every gold pair: ``k_max``
where the RM errs (p ≤ 0.5), fewer the more confident it is right. The union is de-duplicated
and already-labelled pairs are excluded.

Baselines at the same budget (``retrieval`` setting, for ablation): ``random_retrieve`` (a seeded draw from the
unlabelled pool) and ``uncertainty_retrieve`` (classical active learning: the pairs the current RM is least sure
of).

The index keeps its recall: exact (Flat) below ``FLAT_MAX`` vectors; above, IVF with ``nprobe``
raised until recall@8 against exact search, measured on a sample of the pool's own embeddings at
build time, reaches the target (0.95) — and exact search when no ``nprobe`` up to an eighth of the
lists does (embeddings without cluster structure). The choice and its measured recall are recorded
with the index, which is built once per pool version (``IndexCache``) and reused across rounds.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from synpref.io.storage import PathLike, as_path, read_bytes, read_json, write_bytes, write_json
from synpref.models.embedding import flat_index
from synpref.progress import log
from synpref.seeding import seeded_sample

RETRIEVAL_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("pulled_by", pa.string()),
        ("gold_p", pa.float64()),
        ("k", pa.int32()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
        ("pulled_by_count", pa.int32()),
    ]
)


FLAT_MAX = 20_000  # pool vectors up to which search is exact (a Flat index)
RECALL_TARGET = 0.95  # recall@8 an approximate index must reach on the pool's own embeddings
RECALL_SAMPLE = 256  # pool vectors used as queries to measure it
RECALL_K = 8


def k_for_p(p: float, k_max: int) -> int:
    """``k_max`` if p ≤ 0.5 else ``ceil(k_max · (1 − p))``."""
    if p <= 0.5:
        return k_max
    return max(0, math.ceil(k_max * (1.0 - p) - 1e-9))


def measured_recall(index, vectors: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> float:
    """recall@k of ``index`` against exact search, each query being a pool vector (itself left out)."""
    _, exact = flat_index(vectors).search(vectors[queries], k + 1)
    _, got = index.search(vectors[queries], k + 1)
    hits = [len((set(e) - {q}) & (set(g) - {q})) / k for q, e, g in zip(queries, exact, got)]
    return float(np.mean(hits))


def build_index(
    vectors: np.ndarray, recall_target: float = RECALL_TARGET, flat_max: int = FLAT_MAX, seed: int = 0
) -> tuple[object, dict]:
    """(FAISS inner-product index, its record): exact up to ``flat_max`` vectors; above, IVF with the
    smallest ``nprobe`` whose measured recall@8 reaches ``recall_target``, else exact."""
    import faiss

    n, dim = vectors.shape
    if n <= flat_max:
        return flat_index(vectors), {"kind": "flat", "vectors": n, "recall_at_8": 1.0}
    start = time.monotonic()
    rng = np.random.default_rng(seed)
    nlist = int(min(16384, max(64, 4 * math.sqrt(n))))
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors[rng.choice(n, size=min(n, nlist * 40), replace=False)])
    index.add(vectors)
    queries = rng.choice(n, size=min(n, RECALL_SAMPLE), replace=False)
    tried = {}
    nprobe = 1
    while nprobe <= max(1, nlist // 8):
        index.nprobe = nprobe
        tried[nprobe] = measured_recall(index, vectors, queries)
        if tried[nprobe] >= recall_target:
            record = {"kind": f"IVF{nlist},Flat", "nprobe": nprobe, "recall_at_8": tried[nprobe]}
            break
        nprobe *= 2
    else:
        index = flat_index(vectors)
        record = {"kind": "flat", "recall_at_8": 1.0, "why": f"no nprobe up to {nlist // 8} reached the target"}
    record.update(
        vectors=n,
        recall_target=recall_target,
        recall_sample=len(queries),
        recall_by_nprobe={str(k): round(v, 4) for k, v in tried.items()},
        build_s=round(time.monotonic() - start, 1),
    )
    log.info("retrieval index: %s", record)
    return index, record


class IndexCache:
    """The pool's retrieval index, built once per pool version: keyed by the ids and embedding texts it
    indexes (the pool manifest's shards and their attributes), stored as ``index.faiss`` + ``index.json``
    under ``directory/<key>/``. Exact (Flat) indexes are not stored: building one is a copy."""

    def __init__(self, directory: PathLike, flat_max: int = FLAT_MAX) -> None:
        self.directory, self.flat_max = as_path(directory), flat_max

    @staticmethod
    def key(ids: list[str], text_shas: list[str], recall_target: float) -> str:
        h = hashlib.sha256(f"{recall_target}\n".encode())
        for pid, sha in zip(ids, text_shas):
            h.update(f"{pid}:{sha}\n".encode())
        return h.hexdigest()[:20]

    def get(self, key: str, vectors: np.ndarray, recall_target: float = RECALL_TARGET) -> tuple[object, dict]:
        import faiss

        base = self.directory / key
        if (base / "index.json").exists():
            record = read_json(base / "index.json")
            index = faiss.deserialize_index(np.frombuffer(read_bytes(base / "index.faiss"), dtype=np.uint8))
            index.nprobe = record["nprobe"]
            return index, {**record, "reused": True}
        index, record = build_index(vectors, recall_target, self.flat_max)
        if record["kind"] != "flat":
            write_bytes(base / "index.faiss", faiss.serialize_index(index).tobytes())
            write_json(record, base / "index.json")  # last: marks the stored index complete
        return index, {**record, "reused": False}


@dataclass(frozen=True)
class RetrievalConfig:
    k_max: int
    recall_target: float = RECALL_TARGET


def adaptive_retrieve(
    gold_ids: list[str],
    gold_p: list[float],
    gold_vecs: np.ndarray,
    pool_ids: list[str],
    pool_vecs: np.ndarray,
    exclude: Iterable[str],
    config: RetrievalConfig,
    index: object | None = None,
) -> pa.Table:
    """For each gold pair, its k(p) nearest unlabelled pool pairs; union de-duplicated (best score wins).

    ``index``: the pool's index (``IndexCache``), else one is built for this call."""
    excluded = set(exclude)
    if not gold_ids or not pool_ids:
        return RETRIEVAL_SCHEMA.empty_table()
    ks = [k_for_p(p, config.k_max) for p in gold_p]
    index = index if index is not None else build_index(pool_vecs, config.recall_target)[0]
    depth = min(len(pool_ids), config.k_max + min(len(excluded), 4 * config.k_max) + 1)
    scores, idx = index.search(gold_vecs.astype(np.float32), depth)
    best: dict[str, dict] = {}
    count: dict[str, int] = {}
    for g, (gid, p, k) in enumerate(zip(gold_ids, gold_p, ks)):
        rank = 0
        for s, j in zip(scores[g], idx[g]):
            if rank >= k or j < 0:
                break
            pid = pool_ids[j]
            if pid in excluded or pid == gid:
                continue
            rank += 1
            count[pid] = count.get(pid, 0) + 1
            cand = {"pair_id": pid, "pulled_by": gid, "gold_p": float(p), "k": k, "rank": rank, "score": float(s)}
            if pid not in best or cand["score"] > best[pid]["score"]:
                best[pid] = cand
    rows = [{**best[pid], "pulled_by_count": count[pid]} for pid in sorted(best)]
    return pa.Table.from_pylist(rows, schema=RETRIEVAL_SCHEMA)


def _baseline_table(policy: str, picked: list[tuple[str, float | None, float]], budget: int) -> pa.Table:
    """Retrieval rows of a baseline: ``pulled_by`` names the policy, ``k`` is the budget."""
    rows = [
        {
            "pair_id": pid,
            "pulled_by": policy,
            "gold_p": p,
            "k": budget,
            "rank": i + 1,
            "score": score,
            "pulled_by_count": 1,
        }
        for i, (pid, p, score) in enumerate(picked)
    ]
    return pa.Table.from_pylist(sorted(rows, key=lambda r: r["pair_id"]), schema=RETRIEVAL_SCHEMA)


def random_retrieve(pool_ids: list[str], exclude: Iterable[str], budget: int, seed: int) -> pa.Table:
    """``budget`` unlabelled pool pairs drawn at random (seeded by the pair ids: the same draw on a re-run)."""
    excluded = set(exclude)
    candidates = [pid for pid in pool_ids if pid not in excluded]
    picked = seeded_sample(candidates, budget, "random-retrieval", seed, key=str)
    return _baseline_table("random", [(pid, None, 0.0) for pid in picked], budget)


def uncertainty_retrieve(pool_ids: list[str], pool_p: np.ndarray, exclude: Iterable[str], budget: int) -> pa.Table:
    """Uncertainty sampling: the ``budget`` unlabelled pool pairs whose RM probability is nearest 0.5 (ties by id);
    ``score`` = 1 − 2·|p − 0.5|."""
    excluded = set(exclude)
    candidates = [(pid, float(p)) for pid, p in zip(pool_ids, pool_p) if pid not in excluded]
    candidates.sort(key=lambda c: (abs(c[1] - 0.5), c[0]))
    return _baseline_table("uncertainty", [(pid, p, 1 - 2 * abs(p - 0.5)) for pid, p in candidates[:budget]], budget)
