"""Progress lines: a user watching a task log can tell slow work from a hang."""

import logging

from synpref.progress import Progress, shard_position


def test_progress_logs_counts_and_rates_and_a_final_line(caplog):
    caplog.set_level(logging.INFO, logger="synpref")
    with Progress("scoring shard-00001", 300, "pairs", every_s=0.0) as p:
        p.update(100)
        p.update(200)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "scoring shard-00001: 300 pairs to do"
    assert "100/300 pairs (33%)" in lines[1]
    assert "pairs/s" in lines[1]
    assert lines[-1].startswith("scoring shard-00001: 300/300 pairs (100%)")
    assert lines[-1].endswith("done")


def test_a_mapped_task_says_which_shard_of_how_many():
    names = [f"shard-{i:05d}.parquet" for i in range(12)]
    assert shard_position("shard-00003", names) == "shard-00003 (4 of 12)"
    assert shard_position("shard-00099.parquet", names) == "shard-00099"
