"""The input-format examples of docs/getting-started.md stay true: each line of its ``jsonl`` block becomes one
pool pair."""

import json
import re

from conftest import REPO
from synpref.io.layout import PoolLayout
from synpref.io.preprocess import prepare
from synpref.io.storage import read_parquet


def readme_examples() -> list[str]:
    text = (REPO / "docs" / "getting-started.md").read_text()
    section = text[text.index("## What goes in: input formats") :]
    return re.search(r"```jsonl\n(.*?)```", section, re.S).group(1).strip().splitlines()


def test_every_readme_input_example_becomes_one_pair(tmp_path):
    examples = readme_examples()
    assert len(examples) == 6
    files = []
    for i, line in enumerate(examples):
        json.loads(line)  # each example is one JSON object on its line
        files.append(tmp_path / f"example-{i}.jsonl")
        files[-1].write_text(line + "\n")
    manifest = prepare([str(f) for f in files], PoolLayout(tmp_path / "pool"))
    assert manifest.counts["pool"] == len(examples) and manifest.counts["quarantined"] == 0
    pool = [r for shard in PoolLayout(tmp_path / "pool").shard_uris() for r in read_parquet(shard).to_pylist()]
    assert len(pool) == len(examples)
    attributed = [r for r in pool if r["task_category"]]
    assert len(attributed) == 1 and attributed[0]["desired_attributes"] == ["correct"]
    assert {r["conversation"][-1]["content"] for r in pool} >= {"What is 7 * 8?", "Is 91 prime?"}
