import json
import re
from pathlib import Path

import pytest

from synpref.schema import compute_pair_id
from synpref.simulation.synthetic import generate
from synpref.stage1.gold import build_gold, is_validation, label_studio_tasks, read_inbox

REPO = Path(__file__).resolve().parent.parent


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
    assert len(intake.verifications) == 5  # one without attributes: kept, its attributes generated at intake
    assert [v["attributes_status"] for v in intake.verifications].count(None) == 1
    reasons = [q["reason"] for q in intake.quarantine]
    assert any("human_label must be" in r for r in reasons)
    assert any("invalid JSON" in r for r in reasons)
    parts = build_gold([{**v, "round": "r1"} for v in intake.verifications[:4]])
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


# --- bad inbox content: quarantined with a reason, never an aborted round -----------------------------


def _task(row: dict, **override) -> dict:
    task = _ls_export([row], ["chosen"], ["2026-01-01T10:00"])[0]
    task.update(override)
    return task


def _inbox_cases(row: dict) -> dict[str, tuple[str, bytes, int]]:
    """name → (file name, bytes, expected quarantine rows); each file also holds nothing good."""
    ok = _task(row)
    result = ok["annotations"][0]["result"]
    return {
        "annotations_not_list": ("a.json", json.dumps([_task(row, annotations={"x": 1})]).encode(), 1),
        "annotation_not_object": ("a.json", json.dumps([_task(row, annotations=["done"])]).encode(), 1),
        "result_not_list": ("a.json", json.dumps([_task(row, annotations=[{"result": {"a": 1}}])]).encode(), 1),
        "result_items_not_objects": ("a.json", json.dumps([_task(row, annotations=[{"result": [1, 2]}])]).encode(), 1),
        "value_missing": (
            "a.json",
            json.dumps([_task(row, annotations=[{"result": [{"from_name": "verdict"}]}])]).encode(),
            1,
        ),
        "choices_not_list": (
            "a.json",
            json.dumps(
                [_task(row, annotations=[{"result": [{"from_name": "verdict", "value": {"choices": "chosen"}}]}])]
            ).encode(),
            1,
        ),
        "data_is_string": ("a.json", json.dumps([{**ok, "data": "pair"}]).encode(), 1),
        "no_completed_annotation": (
            "a.json",
            json.dumps([_task(row, annotations=[{"was_cancelled": True, "result": result}])]).encode(),
            1,
        ),
        "broken_parquet": ("a.parquet", b"PAR1 not really", 1),
        "non_utf8_json": ("a.json", b'[{"data": {"pair_id": "\xff\xfe"}, "annotations": []}]', 1),
        "truncated_json": ("a.json", json.dumps([ok])[:-20].encode(), 1),
        "notes_txt": ("notes.txt", b"the export is in the other folder", 1),
        "wrong_label": (
            "a.jsonl",
            json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "human_label": "maybe"}).encode(),
            1,
        ),
        "pair_id_mismatch": ("a.json", json.dumps([_task({**row, "pair_id": "0" * 32})]).encode(), 1),
        "records_not_objects": ("a.json", json.dumps(["junk", 3, None]).encode(), 3),
        "a_is_missing": ("a.json", json.dumps([{**ok, "data": {**ok["data"], "a_is": "left"}}]).encode(), 1),
    }


CASE_NAMES = list(_inbox_cases(generate(1, seed=3)[0].to_pylist()[0]))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_a_bad_inbox_file_is_quarantined_next_to_a_good_one(tmp_path, case):
    rows = generate(3, seed=3)[0].to_pylist()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.json").write_text(
        json.dumps(_ls_export(rows[1:], ["chosen", "rejected"], ["2026-01-01T10:00"] * 2))
    )
    name, data, expected = _inbox_cases(rows[0])[case]
    (inbox / name).write_bytes(data)
    intake = read_inbox(inbox)
    assert len(intake.verifications) == 2
    assert len(intake.quarantine) == expected
    assert all(q["reason"] for q in intake.quarantine)


def _verdict(row: dict, label: str, annotator: str, rnd: str = "r1", at: str = "2026-01-01T10:00") -> dict:
    return {**row, "human_label": label, "annotator": annotator, "round": rnd, "verified_at": at, "seq": 0}


def test_annotators_who_disagree_are_flagged_and_a_tie_is_undecidable():
    row = generate(1, seed=5)[0].to_pylist()[0]
    parts = build_gold([_verdict(row, "chosen", "ann"), _verdict(row, "rejected", "bob")])
    assert parts["gold"] == []
    assert "no majority" in parts["discarded"][0]["reason"]
    assert "ann: chosen" in parts["human_conflicts"][0]["resolution"]


def test_a_majority_of_annotators_decides_and_the_conflict_is_kept():
    row = generate(1, seed=5)[0].to_pylist()[0]
    history = [_verdict(row, "rejected", "ann"), _verdict(row, "rejected", "bob"), _verdict(row, "chosen", "cy")]
    parts = build_gold(history)
    assert parts["gold"][0]["chosen"] == row["rejected"]
    assert "majority: rejected" in parts["human_conflicts"][0]["resolution"]


def test_a_later_round_replaces_an_earlier_verdict_without_a_conflict():
    row = generate(1, seed=5)[0].to_pylist()[0]
    parts = build_gold([_verdict(row, "chosen", "ann", "r1"), _verdict(row, "rejected", "bob", "r2")])
    assert parts["gold"][0]["chosen"] == row["rejected"]
    assert parts["human_conflicts"] == []


def test_the_same_annotator_changing_their_mind_is_not_a_conflict():
    row = generate(1, seed=5)[0].to_pylist()[0]
    history = [_verdict(row, "chosen", "ann", at="10:00"), _verdict(row, "rejected", "ann", at="11:00")]
    parts = build_gold(history)
    assert parts["gold"][0]["chosen"] == row["rejected"]
    assert parts["human_conflicts"] == []


# --- no position bias for humans -------------------------------------------------------------------


def test_tasks_show_the_responses_in_a_seeded_order_without_saying_which_is_stored():
    rows = generate(200, seed=4)[0].to_pylist()
    tasks = label_studio_tasks(rows, seed=1)
    first = [t["data"]["a_is"] == "chosen" for t in tasks]
    assert 70 < sum(first) < 130
    assert label_studio_tasks(rows, seed=1) == tasks
    assert all("response_chosen" not in t["data"] for t in tasks)
    config = (REPO / "include/synpref/labelstudio/pairwise.xml").read_text()
    shown = re.findall(r'(?:Header value|hint)="([^"]+)"', config)
    assert not [h for h in shown if "chosen" in h or "stored" in h]
    assert "$response_a" in config


@pytest.mark.parametrize("answer", ["A", "B"])
def test_an_a_or_b_verdict_maps_back_to_the_stored_label(tmp_path, answer):
    rows = generate(40, seed=4)[0].to_pylist()
    tasks = label_studio_tasks(rows, seed=2)
    for t in tasks:
        t["annotations"] = [{"completed_by": 7, "result": [{"from_name": "verdict", "value": {"choices": [answer]}}]}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    verdicts = {v["pair_id"]: v["human_label"] for v in read_inbox(tmp_path).verifications}
    for t in tasks:
        shown_first_is_chosen = t["data"]["a_is"] == "chosen"
        expected = "chosen" if (answer == "A") == shown_first_is_chosen else "rejected"
        assert verdicts[t["data"]["pair_id"]] == expected


def test_a_verification_with_a_malformed_attribute_is_kept_and_its_attributes_are_generated(tmp_path):
    """The human verdict is what matters: an attribute outside its vocabulary is dropped, not the verification
    (intake then generates the attributes, as for one given without them)."""
    rows = generate(1, seed=3, with_attributes=True)[0].to_pylist()
    bad = {**rows[0], "preference_objectivity": "sometimes", "human_label": "chosen"}
    (tmp_path / "labels.jsonl").write_text(json.dumps(bad) + "\n")
    intake = read_inbox(tmp_path)
    assert not intake.quarantine and len(intake.verifications) == 1
    assert intake.verifications[0]["preference_objectivity"] is None
    assert intake.verifications[0]["attributes_status"] is None  # to be generated at intake
