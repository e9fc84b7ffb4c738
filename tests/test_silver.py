"""The silver set and the human review queue at the end of a round."""

import pyarrow as pa
import pytest

from synpref.llm.annotation import MERGED_SCHEMA
from synpref.simulation.synthetic import generate
from synpref.stage1.silver import merge_into_silver, review_priority


def _verdicts(pairs: list[dict], outcomes: list[tuple[str, str]]) -> pa.Table:
    rows = [{"pair_id": p["pair_id"], "verdict": v, "status": s} for p, (v, s) in zip(pairs, outcomes)]
    return pa.Table.from_pylist(rows, schema=MERGED_SCHEMA)


@pytest.fixture()
def pairs():
    table, _ = generate(10, seed=9)
    return table.to_pylist()


OUTCOMES = [
    ("agree", "annotated"),
    ("agree", "annotated"),
    ("disagree", "annotated"),
    ("abstain", "annotated"),
    ("abstain", "abstain_error"),
    ("abstain", "not_annotated_budget"),
]


def test_every_retrieved_pair_lands_in_exactly_one_place(pairs):
    silver, queue, counts = merge_into_silver([], pairs[:6], _verdicts(pairs[:6], OUTCOMES), "2026-11-01")
    assert counts["silver_agree"] == 2
    assert counts["silver_flipped"] == 1
    assert counts["queued_contested"] == 2
    assert counts["deferred_budget"] == 1
    assert len(silver) == 3
    assert len(queue) == 2


def test_disagreeing_verdicts_join_silver_flipped(pairs):
    silver, _, _ = merge_into_silver([], pairs[:6], _verdicts(pairs[:6], OUTCOMES), "2026-11-01")
    flipped = next(s for s in silver if s["pair_id"] == pairs[2]["pair_id"])
    assert flipped["chosen"] == pairs[2]["rejected"]
    assert flipped["flipped"] is True
    assert flipped["provenance"] == "llm"


def test_failed_annotations_are_queued_with_their_reason(pairs):
    _, queue, _ = merge_into_silver([], pairs[:6], _verdicts(pairs[:6], OUTCOMES), "2026-11-01")
    reasons = {q["pair_id"]: q["queue_reason"] for q in queue}
    assert reasons == {pairs[3]["pair_id"]: "contested", pairs[4]["pair_id"]: "abstain_error"}


def test_spot_checks_sample_new_silver_deterministically(pairs):
    verdicts = _verdicts(pairs, [("agree", "annotated")] * 10)
    _, q1, c1 = merge_into_silver([], pairs, verdicts, "2026-11-01", spot_check=3, seed=1)
    _, q2, _ = merge_into_silver([], pairs, verdicts, "2026-11-01", spot_check=3, seed=1)
    assert c1["queued_spot_check"] == 3
    assert [q["pair_id"] for q in q1] == [q["pair_id"] for q in q2]
    assert {q["queue_reason"] for q in q1} == {"spot_check"}


def test_new_verdicts_replace_previous_silver_rows(pairs):
    old = [{**pairs[0], "round": "old"}]
    silver, _, _ = merge_into_silver(old, pairs[:1], _verdicts(pairs[:1], [("agree", "annotated")]), "2026-11-02")
    assert [s["round"] for s in silver] == ["2026-11-02"]


def test_a_lost_pair_fails_the_merge(pairs):
    with pytest.raises(RuntimeError, match="lost pairs"):
        merge_into_silver([], pairs[:6], _verdicts(pairs[:5], OUTCOMES[:5]), "2026-11-01")


def test_humans_see_objective_low_controversy_pairs_first():
    rows = [
        {"pair_id": "c", "preference_objectivity": "subjective", "controversiality": "low"},
        {"pair_id": "b", "preference_objectivity": "objective", "controversiality": "high"},
        {"pair_id": "a", "preference_objectivity": "objective", "controversiality": "low"},
    ]
    assert [r["pair_id"] for r in sorted(rows, key=review_priority)] == ["a", "b", "c"]


def test_no_curation_adds_every_retrieved_pair_with_its_stored_label_and_asks_nothing_of_the_verdicts(pairs):
    empty = _verdicts([], [])
    silver, queue, counts = merge_into_silver([], pairs, empty, "2026-11-01", spot_check=2, retrieved_to="silver")
    assert counts["silver_as_given"] == len(pairs) == len(silver)
    assert {s["pair_id"] for s in silver} == {p["pair_id"] for p in pairs}
    by_id = {p["pair_id"]: p for p in pairs}
    assert all(s["chosen"] == by_id[s["pair_id"]]["chosen"] and s["provenance"] == "unverified" for s in silver)
    assert {q["queue_reason"] for q in queue} == {"spot_check"} and len(queue) == 2


def test_human_curation_only_queues_every_retrieved_pair_in_a_seeded_random_or_priority_order(pairs):
    empty = _verdicts([], [])
    silver, queue, counts = merge_into_silver([], pairs, empty, "2026-11-01", retrieved_to="humans")
    assert silver == [] and counts["queued_for_humans"] == len(pairs) == len(queue)
    assert {q["queue_reason"] for q in queue} == {"human_curation"}
    assert [q["pair_id"] for q in queue] == [q["pair_id"] for q in sorted(queue, key=review_priority)]
    orders = [
        [
            q["pair_id"]
            for q in merge_into_silver([], pairs, empty, "r", seed=s, retrieved_to="humans", review_order="random")[1]
        ]
        for s in (0, 0, 1)
    ]
    assert orders[0] == orders[1] != orders[2]  # seeded: the same seed, the same order
    assert sorted(orders[0]) == sorted(q["pair_id"] for q in queue)


def test_a_pair_joins_silver_only_with_a_calibrated_confidence_in_its_label(pairs):
    confidence = dict(zip([p["pair_id"] for p in pairs[:6]], [0.95, 0.7, 0.04, 0.6, 0.5, 0.9]))
    silver, queue, counts = merge_into_silver(
        [], pairs[:6], _verdicts(pairs[:6], OUTCOMES), "2026-11-01", confidence=confidence, silver_precision=0.9
    )
    assert counts == {
        "silver_agree": 1,  # 0.95
        "deferred_low_confidence": 1,  # agreed, but 0.7 is below 0.9: stays in the pool
        "silver_flipped": 1,  # 0.04: the flipped label is 0.96 right
        "queued_contested": 2,  # contested, neither label reaches 0.9
        "deferred_budget": 1,
        "queued_spot_check": 0,
        "silver_total": 2,
        "review_queue": 2,
    }
    flipped = next(r for r in silver if r["pair_id"] == pairs[2]["pair_id"])
    assert flipped["flipped"] and flipped["chosen"] == pairs[2]["rejected"]


def test_the_confidence_weighs_each_judge_by_its_probe_and_the_pool_prior_by_em():
    from synpref.models.reliability import label_confidence

    stats = {"accuracy": 0.7, "n": 60, "significant": True, "ci_low": 0.58, "ci_high": 0.8}
    judges = {"annotators": {n: {**stats, "unanimous": stats} for n in "abc"}, "shrink": 1.0}
    vote = {"agree": 1, "disagree": 0, "abstain": 0}
    against = {"agree": 0, "disagree": 1, "abstain": 0}
    verdicts = {f"p{i}": [{"annotator": n, **(vote if i % 4 else against)} for n in "abc"] for i in range(40)}
    verdicts["one"] = [{"annotator": "a", **vote}]
    confidence, prior = label_confidence(verdicts, judges)
    assert 0.7 < prior < 0.85  # three in four pairs have every judge for the label
    assert confidence["p1"] > confidence["one"] > prior  # three agreeing judges say more than one
    assert confidence["p0"] < 0.3  # three judges against a label the pool holds right 4 times in 5


def test_a_pair_no_judge_spoke_about_gets_no_confidence_however_clean_the_pool():
    from synpref.models.reliability import label_confidence

    stats = {"accuracy": 0.9, "n": 60, "significant": True, "ci_low": 0.8, "ci_high": 0.95}
    judges = {"annotators": {"a": {**stats, "unanimous": stats}}, "shrink": 1.0}
    verdicts = {f"p{i}": [{"annotator": "a", "agree": 1, "disagree": 0, "abstain": 0}] for i in range(40)}
    verdicts["silent"] = [{"annotator": "a", "agree": 0, "disagree": 0, "abstain": 1}]
    confidence, prior = label_confidence(verdicts, judges)
    assert prior > 0.9 and "silent" not in confidence  # it goes to the review queue as contested, not into silver
