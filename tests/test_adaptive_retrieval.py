import numpy as np
import pytest

from synpref.stage1.adaptive_retrieval import (
    IndexCache,
    RetrievalConfig,
    adaptive_retrieve,
    build_index,
    k_for_p,
    measured_recall,
)


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


def _clustered(rng, n: int, centers: int = 50) -> np.ndarray:
    c = rng.standard_normal((centers, 384)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, 384)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_large_clustered_pool_gets_ivf_with_the_recall_it_measured():
    rng = np.random.default_rng(1)
    vecs = _clustered(rng, 6000)
    idx, record = build_index(vecs, recall_target=0.95, flat_max=1000)
    assert "IVF" in type(idx).__name__ and record["kind"].startswith("IVF")
    assert record["recall_at_8"] >= 0.95 and idx.nprobe == record["nprobe"]
    queries = rng.choice(len(vecs), 100, replace=False)  # fresh queries: the recall holds
    assert measured_recall(idx, vecs, queries) >= 0.9


def test_a_pool_without_structure_falls_back_to_exact_search():
    rng = np.random.default_rng(2)
    idx, record = build_index(_unit(rng, 6000), recall_target=0.95, flat_max=1000)
    assert record["kind"] == "flat" and "why" in record
    assert max(float(v) for v in record["recall_by_nprobe"].values()) < 0.95


def test_the_index_is_built_once_per_pool_version(tmp_path):
    rng = np.random.default_rng(3)
    vecs = _clustered(rng, 5000)
    ids = [f"p{i}" for i in range(len(vecs))]
    cache = IndexCache(tmp_path, flat_max=1000)
    key = IndexCache.key(ids, ["sha"] * len(ids), 0.95)
    first, rec1 = cache.get(key, vecs)
    second, rec2 = cache.get(key, vecs)
    assert (rec1["reused"], rec2["reused"]) == (False, True)
    assert second.nprobe == first.nprobe
    q = vecs[:20]
    assert (first.search(q, 8)[1] == second.search(q, 8)[1]).all()
    assert IndexCache.key(ids, ["other"] * len(ids), 0.95) != key  # new attributes → a new version


def test_the_encoder_width_is_read_from_the_model():
    from synpref.models.embedding import embed_rows, embedding_dim

    width = embedding_dim()
    assert width == 384  # all-MiniLM-L6-v2
    assert embed_rows([]).shape == (0, width)


def test_the_ablation_baselines_draw_the_budget_from_the_unlabelled_pool(tmp_path):
    """``retrieval: random | uncertainty``: as many pairs as adaptive retrieval pulled, never a labelled one; the
    random draw is the same on a re-run, uncertainty takes the pairs the best RM is least sure of."""
    from synpref.io.layout import StorageLayout
    from synpref.models.reliability import sigmoid
    from synpref.models.reward_model import RewardModel, train_reward_model
    from synpref.settings import RMConfig, Stage1Config
    from synpref.simulation.synthetic import generate
    from synpref.stage1.steps import _baseline_retrieval

    rows = generate(80, seed=5)[0].to_pylist()
    out = StorageLayout(tmp_path / "root").round("2026-01-01")
    train_reward_model(rows[:20], rows[20:30], RMConfig(mode="frozen", head_epochs=3), out.best_rm)
    pool, labelled = rows[30:], {r["pair_id"] for r in rows[30:40]}
    random = _baseline_retrieval(Stage1Config(retrieval="random"), out, pool, labelled, 12).to_pylist()
    assert len(random) == 12 and not {r["pair_id"] for r in random} & labelled
    assert random == _baseline_retrieval(Stage1Config(retrieval="random"), out, pool, labelled, 12).to_pylist()
    assert {r["pulled_by"] for r in random} == {"random"}
    unsure = _baseline_retrieval(Stage1Config(retrieval="uncertainty"), out, pool, labelled, 12).to_pylist()
    candidates = [r for r in pool if r["pair_id"] not in labelled]
    rm = RewardModel(out.best_rm)
    p = dict(zip([r["pair_id"] for r in candidates], sigmoid(rm.reward_diff(candidates))))
    rm.close()
    nearest = sorted(p, key=lambda pid: (abs(p[pid] - 0.5), pid))[:12]
    assert sorted(r["pair_id"] for r in unsure) == sorted(nearest)
    assert all(abs(r["gold_p"] - p[r["pair_id"]]) < 1e-9 for r in unsure)
