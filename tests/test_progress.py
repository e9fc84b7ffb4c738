"""Progress lines: a user watching a task log can tell slow work from a hang."""

import logging
import re

import pytest

from synpref.progress import Progress, shard_position

ELAPSED = re.compile(r", ([\d,.]+) s(?: done)?$")


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


def test_embedding_on_a_slow_cpu_reports_progress_at_least_every_30_seconds(caplog, monkeypatch):
    """A SIMULATED slow encoder (0.15 s a text, on a fake clock: no wall time in a test): the embedding step's
    progress lines never leave 30 s without a new one while it works."""
    import numpy as np

    from synpref import progress
    from synpref.models import embedding

    clock = [0.0]

    class SlowEncoder:
        def encode(self, chunk, **kwargs):
            clock[0] += 0.15 * len(chunk)
            return np.ones((len(chunk), 4), dtype=np.float32)

    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(embedding, "_model", lambda *a: SlowEncoder())
    caplog.set_level(logging.INFO, logger="synpref")
    embedding.embed_texts([f"text {i} " * (i % 7 + 1) for i in range(2000)], device="cpu", bf16=False)
    elapsed = [float(m.group(1).replace(",", "")) for r in caplog.records if (m := ELAPSED.search(r.getMessage()))]
    assert len(elapsed) > 10 and elapsed[-1] == pytest.approx(0.15 * 2000, abs=1)  # the last line: done
    assert max(np.diff([0.0, *elapsed])) <= 30.0  # never 30 s without a new line
