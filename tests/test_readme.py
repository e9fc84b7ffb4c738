"""The hand-run walk-through of docs/getting-started.md runs as written (from a scratch copy of the repository
root)."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the README walk-through

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def walkthrough() -> str:
    text = (REPO / "docs" / "getting-started.md").read_text()
    section = text[text.index("## Run one step by hand") :]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_walkthrough_uses_only_shipped_files():
    script = walkthrough()
    for path in re.findall(r"examples/[\w.]+", script):
        assert (REPO / path).exists(), path


@pytest.mark.skipif(sys.platform != "linux", reason="bash walk-through")
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    work = tmp_path / "clone"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    script = walkthrough().replace("source scripts/env.sh", f"source {REPO}/scripts/env.sh")  # run from a clone
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1500,
        # the README's port may be taken on a shared test machine: the walk-through takes another from the env
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
            "SYNPREF_SIM_PORT": str(free_port()),
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout[done.stdout.rindex("\n{\n") :])  # the last command's JSON: the report
    assert [r["round"] for r in report["rounds"]] == ["2026-11-01", "2026-11-02"]
    assert report["stage2"]["kept"] > 0
    assert report["stage2"]["label_accuracy_vs_truth"]["kept"] > report["stage2"]["label_accuracy_vs_truth"]["input"]
    assert report["html"].endswith("report/index.html")
    rm_benchmarks = json.loads((work / "data/rounds/2026-11-02/steps/rm_benchmarks.json").read_text())
    assert rm_benchmarks["benchmarks"]["rm_benchmark"]["pairs"] == 20
    manifest = json.loads((work / "data/stage2/manual/manifest.json").read_text())
    assert set(manifest["downstream"]["benchmarks"]["rm_benchmark"]) == {"curated", "raw", "difference"}
