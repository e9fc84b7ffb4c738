import json

from synpref.gold import build_gold, is_validation, label_studio_tasks, read_inbox
from synpref.schema import compute_pair_id
from synpref.synthetic import generate


def _ls_export(rows, choices, times):
    tasks = label_studio_tasks(rows)
    for t, c, ts in zip(tasks, choices, times):
        t["annotations"] = [
            {
                "completed_by": 1,
                "updated_at": ts,
                "result": [{"from_name": "verdict", "type": "choices", "value": {"choices": [c]}}],
            }
        ]
    return tasks


def test_intake_of_label_studio_and_jsonl_with_supersession_and_bad_rows(tmp_path):
    rows = generate(4, seed=3)[0].to_pylist()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "ls.json").write_text(
        json.dumps(_ls_export(rows[:3], ["chosen", "rejected", "undecidable"], ["2026-01-01T10:00"] * 3))
    )
    trl = {
        "chosen": rows[0]["conversation"] + [{"role": "assistant", "content": rows[0]["chosen"]}],
        "rejected": rows[0]["conversation"] + [{"role": "assistant", "content": rows[0]["rejected"]}],
        **{
            k: rows[0][k]
            for k in (
                "task_category",
                "preference_objectivity",
                "controversiality",
                "desired_attributes",
                "annotation_guideline",
            )
        },
        "human_label": "rejected",
        "annotator": "1",
        "verified_at": "2026-01-01T12:00",
    }
    bad = {"prompt": "x", "chosen": "a", "rejected": "b", "human_label": "maybe"}
    noattr = {"prompt": "x", "chosen": "a", "rejected": "b", "human_label": "chosen"}
    (inbox / "more.jsonl").write_text("\n".join(json.dumps(r) for r in (trl, bad, noattr)) + "\n{oops\n")
    intake = read_inbox(inbox)
    assert len(intake.verifications) == 4
    reasons = [q["reason"] for q in intake.quarantine]
    assert any("human_label must be" in r for r in reasons)
    assert any("lacks preference attributes" in r for r in reasons)
    assert any("invalid JSON" in r for r in reasons)
    parts = build_gold([{**v, "round": "r1"} for v in intake.verifications])
    gold = {g["pair_id"]: g for g in parts["gold"]}
    # rows[0]: 'chosen' at 10:00 superseded by 'rejected' at 12:00 → flipped; rows[1]: flipped; rows[2]: discarded
    assert gold[rows[0]["pair_id"]]["chosen"] == rows[0]["rejected"]
    assert gold[rows[0]["pair_id"]]["flipped"]
    assert gold[rows[1]["pair_id"]]["chosen"] == rows[1]["rejected"]
    assert [d["pair_id"] for d in parts["discarded"]] == [rows[2]["pair_id"]]
    assert "undecidable" in parts["discarded"][0]["reason"]
    assert all(g["provenance"] == "human" for g in parts["gold"])


def test_gold_split_is_deterministic_and_disjoint():
    ids = [compute_pair_id([{"role": "user", "content": str(i)}], "a", "b") for i in range(2000)]
    val = [i for i in ids if is_validation(i)]
    assert val == [i for i in ids if is_validation(i)]
    assert 0.15 < len(val) / len(ids) < 0.25
