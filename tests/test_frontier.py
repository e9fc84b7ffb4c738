"""The estimated precision–retention frontier, and a run whose target is unreachable publishing an empty set."""

import json

import numpy as np

from synpref.stage2.frontier import frontier, keepable


def _rows(confidences, judged=0.0):
    return [{"confidence": c, "evidence": json.dumps({"prior": 0.8, "judge_a": judged})} for c in confidences]


def test_the_most_confident_pairs_are_kept_while_their_mean_reaches_the_target():
    conf = np.array([0.99, 0.97, 0.95, 0.93, 0.91, 0.6])
    assert keepable(conf, 0.95, 0.9) == 5  # mean of the five ≥ 0.91 is 0.95
    assert keepable(conf, 0.96, 0.9) == 4  # (0.99 + 0.97 + 0.95 + 0.93) / 4
    assert keepable(conf, 0.961, 0.9) == 3
    assert keepable(conf, 0.995, 0.9) == 0
    assert keepable(np.array([0.96, 0.96, 0.9]), 0.955, 0.5) == 2  # ties are taken whole or not at all
    assert keepable(np.array([0.97, 0.93, 0.93]), 0.96, 0.5) == 1


def test_flips_count_only_where_the_judges_contradict_the_label():
    rows = _rows([0.02, 0.04], judged=-2.0) + _rows([0.03])  # the last: no judge spoke against it
    f = frontier(rows, target=0.98, min_confidence=0.9, curated=1)
    at = {p.precision: p for p in f.points}
    assert at[0.98].recycled == 1 and at[0.95].recycled == 2
    assert f.reason is None  # the run curated something


def test_an_unreachable_target_says_what_is_reachable_in_one_line():
    rows = _rows([0.93, 0.92, 0.91, 0.9, 0.86, 0.7])
    f = frontier(rows, target=0.98, min_confidence=0.9, curated=0)
    assert f.pairs == 6 and f.target == 0.98
    assert (
        f.reason
        == "0 kept at 0.98; estimated 4 at 0.90, 5 at 0.85, none at 0.95 (lower target_precision to publish them)"
    )
    assert "\n" not in f.reason


def test_nothing_reachable_anywhere_says_so():
    f = frontier(_rows([0.5] * 10), target=0.98, min_confidence=0.9, curated=0)
    assert all(p.kept == p.recycled == 0 for p in f.points)
    assert f.reason.startswith("0 kept or flipped at the target precision 0.98, and none is reachable at 0.75")


def test_a_run_whose_target_is_unreachable_completes_with_the_frontier_and_the_reason(tmp_path, capsys):
    """RMs at chance (weight 0 on gold) and no judge: every posterior is the prior, nothing reaches 0.98. The run
    publishes an empty curated set, its manifest and dataset card carry the frontier, and the CLI says why in one
    line and exits 0."""
    from synpref.cli import main
    from synpref.io.layout import StorageLayout
    from synpref.io.storage import write_json, write_parquet
    from synpref.models.reward_model import RMConfig, train_reward_model
    from synpref.simulation.synthetic import generate

    store = StorageLayout(tmp_path / "root")
    gold, _ = generate(30, seed=5)
    rows = gold.to_pylist()
    rnd = store.round("2026-11-01")
    write_parquet(gold, rnd.gold)
    cfg = RMConfig(mode="frozen", head_epochs=3)
    train_reward_model(rows[:20], rows[20:], cfg, rnd.best_rm)
    train_reward_model(rows[:20], rows[20:], cfg, rnd.gold_rm)
    write_json({"joint_weights": {"best": 0.0, "gold": 0.0}}, rnd.calibration)  # both RMs at chance on gold
    write_json({"round": "2026-11-01"}, rnd.manifest)
    wild, _ = generate(80, seed=6, noise=0.3)
    write_parquet(wild, tmp_path / "wild.parquet")
    out = tmp_path / "out"
    args = ["stage2", "--root", str(store.root), "--out", str(out), "--input", str(tmp_path / "wild.parquet")]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("synpref")]
    assert warnings == [
        "synpref stage2: warning: 0 kept or flipped at the target precision 0.98, and none is reachable at 0.75 "
        "either: the judges and reward models give too little evidence on these pairs"
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == manifest["counts"]["recycled"] == 0
    assert manifest["frontier"]["pairs"] == 80 and manifest["frontier"]["reason"] == warnings[0].split(": ", 2)[2]
    report = (out / "report" / "index.html").read_text()
    assert "Estimated precision–retention frontier" in report and "none is reachable at 0.75" in report
    card = (out / "README.md").read_text()
    assert "estimated precision–retention frontier" in card and "| 0.90 | 0 | 0 |" in card


def _rule(**kw):
    from synpref.stage2.consistency import ReliabilityRule

    return ReliabilityRule(rm_weights={}, **{"prior": 0.7, **kw})


def test_a_target_that_retains_too_little_falls_back_to_the_highest_precision_that_does():
    """20 pairs, prior 0.7 → 14 right labels expected. At 0.98 only one pair is kept (0.99: 7% of 14); at 0.95
    the five ≥ 0.93 are (mean 0.954, 4.8 right: 34%), so a 30% retention falls back to 0.95, not to 0.90."""
    conf = np.array([0.99, 0.96, 0.95, 0.94, 0.93] + [0.91] * 5 + [0.5] * 10)
    rule = _rule(target_retention=0.3)
    assert rule.operating_point(conf) == 0.95
    fitted = rule.model_copy(update={"operating_precision": 0.95})
    assert fitted.threshold(list(conf)) == 0.93 and fitted.summary()["operating_precision"] == 0.95
    assert _rule(target_retention=0.0).operating_point(conf) is None  # no fallback asked for: the target holds
    assert _rule(target_retention=0.3, target_precision=0.9).operating_point(conf) is None  # the target retains it


def test_the_fallback_never_goes_below_its_floor_and_a_useless_shard_stays_empty():
    conf = np.array([0.92] * 3 + [0.6] * 17)  # 0.92 × 3 = 2.8 of 0.7 × 20 = 14: 20% retention at best
    assert _rule(target_retention=0.3).operating_point(conf) is None
    assert _rule(target_retention=0.3).threshold(list(conf)) == 0.98  # nothing reaches the target: none kept
    assert _rule(target_retention=0.3, precision_floor=0.75).operating_point(conf) is None  # 0.6s cannot help
    assert _rule(target_retention=0.1).operating_point(conf) == 0.9
    assert _rule(target_retention=0.3, prior=0.5).operating_point(np.full(20, 0.5)) is None


def test_a_fallback_is_one_line_naming_the_shards_and_the_precision():
    from synpref.stage2.frontier import fallback_line

    assert fallback_line([0.98, 0.98], 0.98, 0.3) is None
    assert fallback_line([0.95, 0.98, 0.9], 0.98, 0.3) == (
        "2 of 3 shards kept at an estimated precision of 0.90–0.95, not the target 0.98: at the target they would "
        "hold less than 30% of their estimated right labels (target_retention)"
    )


def test_the_canaries_check_the_precision_the_posteriors_claim():
    from synpref.records import Interval
    from synpref.stage2.frontier import posterior_check

    assert posterior_check(None, Interval(estimate=0.9, ci_low=0.8, ci_high=0.95)) is None
    assert posterior_check(0.97, None) is None
    inside = posterior_check(0.93, Interval(estimate=0.9, ci_low=0.8, ci_high=0.95))
    assert inside.endswith("inside their interval") and "0.930" in inside
    over = posterior_check(0.99, Interval(estimate=0.85, ci_low=0.75, ci_high=0.92))
    assert "err together" in over and "trust the canaries" in over
    assert "conservative" in posterior_check(0.7, Interval(estimate=0.95, ci_low=0.9, ci_high=0.99))
