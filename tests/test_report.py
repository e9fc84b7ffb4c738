"""Reports over a storage root: one row per published round, the stage-2 funnel."""

import base64
import json
import re
from pathlib import Path

import pyarrow as pa
from report_fixtures import fake_round, fake_rounds, fake_stage2

from synpref.cli import main
from synpref.io.layout import StorageLayout
from synpref.io.storage import read_parquet, write_parquet
from synpref.models.reward_model import EVAL_SCHEMA
from synpref.reporting.report import (
    all_round_reports,
    fmt,
    round_history,
    stage2_page,
    stage2_report,
    stage2_summary,
    write_round_report,
)
from synpref.schema import PAIR_SCHEMA
from synpref.simulation.synthetic import generate


def _round(store: StorageLayout, rnd: str, truth_pairs: list[dict]) -> None:
    fake_round(store, rnd, 0, gold=2)
    out = store.round(rnd)
    evals = [{"pair_id": p["pair_id"], "p": 0.9, "correct": True} for p in truth_pairs[:2]]
    write_parquet(pa.Table.from_pylist(evals, schema=EVAL_SCHEMA), out.gold_eval)
    silver = [{**p, "provenance": "llm", "round": rnd} for p in truth_pairs[2:5]] + [{**truth_pairs[5], "round": "x"}]
    write_parquet(pa.Table.from_pylist(silver, schema=PAIR_SCHEMA), out.silver)


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
    fake_stage2(StorageLayout(tmp_path), "run", shards=1, pairs_per_shard=10)
    report = stage2_report(run.dir)
    assert report["round"] == "2026-01-01"
    assert (report["input"], report["kept"], report["dropped"]) == (310, 7, 2)
    assert report["quality_estimates"]["canaries"] == 128


def test_fmt_prints_floats_to_three_places_and_missing_as_na():
    assert [fmt(0.12345), fmt(None), fmt(7)] == ["0.123", "n/a", "7"]


# --- the HTML report -----------------------------------------------------------------------------------


def _figures(page_html: str) -> list[str]:
    return re.findall(r'data-figure="([^"]+)" src="data:image/png;base64,([^"]+)"', page_html)


def test_a_round_report_has_its_figures_and_writes_them_next_to_the_manifest(tmp_path):
    store = StorageLayout(tmp_path)
    names = fake_rounds(store, 3)
    uri = write_round_report(store, names[-1])
    page = Path(uri).read_text()
    shown = dict(_figures(page))
    for name in (
        "rm_accuracy",
        "rm_accuracy_by_category",
        "rm_benchmarks",
        "sizes",
        "retrieval_k",
        "judges",
        "judges_over_rounds",
        "tokens",
        "cost",
    ):
        assert base64.b64decode(shown[name]).startswith(b"\x89PNG")
        assert (store.round(names[-1]).report_dir / f"{name}.png").exists()
    assert "fixed held-out slice" in page
    assert "Reward models on public RM benchmarks" in page and "+0.020 [-0.010, +0.050] vs earlier" in page


def test_the_fixed_held_out_slice_is_the_first_rounds_gold_validation(tmp_path):
    store = StorageLayout(tmp_path)
    fake_rounds(store, 2)
    history = round_history(store)
    first_validation = read_parquet(store.round(history[0]["round"]).gold_validation).num_rows
    assert first_validation == 40  # the split as the round's intake wrote it (every 5th pair), not recomputed
    assert history[0]["fixed"][1] == first_validation
    assert history[1]["fixed"][1] == first_validation  # the same pairs, though the gold set grew


def test_a_stage2_report_reads_shard_summaries_and_plots_the_funnel(tmp_path):
    store = StorageLayout(tmp_path)
    fake_stage2(store, "run", shards=4, pairs_per_shard=1000)
    page = stage2_page(store.stage2("run"))
    names = [f["name"] for s in page.sections for f in s.figures]
    assert names == ["funnel", "hist_p_best", "hist_p_gold", "categories", "quality"]
    bill = page.sections[-1]
    assert bill.id == "bill" and "$0.1457 per 1,000 curated pairs" in bill.note
    assert bill.table["rows"] == [
        ["judge-a", "auto", "online", "1,200", "1,200", "900,000", "0", "—", "40,000", "0.5100", "logprobs 1,200"]
    ]
    summary = stage2_summary(store.stage2("run"))
    assert sum(summary["hist"]["p_best"]["kept"]) == 4 * 700
    assert summary["categories"]["math"]["kept"] == 4 * 140


def test_re_rendering_a_report_gives_the_same_bytes(tmp_path):
    store = StorageLayout(tmp_path)
    names = fake_rounds(store, 2)
    first = Path(write_round_report(store, names[-1])).read_bytes()
    assert Path(write_round_report(store, names[-1])).read_bytes() == first


def test_the_cli_report_writes_the_html_for_the_root(tmp_path, capsys):
    store = StorageLayout(tmp_path)
    fake_rounds(store, 2)
    fake_stage2(store, "run", shards=2, pairs_per_shard=100)
    assert main(["report", "--root", str(tmp_path), "--stage2", str(store.stage2("run").dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    html = Path(out["html"]).read_text()
    assert "run_funnel" in html
    assert "rm_accuracy" in html


def test_a_perfect_accuracy_draws_its_interval_and_never_fails_the_report():
    """The Wilson interval of 4/4 ends at 0.9999999999999999: an error bar below its value must not fail the
    round's report (it did: matplotlib refuses a negative length)."""
    from synpref.models.reliability import wilson_interval
    from synpref.reporting.figures import accuracy_over_rounds

    low, high = wilson_interval(4, 4)
    assert high < 1.0
    png = accuracy_over_rounds(["r1"], {"gold RM": {"value": [1.0], "low": [low], "high": [high]}}, "accuracy")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
