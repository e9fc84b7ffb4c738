"""End to end through Airflow (`airflow dags test`) on tiny synthetic data with SIMULATED judges over real HTTP."""

import hashlib
import json
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, conn_env, dags_test, write_synthetic_sets
from synpref.io.storage import write_parquet
from synpref.simulation.evaluation import label_accuracy
from synpref.simulation.synthetic import generate

pytestmark = pytest.mark.e2e  # runs the DAGs with `airflow dags test`


def _hashes(d: Path) -> dict:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def _ok(proc):
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if "Traceback" in line or "Error" in line or "failed" in line.lower()]
    assert proc.returncode == 0, "\n".join(errors[-30:]) + out[-2000:]
    assert "state=success" in out, "\n".join(errors[-30:]) + out[-2000:]


def test_prepare_dag_quarantines_malformed_records_and_is_idempotent(airflow_home, tmp_path):
    raw = tmp_path / "root" / "raw"
    pairs, _ = generate(500, seed=1)
    write_parquet(pairs, raw / "good.parquet")
    write_parquet(pairs.slice(0, 20), raw / "dups.parquet")
    rows = [
        '{"prompt": "hi", "chosen": "a", "rejected": "b"}',
        "{invalid json",
        '{"prompt": "hi", "rejected": "b"}',
        '{"prompt": "hi", "chosen": null, "rejected": "b"}',
        '{"prompt": ["x"], "chosen": 1, "rejected": "b"}',
        '{"prompt": "hi", "chosen": "a", "rejected": "b"}',
    ]
    (raw / "bad.jsonl").write_text("\n".join(rows) + "\n")
    (raw / "empty.jsonl").write_text("")
    root = f"file://{tmp_path / 'root'}"
    _ok(dags_test(airflow_home, "synpref_prepare", "2026-11-01", root, {"shard_size": 200}))
    pool = tmp_path / "root" / "pool"
    m = json.loads((pool / "manifest.json").read_text())["counts"]
    assert m == {"input": 527, "pool": 501, "duplicates": 21, "contaminated": 0, "quarantined": 5}
    q = pq.read_table(pool / "quarantine.parquet").to_pylist()
    assert len(q) == 5
    assert all(r["reason"] and r["source_file"] for r in q)
    assert sorted(p.name for p in pool.glob("shard-*.parquet")) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
        "shard-00002.parquet",
    ]
    before = _hashes(pool)
    _ok(dags_test(airflow_home, "synpref_prepare", "2026-11-02", root, {"shard_size": 200}))
    assert _hashes(pool) == before


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny storage root: seed gold/silver, a raw pool, an in-the-wild set, truths, and simulated judges."""
    import pyarrow as pa

    from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex

    d = tmp_path_factory.mktemp("world")
    root = d / "root"
    sets = {
        "gold": (80, 11, 0.0, True, "seed/gold.parquet"),
        "silver": (300, 12, 0.2, True, "seed/silver.parquet"),
        "pool": (600, 13, 0.3, False, "raw/pool.parquet"),
        "wild": (400, 14, 0.3, False, "wild/wild.parquet"),
    }
    truths = write_synthetic_sets(root, sets)
    server = SimulatedJudgeServer(
        TruthIndex.from_tables(*truths.values()),
        {
            "good": JudgeProfile(0.9, 0.05, 0.05),
            "ok": JudgeProfile(0.85, 0.05, 0.05),
            "meh": JudgeProfile(0.8, 0.05, 0.05),
        },
        api_key="sk-test",
    )
    server.start()
    yield {
        "root": root,
        "uri": f"file://{root}",
        "truth": pa.concat_tables(truths.values()),
        "truths": truths,
        "server": server,
    }
    server.stop()


STAGE1_CONF = {"rm_mode": "frozen", "k_max": 4, "samples": 1, "max_examples": 4, "spot_check": 5}


def test_stage1_rounds_then_stage2(world, airflow_home):
    from synpref.simulation.simulated import simulate_human_review

    env, root, uri = conn_env(world["server"]), world["root"], world["uri"]
    _ok(dags_test(airflow_home, "synpref_prepare", "2026-10-31", uri, {"shard_size": 300}))
    _ok(dags_test(airflow_home, "synpref_stage1", "2026-11-01", uri, STAGE1_CONF, env))
    r1 = root / "rounds" / "2026-11-01"
    m1 = json.loads((r1 / "manifest.json").read_text())
    assert m1["previous_round"] == "0000-seed"
    assert m1["summary"]["gold"] == 80
    assert m1["summary"]["retrieved"] > 0
    silver_added = pq.read_table(r1 / "silver.parquet").filter(
        __import__("pyarrow.compute", fromlist=["x"]).equal(pq.read_table(r1 / "silver.parquet")["provenance"], "llm")
    )
    assert label_accuracy(silver_added, world["truth"]) > 0.8  # better than the pool's 0.7
    tasks = json.loads((r1 / "review_queue" / "tasks.json").read_text())
    assert tasks
    assert tasks[0]["data"]["pair_id"]

    # the simulated humans answer round 1's queue into round 2's inbox
    simulate_human_review(r1 / "review_queue" / "tasks.json", [], root / "inbox" / "2026-11-02" / "export.json")
    truths = [world["root"].parent / f"t_{k}.parquet" for k in world["truths"]]
    for path, t in zip(truths, world["truths"].values()):
        write_parquet(t, path)
    counts = simulate_human_review(
        r1 / "review_queue" / "tasks.json",
        truths,
        root / "inbox" / "2026-11-02" / "export.json",
        accuracy=1.0,
        undecidable_rate=0.0,
    )
    _ok(dags_test(airflow_home, "synpref_stage1", "2026-11-02", uri, STAGE1_CONF, env))
    r2 = root / "rounds" / "2026-11-02"
    m2 = json.loads((r2 / "manifest.json").read_text())
    assert m2["previous_round"] == "2026-11-01"
    assert m2["steps"]["intake"]["inbox_verifications"] == counts["tasks"]
    assert m2["summary"]["gold"] > 80

    # re-running round 1 rewrites it byte-identically and leaves round 2 alone, with no new LLM requests
    before1, before2, requests = _hashes(r1), _hashes(r2), sum(world["server"].counts.values())
    _ok(dags_test(airflow_home, "synpref_stage1", "2026-11-01", uri, STAGE1_CONF, env))
    assert _hashes(r1) == before1
    assert _hashes(r2) == before2
    assert sum(world["server"].counts.values()) == requests

    # stage 2 from the newest round
    conf2 = {"shard_size": 200, "samples": 1, "max_examples": 4}
    _ok(dags_test(airflow_home, "synpref_stage2", "2026-11-03", uri, conf2, env))
    out = root / "stage2" / "2026-11-03"
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert m["round"] == "2026-11-02"
    assert c["input"] == 400
    assert (
        c["input"] == c["kept"] + c["recycled"] + c["dropped"] + c["quarantined"] + c["duplicates"] + c["contaminated"]
    )
    from synpref.simulation.evaluation import accuracy_report

    acc = accuracy_report(out, world["truths"]["wild"])
    assert acc["kept"] > acc["input"] + 0.1
    assert (out / "README.md").read_text().count(str(c["kept"])) >= 1
    before, requests = _hashes(out), sum(world["server"].counts.values())
    _ok(dags_test(airflow_home, "synpref_stage2", "2026-11-03", uri, conf2, env))
    assert _hashes(out) == before
    assert sum(world["server"].counts.values()) == requests

    # a judge whose endpoint never answers (a mistyped port) fails the run's annotate task in one line, in seconds
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    typo = json.loads(env["AIRFLOW_CONN_SYNPREF_JUDGE_A"])
    typo["host"] = refused
    proc = dags_test(
        airflow_home,
        "synpref_stage2",
        "2026-11-04",
        uri,
        conf2,
        {**env, "AIRFLOW_CONN_SYNPREF_JUDGE_A": json.dumps(typo)},
    )
    log = proc.stdout + proc.stderr
    assert f"cannot reach {refused}: connection refused" in log, log[-3000:]
    assert not (root / "stage2" / "2026-11-04" / "manifest.json").exists()

    # the export loads with datasets and trains with TRL's RewardTrainer
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from synpref.models.embedding import default_embedder

    ds = datasets.load_dataset(
        "parquet",
        data_files={"train": str(out / "kept" / "*.parquet"), "recycled": str(out / "recycled" / "*.parquet")},
    )
    assert ds["train"].num_rows == c["kept"]
    assert ds["recycled"].num_rows == c["recycled"]
    tok = AutoTokenizer.from_pretrained(default_embedder())
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    model = AutoModelForSequenceClassification.from_pretrained(default_embedder(), num_labels=1)
    train = ds["train"].select(range(16)).select_columns(["chosen", "rejected"])
    args = RewardConfig(
        output_dir=str(out.parent / "trl"),
        max_steps=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        bf16=False,
        eos_token="[SEP]",
        max_length=128,
        report_to=[],
        save_strategy="no",
    )
    result = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tok).train()
    assert result.global_step == 2


def test_scripts_ui_shows_these_runs_and_their_rounds_on_the_curation_page(world, airflow_home, tmp_path):
    """README: after the demo, ``scripts/ui.sh`` serves the Airflow UI on the Airflow home its ``airflow dags test``
    runs went to and on its storage. The runs above were made the demo's way (``dags test``, ``file://``), laid out
    as its output (``<out>/storage``): the DAG runs are listed by the REST API and Browse → Curation lists every
    round (headless Chromium, screenshot under .artifacts/)."""
    import os
    import signal
    import subprocess

    import httpx

    from airflow_cluster import chromium_page, curation_listing, free_port, wait_answering

    rounds = sorted(p.parent.name for p in (world["root"] / "rounds").glob("*/manifest.json"))
    assert len(rounds) >= 2  # made by test_stage1_rounds_then_stage2
    out = tmp_path / "demo_output"
    out.mkdir()
    (out / "storage").symlink_to(world["root"])
    port = free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(airflow_home), "SYNPREF_UI_PORT": str(port)}
    log = (tmp_path / "ui.log").open("w")
    ui = subprocess.Popen(
        [str(REPO / "scripts" / "ui.sh"), str(out)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_answering(f"{base}/api/v2/monitor/health", ui, tmp_path / "ui.log")
        password = json.loads((airflow_home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30)
        token = token.json()["access_token"]
        runs = httpx.get(
            f"{base}/api/v2/dags/synpref_stage1/dagRuns", headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).json()["dag_runs"]
        assert {r["logical_date"][:10] for r in runs} >= set(rounds)
        artifacts = REPO / ".artifacts"
        artifacts.mkdir(exist_ok=True)
        with chromium_page(base, token) as page:
            text = curation_listing(page, base, artifacts / "demo_curation_page.png")
        assert all(r in text for r in rounds), text
        assert f"file://{out / 'storage'}" in text
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
