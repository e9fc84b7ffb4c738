"""Smoke runs of the benchmark scripts on tiny sizes: they run and their figures are sane (no timing asserted)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.fixture(autouse=True)
def _results(tmp_path, monkeypatch):
    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path)


def test_prepare_benchmark_runs_both_sides_on_the_same_input(tmp_path):
    import prepare_speed

    out = prepare_speed.main(["--sizes", "1500", "--repeats", "1"])
    assert set(out[1500]) == {"project, 1 process", f"project, {prepare_speed.CORES} processes"}
    assert all(v["peak_mb"] > 0 for v in out[1500].values())  # memory was sampled (times are not asserted)
    assert "| 1,500 |" in (tmp_path / "prepare.md").read_text()


def test_retrieval_benchmark_reports_the_recall_of_the_chosen_index(tmp_path):
    import retrieval_speed

    out = retrieval_speed.main(["--sizes", "2000", "--repeats", "1"])
    assert out[(2000, "clustered")]["recall"] == 1.0  # exact search under FLAT_MAX
    assert "Machine:" in (tmp_path / "retrieval.md").read_text()


def test_judges_benchmark_measures_against_a_fixed_latency_endpoint(tmp_path):
    import judges_speed

    out = judges_speed.main(["--concurrency", "4", "--requests", "16", "--latency", "0.05", "--repeats", "1"])
    # the ratio of two rates is a benchmark result (benchmarks/results/judges.md), not a property of the code
    assert isinstance(out["worst_share_of_ideal"], float)
    assert "Machine:" in (tmp_path / "judges.md").read_text()


def test_threads_benchmark_runs_the_same_tasks_with_each_thread_setting(tmp_path):
    import threads_per_task

    out = threads_per_task.main(["--tasks", "2", "--pairs", "16", "--passes", "1", "--repeats", "1"])
    assert len(out) == 2 and all(r["median"] > 0 for r in out.values())  # both settings ran; times not asserted
    assert "embed tasks at once" in (tmp_path / "threads.md").read_text()


def test_dag_parse_benchmark_compares_the_project_with_trivial_dags():
    import dag_parse

    out = dag_parse.main(["--repeats", "1"])
    assert out["ratio"] > 0
    assert set(out["stats"]) == {"project dags/", "3 trivial DAGs"}


def test_gpu_benchmark_without_a_gpu_says_it_measured_none(tmp_path, monkeypatch):
    import gpu_speed
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = gpu_speed.main([])
    text = (tmp_path / "gpu.md").read_text()
    assert out["gpu"] is False and text.startswith("**Not measured on a GPU**")
    assert "not projected (smoke)" in text and len(out["score"]) == 4
    assert [r[1] for r in out["score"][2:]] == ["plain transformers loop (32)", "project (shared prefixes)"]
    assert out["train"][0][1] == "TRL RewardTrainer (batch 8 pairs)"


def test_scoring_benchmark_compares_three_paths_at_one_length(tmp_path):
    import scoring_speed

    out = scoring_speed.main(["--pairs", "4", "--repeats", "1", "--settings", "encoder-256"])
    paths = {name.split(" / ")[1] for name in out}  # the rates are benchmark results, not asserted here
    assert paths == {"one pair at a time", "plain HF batching (32)", "project (token budget, sorted)"}
    assert "plain HF batching" in (tmp_path / "scoring.md").read_text()


@pytest.mark.slow  # ~8 minutes on 2 cores: stage-1 rounds for eight settings (run by hand: pytest -m slow)
def test_the_stage1_ablation_runs_every_row_as_a_setting_on_a_tiny_world(tmp_path, monkeypatch, capsys):
    import stage1_ablation

    monkeypatch.setattr(sys, "argv", ["stage1_ablation.py", "--quick", "--tiny", "--out", str(tmp_path / "abl")])
    assert stage1_ablation.main() == 0
    printed = capsys.readouterr().out
    assert all(f"| {row} |" in printed for row in stage1_ablation.ROWS)
    results = __import__("json").loads((tmp_path / "abl" / "results.json").read_text())["rows"]
    assert {r["after"]["1"]["spent"]["human_labels"] for r in results.values()} == {20}  # one human budget
    assert all(0 < r["after"]["1"]["test"]["overall"][0] <= 1 for r in results.values())
    for r in results.values():  # the rows that bypass the judges ask none on the retrieved pairs
        sp = r["after"]["1"]["spent"]
        mode = r["settings"].get("retrieved_to", "judges")
        assert (sp["judge_requests"] == 0) == (mode != "judges")
        assert (sp["silver_added"] == 0) == (mode == "humans")


def test_the_stage1_ablation_on_your_own_data_needs_every_file(monkeypatch, capsys):
    import stage1_ablation

    monkeypatch.setattr(sys, "argv", ["stage1_ablation.py", "--gold", "g.jsonl", "--pool", "p.jsonl"])
    with pytest.raises(SystemExit) as e:
        stage1_ablation.main()
    assert e.value.code == 2
    assert "needs --gold, --pool, --test and --annotators" in capsys.readouterr().err


def test_the_judging_cost_table_compares_each_mode_with_fixed_sampling_on_the_same_pairs():
    import curation_quality as cq

    correct = {f"p{i}": i % 4 != 0 for i in range(400)}  # a quarter of the stored labels are wrong
    fixed = {p: ("kept" if ok else "recycled", True, 9) for p, ok in correct.items()}
    same = cq.paired_differences(fixed, dict(fixed), correct)
    assert all(d == [0.0, 0.0, 0.0] for d in same.values())
    worse = {p: ("dropped", True, 2) if i % 8 == 1 else d for i, (p, d) in enumerate(fixed.items())}
    diff = cq.paired_differences(fixed, worse, correct)
    assert diff["retention"][2] < 0 < -diff["retention"][0]  # a loss beyond noise: the whole interval below 0
    assert diff["kept_accuracy"] == [0.0, 0.0, 0.0]
    row = {"method": "reliability (default)", "requests_per_pair": 1.0, "curated": 1, "cost_per_1k_curated": 1.0}
    quality = {k: 0.9 for k in cq.QUALITY} | {f"{k}_ci": [0.8, 1.0] for k in cq.QUALITY}
    results = [
        {**row, **quality, "setting": "noise 30%, judges 0.8, RM frozen", "requests_per_pair": 5.0},
        {**row, **quality, "setting": "noise 30%, judges 0.8, RM frozen, judging sequence", "vs_fixed": diff},
    ]
    table = cq.cost_table(results)
    assert "| 0.8 | sequence | 1.00 | 5.00× |" in table and " ✗ |" in table


def test_a_judging_mode_at_target_stops_judging_in_sequence_at_the_target_precision():
    """``@target`` runs stage 2 with both stopping confidences at the target, in its own run directory."""
    import curation_quality as cq

    from synpref.settings import Stage2Config

    at = cq.Setting(0.3, 0.8, "frozen", judging="sequence+logprobs@target")
    assert at.in_sequence and at.logprobs and at.run_name == "eval-sequence-logprobs-target"
    cfg = Stage2Config(**at.stop_bars)
    assert cfg.keep_stop_confidence == cfg.flip_stop_confidence == cfg.target_precision
    default = cq.Setting(0.3, 0.8, "frozen", judging="sequence")
    assert default.stop_bars == {} and not default.logprobs and at.world == default.world


def test_judging_bound_policy_asks_only_while_a_vote_is_worth_its_price():
    import numpy as np
    from judging_bound import ASK, DROP, FLIP, KEEP, VoteModel, optimal_policy, replay

    from synpref.simulation.simulated import JudgeProfile

    model = VoteModel.of(JudgeProfile(0.8, 0.1, 0.0, 0.5))
    prior = np.array([0.999, 0.5, 0.5, 0.02])
    action, q, stop = optimal_policy(prior, model, keep_bar=9.0, flip_bar=49.0, price=0.01)
    assert action[0, 0, 0] == KEEP  # the RMs already settle it: no vote is worth buying
    assert action[1, 0, 0] == ASK and action[1, 5, 0] == KEEP  # a 50/50 pair is asked until the votes settle it
    assert np.all(np.diff(q[1, :, 0]) > 0) and np.all(np.diff(q[1, 0, :]) < 0)  # agreeing votes raise P(right)
    assert action[3, 0, 1] != FLIP  # a flip needs two votes
    free, _, _ = optimal_policy(prior, model, 9.0, 49.0, price=-1.0)
    assert np.all(free[:, 0, 0] == ASK)  # votes that pay are always asked
    dear, _, _ = optimal_policy(prior, model, 9.0, 49.0, price=1e6)
    assert not np.any(dear == ASK)
    assert dear[1, 0, 0] == DROP  # a 50/50 pair unjudged: neither kept nor flipped
    # replayed on given votes: stops where the policy stops; votes running out leave the best decision without asking
    decided = replay(action, stop, [[], ["agree"] * 9, ["agree"], ["disagree"] * 9])
    assert decided[0] == (KEEP, 0)
    assert decided[1][0] == KEEP and 1 < decided[1][1] < 9
    assert decided[2] == (int(stop[2, 1, 0]), 1)
    assert decided[3][0] == FLIP and decided[3][1] >= 2


def test_a_judging_mode_with_n3_asks_three_choices_a_request_on_the_same_world():
    import curation_quality as cq

    n3 = cq.Setting(0.3, 0.8, "frozen", judging="fixed+n3")
    before = cq.Setting(0.3, 0.8, "frozen", judging="fixed")
    assert (n3.sampling, n3.choices, n3.run_name) == ("fixed", 3, "eval-fixed-n3")
    assert (before.choices, cq.Setting(0.3, 0.8, "frozen", judging="sequence").choices) == (1, 1)
    assert n3.world == before.world and cq.Setting(0.3, 0.8, "frozen", judging="sequence+n3").in_sequence


def test_the_real_judges_benchmark_runs_stage1_and_stage2_on_every_world(tmp_path, monkeypatch):
    import real_judges

    monkeypatch.setattr(real_judges, "SIZES", {"gold": 40, "pool": 60, "wild": 40})
    monkeypatch.setattr(real_judges, "RESULTS", tmp_path)
    real_judges.main(["--targets", "0.9", "--out", str(tmp_path / "work")])
    text = (tmp_path / "real_judges.md").read_text()
    assert "## Stage 1" in text and "## Stage 2" in text
    stage2 = text.split("## Stage 2")[1]
    assert stage2.count("| useless |") == 2 and stage2.count("| real-like |") == 2  # each order, one target
    assert (
        "| useless | auto | 0.900 |" in stage2 and "none is reachable" in stage2
    )  # a useless judge publishes nothing


def test_the_oracle_frontier_is_the_same_evidence_calibrated_on_the_truth(tmp_path):
    """The harness's reference row: the same verdicts and RM logits, weighed by a fit on the truth; every rule's
    retention is then a share of what the oracle retains at the rule's own precision."""
    import curation_quality as cq
    import pyarrow as pa

    from synpref.io.layout import Stage2Layout
    from synpref.io.storage import write_parquet

    run = Stage2Layout(tmp_path / "run")
    correct = {f"p{i}": i % 3 != 0 for i in range(30)}  # a third of the labels wrong
    rows = [  # "good" is always right; "coin" says agree on everything (worthless)
        {"pair_id": p, "annotator": a, "verdict": v}
        for p, ok in correct.items()
        for a, v in (("good", "agree" if ok else "disagree"), ("coin", "agree"))
    ]
    shard = run.shard("shard-0")
    for a in ("good", "coin"):
        write_parquet(pa.Table.from_pylist([r for r in rows if r["annotator"] == a]), shard.samples(a))
    write_parquet(pa.Table.from_pylist([{"pair_id": p, "logit_best": 0.0} for p in correct]), shard.scores)
    frontier = cq.oracle_frontier(run, ["shard-0"], correct)
    assert frontier[0] == (1.0, 1.0)  # the good judge's agreed pairs first: all right, all kept
    assert cq.oracle_retention(frontier, 0.99) == 1.0 and cq.oracle_retention(frontier, None) is None
    results = [
        {"method": "reliability (default)", "kept_accuracy": 1.0, "retention": 0.5},
        {"method": "cleanlab", "kept_accuracy": 0.7, "retention": 0.9},
    ]
    oracle = cq._against_oracle(results, {"setting": "s"}, frontier)
    assert [r["vs_oracle"] for r in results] == [0.5, 0.9] and oracle[0]["retention"] == 1.0
