"""kill -9 at any point, then a re-run: the outputs are byte-identical to an uninterrupted run's
(atomic writes, manifests last, a torn cache entry is a miss)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import REPO
from synpref.io.storage import write_parquet
from synpref.simulation.synthetic import generate

pytestmark = pytest.mark.e2e  # kills real pipeline processes

SYNPREF = str(REPO / ".venv" / "bin" / "synpref")


def _files(d: Path) -> dict[str, bytes]:
    """Every output file (a killed write's hidden temporary file is not an output)."""
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _run(args: list[str], env: dict | None = None) -> None:
    done = subprocess.run([SYNPREF, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def _killed(args: list[str], after_s: float, env: dict | None = None) -> None:
    proc = subprocess.Popen([SYNPREF, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    time.sleep(after_s)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_prepare_killed_at_any_point_then_rerun_is_byte_identical(tmp_path):
    raw = tmp_path / "raw"
    pairs, _ = generate(4000, seed=21, noise=0.2)
    for i in range(4):
        write_parquet(pairs.slice(i * 1000, 1000), raw / f"part-{i}.parquet")
    (raw / "junk.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{broken\n')
    args = ["prepare", "--input", str(raw), "--shard-size", "500", "--out"]
    _run([*args, str(tmp_path / "clean")])
    expected = _files(tmp_path / "clean")
    for after_s in (1.0, 2.5, 4.0):
        _killed([*args, str(tmp_path / "killed")], after_s)
        _run([*args, str(tmp_path / "killed")])
        assert _files(tmp_path / "killed") == expected, after_s


def test_annotation_killed_mid_requests_then_rerun_is_byte_identical(tmp_path, sim_server, sim_truth):
    _, pairs, _, _, _ = sim_truth
    write_parquet(pa.Table.from_pylist(pairs.to_pylist()[:100]), tmp_path / "pairs.parquet")
    annotators = [{"name": "good", "base_url": sim_server.base_url, "model": "good", "api_key_env": "SIM_KEY"}]
    (tmp_path / "annotators.json").write_text(json.dumps(annotators))
    env = {**os.environ, "SIM_KEY": "sk-test"}

    def args(out: str, cache: str) -> list[str]:
        pairs_file, ann = str(tmp_path / "pairs.parquet"), str(tmp_path / "annotators.json")
        return ["annotate", "--pairs", pairs_file, "--annotators", ann, "--out", out, "--cache", cache]

    _run(args(str(tmp_path / "clean"), str(tmp_path / "cache-clean")), env)
    for after_s in (3.0, 4.0):
        _killed(args(str(tmp_path / "killed"), str(tmp_path / "cache-killed")), after_s, env)
    entries = sorted((tmp_path / "cache-killed").rglob("*.json"))
    if entries:  # a torn entry (as a kill during a non-atomic write would leave) is only a miss
        entries[0].write_bytes(entries[0].read_bytes()[:5])
    _run(args(str(tmp_path / "killed"), str(tmp_path / "cache-killed")), env)
    for name in ("samples.parquet", "verdicts.parquet"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    _run(args(str(tmp_path / "killed"), str(tmp_path / "cache-killed")), env)  # complete: nothing is asked again
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["usage"]["good"]["requests"] == 0
