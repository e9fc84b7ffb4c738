"""A real LLM server (``transformers serve``, a tiny random Llama) as a judge: a stage-1 probe and a stage-2 run.

Not a simulation: the real wire protocol of a real server that ignores ``n``, gives no logprobs and answers free
text. Every reply is an abstention, nothing crashes, the probe measures the judge as uninformative, and it never
keeps or flips a label."""

import pytest
from real_llm_server import TransformersServe, tiny_llama

from synpref.io.layout import StorageLayout
from synpref.io.storage import read_parquet, write_json, write_parquet
from synpref.llm.annotation import probe_judge, requests_asked
from synpref.llm.client import AnnotatorConfig
from synpref.models.reliability import judge_reliability, uninformative_judges
from synpref.models.reward_model import RMConfig, train_reward_model
from synpref.pipeline import run_stage2
from synpref.settings import AnnotateSettings, Stage2Config
from synpref.simulation.synthetic import generate, generate_disjoint

pytestmark = pytest.mark.integration
RND = "2026-11-01"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    serve = TransformersServe(tiny_llama(folder / "model"), folder / "serve.log")
    yield serve
    serve.stop()


def test_a_real_server_through_a_probe_and_a_stage2_run(server, tmp_path):
    judge = AnnotatorConfig(name="tiny", base_url=server.base_url, model=server.model, max_tokens=24, timeout_s=120)
    store = StorageLayout(tmp_path / "root")
    gold, _ = generate(40, seed=41)
    rows = gold.to_pylist()
    rnd = store.round(RND)
    write_parquet(gold, rnd.gold)
    for rm in (rnd.best_rm, rnd.gold_rm):
        train_reward_model(rows[:30], rows[30:], RMConfig(mode="frozen", head_epochs=3), rm)
    write_json({"joint_weights": {"best": 0.0, "gold": 0.0}}, rnd.calibration)  # RMs at chance: the judge decides

    asked, chosen, probe, usage = probe_judge(rows[:12], {}, judge, store.llm_cache, AnnotateSettings(max_examples=0))
    assert usage["tiny"]["errors"] == 0 and usage["tiny"]["requests"] >= 12  # it ignores n: asked again for the rest
    assert set(probe.column("verdict").to_pylist()) == {"abstain"}  # free text, never a verdict
    judges = judge_reliability(probe)
    judges["annotators"]["tiny"]["asking"] = chosen
    assert "tiny" in uninformative_judges(judges)
    write_json(judges, rnd.judges)
    write_json({"round": RND}, rnd.manifest)

    wild, _ = generate_disjoint(12, [gold], seed=42, noise=0.3)
    write_parquet(wild, tmp_path / "wild.parquet")
    out = tmp_path / "out"
    cfg = Stage2Config(canaries=0, max_examples=0, samples=1)
    manifest = run_stage2(store, out, tmp_path / "wild.parquet", [asked], RND, cfg)
    counts = manifest["counts"]
    assert counts["input"] == 12 and counts["kept"] == counts["recycled"] == 0 and counts["dropped"] == 12
    assert "none is reachable" in manifest["frontier"]["reason"]
    samples = read_parquet(next((out / "shards").glob("*/annotations/tiny/samples.parquet")))
    assert requests_asked(samples) > 0 and set(samples.column("verdict").to_pylist()) == {"abstain"}
