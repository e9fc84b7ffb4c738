import numpy as np
import pytest

from synpref.adaptive_retrieval import RetrievalConfig, adaptive_retrieve, build_index, k_for_p


@pytest.mark.parametrize(
    "p,k", [(0.0, 8), (0.5, 8), (0.5000001, 4), (0.625, 3), (0.75, 2), (0.875, 1), (0.99, 1), (1.0, 0)]
)
def test_k_of_p_edges(p, k):
    assert k_for_p(p, 8) == k


def _unit(rng, n, d=16):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_retrieval_excludes_labelled_dedups_and_records_puller():
    rng = np.random.default_rng(0)
    pool = _unit(rng, 50)
    gold = np.stack([pool[0] + 0.01, pool[0] - 0.01]).astype(np.float32)  # two gold pairs near the same pool items
    ids = [f"p{i}" for i in range(50)]
    t = adaptive_retrieve(
        ["g_err", "g_ok"], [0.2, 0.9], gold, ids, pool, exclude={"p0"}, config=RetrievalConfig(k_max=8)
    )
    rows = t.to_pylist()
    got = [r["pair_id"] for r in rows]
    assert "p0" not in got
    assert len(got) == len(set(got)) == 8  # union de-duplicated: k=8 and k=1 overlap
    assert {r["pulled_by"] for r in rows} <= {"g_err", "g_ok"}
    assert any(r["pulled_by_count"] == 2 for r in rows)
    assert all(r["k"] in (8, 1) for r in rows)


def test_large_pools_use_ivf():
    rng = np.random.default_rng(1)
    idx = build_index(_unit(rng, 3000), ivf_threshold=1000)
    assert "IVF" in type(idx).__name__
