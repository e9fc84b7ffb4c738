"""Scale check (slow; `pytest -m slow`): 200k pairs through stage-2 scoring + decide with a tiny RM.

A shard task's peak memory must not grow with the total input: the same 20k-pair shard task is
measured (peak RSS of its own process, as an Airflow task process would be) in a 20k-pair run and
in a 200k-pair run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synpref.io.storage import write_json, write_parquet
from synpref.simulation.synthetic import generate

pytestmark = pytest.mark.slow
SHARD = 20_000

SHARD_TASK = """
import json, resource, sys
from synpref.settings import Stage2Config
from synpref.stage2.steps import Stage2Run, step_decide, step_score
root, out, shard = sys.argv[1:4]
cfg = Stage2Config(shard_size={shard})
score = step_score(Stage2Run.at(root, out, "2026-01-01", cfg), shard)
decided = step_decide(Stage2Run.at(root, out, "2026-01-01", cfg), shard, []).for_xcom()
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **decided}))
""".replace("{shard}", str(SHARD))


def _tiny_backbone(path: Path) -> str:
    """A 1-layer, 32-wide BERT with the packaged MiniLM tokenizer: a real RM backbone, cheap enough for 200k pairs."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from synpref.models.embedding import default_embedder

    tok = AutoTokenizer.from_pretrained(default_embedder())
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def scale_root(tmp_path_factory):
    from synpref.io.layout import StorageLayout
    from synpref.models.reward_model import RMConfig, train_reward_model

    d = tmp_path_factory.mktemp("scale")
    root = d / "root"
    backbone = _tiny_backbone(d / "tiny-bert")
    gold, _ = generate(300, seed=1)
    silver, _ = generate(2000, seed=2, noise=0.2)
    rnd = StorageLayout(root).round("2026-01-01").dir
    cfg = RMConfig(mode="frozen", backbone=backbone, max_length=128, epochs=1)
    train_reward_model(silver.to_pylist(), gold.to_pylist(), cfg, rnd / "rm")
    train_reward_model(gold.to_pylist()[:240], gold.to_pylist()[240:], cfg, rnd / "gold_rm")
    write_parquet(gold, rnd / "gold.parquet")
    manifest = {"kind": "stage1_round", "round": "2026-01-01", "note": "scale-test round with a tiny RM"}
    write_json(manifest, rnd / "manifest.json")
    shards = []
    for i in range(10):
        pairs, _ = generate(SHARD, seed=100 + i, noise=0.3, with_attributes=False)
        shards.append(str(d / "shards" / f"shard-{i:05d}.parquet"))
        write_parquet(pairs, shards[-1])
    return root, shards


def _run_shard_task(root: Path, out: Path, shard: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SHARD_TASK, str(root), str(out), shard], capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_shard_task_peak_memory_does_not_grow_with_total_input(scale_root, tmp_path):
    root, shards = scale_root
    small = [_run_shard_task(root, tmp_path / "run-20k", s) for s in shards[:1]]
    large = [_run_shard_task(root, tmp_path / "run-200k", s) for s in shards]
    assert sum(r["input"] for r in large) == 200_000
    for r in small + large:
        assert r["input"] == r["kept"] + r["recycled"] + r["dropped"] == SHARD
    peak_small = small[0]["peak_mb"]
    peak_large = max(r["peak_mb"] for r in large)
    print(
        f"peak RSS of a shard task: 20k-pair run {peak_small:.0f} MB, 200k-pair run {peak_large:.0f} MB (max "
        "over 10 shards)"
    )
    assert peak_large <= peak_small * 1.15 + 50, (peak_small, [r["peak_mb"] for r in large])
