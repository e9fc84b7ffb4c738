"""Reports over a storage root: one row per published round, the stage-2 funnel."""

import pyarrow as pa

from synpref.layout import StorageLayout
from synpref.report import all_round_reports, fmt, stage2_report
from synpref.reward_model import EVAL_SCHEMA
from synpref.schema import PAIR_SCHEMA
from synpref.storage import write_json, write_parquet
from synpref.synthetic import generate

SUMMARY = {"gold": 2, "best_rm_gold_accuracy": 0.5, "gold_rm_validation_accuracy": None, "retrieved": 4}


def _round(store: StorageLayout, rnd: str, truth_pairs: list[dict]) -> None:
    out = store.round(rnd)
    evals = [{"pair_id": p["pair_id"], "p": 0.9, "correct": True} for p in truth_pairs[:2]]
    write_parquet(pa.Table.from_pylist(evals, schema=EVAL_SCHEMA), out.gold_eval)
    silver = [{**p, "provenance": "llm", "round": rnd} for p in truth_pairs[2:5]] + [{**truth_pairs[5], "round": "x"}]
    write_parquet(pa.Table.from_pylist(silver, schema=PAIR_SCHEMA), out.silver)
    summary = {**SUMMARY, "review_queue": 1, "cost_usd": 0.0}
    write_json({"previous_round": "0000-seed", "summary": summary}, out.manifest)


def test_round_reports_count_this_rounds_silver_and_grade_it_with_a_truth(tmp_path):
    store = StorageLayout(tmp_path)
    pairs, truth = generate(6, seed=2, noise=0.0)
    _round(store, "2026-11-01", pairs.to_pylist())
    store.round("2026-11-02").dir.mkdir(parents=True)  # started, not published: not reported
    reports = all_round_reports(store, truth)
    assert [r["round"] for r in reports] == ["2026-11-01"]
    assert reports[0]["silver_added"] == 3
    assert reports[0]["silver_total"] == 4
    assert reports[0]["silver_added_accuracy_vs_truth"] == 1.0


def test_stage2_report_is_the_manifest_funnel(tmp_path):
    run = StorageLayout(tmp_path).stage2("run")
    write_json({"round": "2026-11-01", "counts": {"input": 3, "kept": 2, "dropped": 1}}, run.manifest)
    assert stage2_report(run.dir) == {"round": "2026-11-01", "input": 3, "kept": 2, "dropped": 1}


def test_fmt_prints_floats_to_three_places_and_missing_as_na():
    assert [fmt(0.12345), fmt(None), fmt(7)] == ["0.123", "n/a", "7"]
