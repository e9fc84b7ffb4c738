"""Round bookkeeping of stage 1: which round a round reads, and which earlier rounds it must wait for."""
from synpref.stage1 import SEED_ROUND, begin_round, previous_round, rounds_in_progress
from synpref.storage import write_json, write_manifest


def test_a_round_reads_the_newest_published_round_and_waits_for_unpublished_earlier_ones(tmp_path):
    root = tmp_path / "root"
    write_manifest(root / "rounds" / "2026-11-01", {"round": "2026-11-01"})
    write_json({"started": True}, root / "rounds" / "2026-11-02" / "steps" / "intake.json")  # started, not published
    write_manifest(root / "rounds" / "2026-11-05", {"round": "2026-11-05"})
    write_manifest(root / "rounds" / SEED_ROUND, {"round": SEED_ROUND})

    assert previous_round(root, "2026-11-03") == "2026-11-01"
    assert rounds_in_progress(root, "2026-11-03") == ["2026-11-02"]
    assert rounds_in_progress(root, "2026-11-02") == []  # a round never waits for itself or later rounds
    assert previous_round(root, "2026-11-01") is None and rounds_in_progress(tmp_path / "empty", "2026-11-01") == []
    write_manifest(root / "rounds" / "2026-11-02", {"round": "2026-11-02"})
    assert rounds_in_progress(root, "2026-11-03") == [] and previous_round(root, "2026-11-03") == "2026-11-02"


def test_begin_round_marks_the_round_started_so_later_rounds_wait_for_it(tmp_path):
    root = tmp_path / "root"
    assert begin_round(root, "2026-11-01") == []
    assert begin_round(root, "2026-11-02") == ["2026-11-01"]  # round 1 started but has not published
    assert not (root / "rounds" / "2026-11-02").exists()  # a waiting round starts nothing
    write_manifest(root / "rounds" / "2026-11-01", {"round": "2026-11-01"})
    assert begin_round(root, "2026-11-02") == [] and (root / "rounds" / "2026-11-02" / "started.json").exists()
