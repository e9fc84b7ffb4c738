"""``backend: replay``: recorded judgments (both candidate orders) as a judge, measured on gold like any other."""

import json
import random

import pytest

from synpref.llm.annotation import judge
from synpref.llm.client import AnnotatorConfig, AnnotatorError
from synpref.models.reliability import judge_reliability
from synpref.settings import AnnotateSettings
from synpref.simulation.synthetic import generate


def _recording(rows: list[dict], accuracy: float, seed: int) -> tuple[list[dict], dict]:
    """An order-sensitive judge's verdicts on every pair in both orders (each order right with ``accuracy`` on its
    own), as a team would have recorded them; → (rows, {(pair_id, chosen shown first): right})."""
    rng = random.Random(seed)
    out, right = [], {}
    for r in rows:
        for chosen_first in (True, False):
            ok = rng.random() < accuracy
            a, b = (r["chosen"], r["rejected"]) if chosen_first else (r["rejected"], r["chosen"])
            better_is_a = ok == chosen_first
            out.append(
                {"prompt": r["conversation"], "response_a": a, "response_b": b, "verdict": "A" if better_is_a else "B"}
            )
            right[(r["pair_id"], chosen_first)] = ok
    return out, right


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_recorded_verdicts_in_both_orders_are_measured_on_gold_like_any_judge(tmp_path):
    gold, _ = generate(80, seed=21, with_attributes=True)
    rows = gold.to_pylist()
    recorded, right = _recording(rows, 0.75, seed=1)
    cfg = AnnotatorConfig(
        name="gpt4_recorded",
        base_url=_write_jsonl(tmp_path / "v.jsonl", recorded),
        model="gpt-4",
        backend="replay",
        samples=1,
    )
    samples, usage = judge(rows, {}, cfg, tmp_path / "cache", AnnotateSettings(sampling="fixed"))
    assert usage["gpt4_recorded"]["errors"] == 0
    table = samples.to_pylist()
    assert {s["verdict"] for s in table} <= {"agree", "disagree"}  # every pair found, in the order it was shown
    expected = [right[(s["pair_id"], not s["swapped"])] for s in table]
    assert any(s["swapped"] for s in table) and not all(s["swapped"] for s in table)  # both orders were asked
    assert [s["verdict"] == "agree" for s in table] == expected
    measured = judge_reliability(samples)["annotators"]["gpt4_recorded"]
    assert measured["accuracy"] == pytest.approx(sum(expected) / len(expected))


def test_reward_model_scores_replay_in_either_order_and_a_tie_or_a_missing_pair_abstains(tmp_path):
    gold, _ = generate(6, seed=22, with_attributes=True)
    rows = gold.to_pylist()
    recorded = [  # one order only, as a reward model's scores (order-invariant): mirrored for the other order
        {
            "prompt": r["conversation"],
            "response_a": r["chosen"],
            "response_b": r["rejected"],
            "score_a": 2.0,
            "score_b": 1.0,
        }
        for r in rows[:4]
    ]
    recorded.append(
        {
            "prompt": rows[4]["conversation"],
            "response_a": rows[4]["chosen"],
            "response_b": rows[4]["rejected"],
            "verdict": "tie",
        }
    )
    cfg = AnnotatorConfig(
        name="rm", base_url=_write_jsonl(tmp_path / "rm.jsonl", recorded), model="rm", backend="replay"
    )  # three samples a request: a deterministic judge gives three equal ones
    samples, _ = judge(rows, {}, cfg, tmp_path / "cache", AnnotateSettings(sampling="fixed"))
    by_pair = {}
    for s in samples.to_pylist():
        by_pair.setdefault(s["pair_id"], set()).add((s["verdict"], s["reason"]))
    assert [by_pair[r["pair_id"]] for r in rows[:4]] == [{("agree", "ok")}] * 4
    assert by_pair[rows[4]["pair_id"]] == {("abstain", "no_verdict")}  # a tie is no verdict, never a coin flip
    assert by_pair[rows[5]["pair_id"]] == {("abstain", "no_verdict")}  # not recorded


def test_a_recording_without_a_usable_row_is_one_line(tmp_path):
    cfg = AnnotatorConfig(
        name="empty", base_url=_write_jsonl(tmp_path / "e.jsonl", [{"prompt": "x"}]), model="m", backend="replay"
    )
    with pytest.raises(AnnotatorError, match="no usable row in the replay recording"):
        judge(generate(2, seed=1)[0].to_pylist(), {}, cfg, None)
    missing = cfg.model_copy(update={"base_url": str(tmp_path / "nope.jsonl")})
    with pytest.raises(AnnotatorError, match="replay recording not found"):
        judge(generate(2, seed=1)[0].to_pylist(), {}, missing, None)
