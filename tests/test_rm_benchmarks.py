"""Reward models on public RM benchmarks: the three formats read, accuracy with intervals per subset,
RewardBench's section weighting, the paired difference between two rounds' RMs, and a round's step."""

import json

import numpy as np
import pytest

from synpref.io.readers import InputError
from synpref.models.rm_benchmarks import load_benchmark, paired_difference, summarize


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_three_formats_become_pairs_with_their_subsets(tmp_path):
    rewardbench = _jsonl(
        tmp_path / "rb.jsonl",
        [
            {"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math-prm", "id": 1},
            {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "subset": "alpacaeval-easy", "id": 2},
        ],
    )
    judgebench = _jsonl(
        tmp_path / "jb.jsonl",
        [
            {"question": "Is 7 prime?", "response_A": "No.", "response_B": "Yes.", "label": "B>A", "source": "math"},
            {"question": "Capital of Peru?", "response_A": "Lima.", "response_B": "Cusco.", "label": "A>B"},
            {"question": "Tie?", "response_A": "a", "response_B": "b", "label": "A=B"},  # a tie: skipped
        ],
    )
    trl = _jsonl(
        tmp_path / "trl.jsonl",
        [{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
          "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]}],
    )  # fmt: skip
    rb, jb, plain = load_benchmark(rewardbench), load_benchmark(judgebench), load_benchmark(trl)
    assert (rb.name, [r["subset"] for r in rb.rows]) == ("rb", ["math-prm", "alpacaeval-easy"])
    assert [(r["chosen"], r["rejected"]) for r in jb.rows] == [("Yes.", "No."), ("Lima.", "Cusco.")]
    assert jb.skipped == 1 and [r["subset"] for r in jb.rows] == ["math", "all"]
    assert plain.rows[0]["chosen"] == "good" and plain.rows[0]["subset"] == "all"


def test_a_benchmark_that_is_not_one_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="RM benchmark not found"):
        load_benchmark(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="no preference pair in it"):
        load_benchmark(_jsonl(tmp_path / "empty.jsonl", [{"text": "not a pair"}]))


def test_rewardbench_sections_weigh_as_rewardbench_does():
    subsets = ["math-prm"] * 4 + ["hep-go"] * 2 + ["hep-rust"] * 2 + ["alpacaeval-easy"] * 2 + ["mine"] * 2
    right = np.array([1, 1, 1, 1] + [0, 0] + [1, 0] + [1, 0] + [0, 1], dtype=bool)
    out = summarize(subsets, right)
    assert out["overall"]["pairs"] == 12 and out["overall"]["accuracy"] == pytest.approx(7 / 12)
    assert out["subsets"]["hep-rust"]["accuracy"] == 0.5 and out["subsets"]["mine"]["pairs"] == 2
    sections = out["rewardbench"]["sections"]
    assert sections == {"Chat": 0.5, "Reasoning": pytest.approx((1.0 + 0.25) / 2)}  # math-prm = the code subsets
    assert out["rewardbench"]["score"] == pytest.approx((0.5 + 0.625) / 2)
    low, high = out["overall"]["ci_low"], out["overall"]["ci_high"]
    assert low < 7 / 12 < high
    assert "rewardbench" not in summarize(["a", "b"], np.array([True, False]))


def test_the_paired_difference_is_seeded_and_brackets_a_real_change():
    rng = np.random.default_rng(1)
    before = rng.random(400) < 0.6
    after = before | (rng.random(400) < 0.3)  # strictly better on some pairs
    d = paired_difference(before, after)
    assert d == paired_difference(before, after) and 0 < d["ci_low"] <= d["difference"] <= d["ci_high"]
    same = paired_difference(before, before)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0


def _rounds(tmp_path):
    """Two published rounds with tiny frozen RMs, and a RewardBench-format benchmark of held-out pairs."""
    from synpref.io.layout import StorageLayout
    from synpref.io.storage import write_json, write_parquet
    from synpref.models.reward_model import RMConfig, train_reward_model
    from synpref.simulation.synthetic import generate

    store = StorageLayout(tmp_path / "root")
    gold, _ = generate(30, seed=5)
    rows = gold.to_pylist()
    for rnd in ("2026-11-01", "2026-11-02"):
        out = store.round(rnd)
        write_parquet(gold, out.gold)
        for rm in (out.best_rm, out.gold_rm):
            train_reward_model(rows[:20], rows[20:], RMConfig(mode="frozen", head_epochs=3), rm)
    held, _ = generate(40, seed=9)
    records = [
        {"prompt": r["conversation"][-1]["content"], "chosen": r["chosen"], "rejected": r["rejected"], "subset": s}
        for r, s in zip(held.to_pylist(), ["math-prm", "hep-go"] * 20)
    ]
    bench = _jsonl(tmp_path / "rewardbench.jsonl", records)
    write_json({"round": "2026-11-01"}, store.round("2026-11-01").manifest)  # published: the previous round
    return store, bench


def test_a_round_scores_both_rms_and_compares_with_the_previous_round(tmp_path):
    from synpref.io.storage import read_parquet
    from synpref.settings import Stage1Config
    from synpref.stage1.steps import sign_off_required, step_rm_benchmarks

    store, bench = _rounds(tmp_path)
    first = step_rm_benchmarks(store, "2026-11-01", [str(bench)])["benchmarks"]["rewardbench"]
    assert first["pairs"] == 40 and "vs_previous" not in first  # nothing before it
    assert set(first["best_rm"]["rewardbench"]["sections"]) == {"Reasoning"}
    table = read_parquet(store.round("2026-11-01").rm_benchmark("rewardbench"))
    assert table.num_rows == 40 and table.column_names == ["pair_id", "subset", "best_rm_right", "gold_rm_right"]
    second = step_rm_benchmarks(store, "2026-11-02", [str(bench)])
    same = second["benchmarks"]["rewardbench"]
    assert same["previous_round"] == "2026-11-01" and same["vs_previous"]["difference"] == 0  # the same RMs
    assert second["regressed"] == [] and sign_off_required(store, "2026-11-02", Stage1Config()) is None
    assert step_rm_benchmarks(store, "2026-11-02", []) == {}  # none configured: no record left behind
    assert not store.round("2026-11-02").step("rm_benchmarks").exists()


def test_a_round_whose_best_rm_regresses_needs_a_sign_off(tmp_path):
    import pyarrow as pa

    from synpref.io.storage import read_parquet, write_parquet
    from synpref.settings import Stage1Config
    from synpref.stage1.steps import sign_off_required, step_rm_benchmarks

    store, bench = _rounds(tmp_path)
    step_rm_benchmarks(store, "2026-11-01", [str(bench)])
    before = store.round("2026-11-01").rm_benchmark("rewardbench")
    t = read_parquet(before)  # the previous round's best RM ranked every pair right
    write_parquet(t.set_column(2, "best_rm_right", pa.array([True] * t.num_rows)), before)
    info = step_rm_benchmarks(store, "2026-11-02", [str(bench)])
    assert info["regressed"] == ["rewardbench"] and info["benchmarks"]["rewardbench"]["vs_previous"]["ci_high"] < 0
    why = sign_off_required(store, "2026-11-02", Stage1Config())
    assert why == "the best RM regressed on the RM benchmark(s) rewardbench"
    assert sign_off_required(store, "2026-11-02", Stage1Config(benchmark_gate=False)) is None


def test_the_sign_off_waits_when_required_even_with_sign_off_off(monkeypatch):
    """The DAG's gate (``SignOff``): off → approved at once, unless ``required`` gives a reason (a regression)."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "dags"))
    from synpref_common import SignOff

    monkeypatch.setattr(ApprovalOperator, "execute", lambda self, context: "waiting for a human")
    params = {"sign_off": False, "sign_off_on_timeout": "reject", "sign_off_timeout_hours": 1}
    quiet = SignOff(task_id="a", subject="s", body="b", required=lambda c: None)
    assert quiet.execute({"params": params})["chosen_options"] == [ApprovalOperator.APPROVE]
    gated = SignOff(task_id="b", subject="s", body="b", required=lambda c: "the best RM regressed")
    assert gated.execute({"params": params}) == "waiting for a human"


@pytest.mark.e2e  # a stage-2 run and four RMs trained (about a minute on 2 cores)
def test_the_downstream_check_trains_on_the_curated_set_and_on_the_raw_input(tmp_path, capsys):
    """Stage 2 with ``downstream_pairs``: two RMs, one per training set, scored on a benchmark; the manifest and
    the dataset card carry the comparison; ``synpref downstream`` runs it again on the finished output."""
    from synpref.cli import main
    from synpref.io.storage import write_json, write_parquet
    from synpref.pipeline import run_stage2
    from synpref.settings import Stage2Config
    from synpref.simulation.synthetic import generate, generate_disjoint

    store, bench = _rounds(tmp_path)
    write_json({"joint_weights": {"best": 1.0, "gold": 1.0}}, store.round("2026-11-01").calibration)
    wild, _ = generate_disjoint(120, [generate(30, seed=5)[0]], seed=12, noise=0.3)
    write_parquet(wild, tmp_path / "wild.parquet")
    cfg = Stage2Config(rm_benchmarks=str(bench), downstream_pairs=40, canaries=0, decision_rule="paper")
    out = tmp_path / "out"
    manifest = run_stage2(store, out, tmp_path / "wild.parquet", [], "2026-11-01", cfg)
    down = manifest["downstream"]
    curated = manifest["counts"]["kept"] + manifest["counts"]["recycled"]
    assert down["pairs"] == min(40, curated) - max(1, int(min(40, curated) * 0.2)) and down["rm_mode"] == "frozen"
    result = down["benchmarks"]["rewardbench"]
    assert result["curated"]["pairs"] == result["raw"]["pairs"] == 40
    assert result["difference"]["ci_low"] <= result["difference"]["difference"] <= result["difference"]["ci_high"]
    card = (out / "README.md").read_text()
    assert f"an RM trained on {down['pairs']} pairs of this set" in card, card[card.find("## Does") :][:400]
    assert "pairs of the raw input" in card
    assert (out / "downstream" / "curated" / "rm_config.json").exists()
    assert main(["downstream", "--out", str(out), "--rm-benchmarks", str(bench), "--pairs", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["benchmarks"]["rewardbench"] == result  # deterministic
