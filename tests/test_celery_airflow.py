"""Scale-out for real: the CeleryExecutor with two workers (Redis broker; PostgreSQL as metadata DB and as
result backend, ``db+postgresql+psycopg2://`` derived by Airflow from the metadata connection), storage on
S3 (moto: the workers share no disk), and a worker killed with -9 while it runs a stage-2 shard task.
Worker A serves the default queue; worker B the ``gpu`` queue (RM training and scoring,
``SYNPREF_TRAIN_QUEUE=gpu``) and the default queue.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from datetime import datetime
from pathlib import Path

import boto3
import pytest

from airflow_cluster import REPO, AirflowCluster, ensure_services, free_port
from conftest import write_synthetic_sets

pytestmark = pytest.mark.integration

S3_CONN, BUCKET = "synpref_s3", "synpref-celery"
DATASETS = {
    "gold": (60, 11, 0.0, True, "seed/gold.parquet"),
    "silver": (200, 12, 0.2, True, "seed/silver.parquet"),
    "pool": (300, 13, 0.3, False, "raw/pool.parquet"),
    "wild": (800, 14, 0.3, False, "wild/wild.parquet"),
}
ROUND_CONF = {"rm_mode": "frozen", "k_max": 4, "samples": 1, "max_examples": 4, "spot_check": 5}
STAGE2_CONF = {"shard_size": 100, "samples": 1, "max_examples": 4}  # 8 shards: twice the 4 worker slots
ARTIFACTS = Path(os.environ.get("SYNPREF_TEST_ARTIFACTS", REPO / ".artifacts"))
SHARD_TASKS = ("score_shard", "annotate_shard", "decide_shard")
WORKERS = {"worker-a": "default", "worker-b": "gpu,default"}
# detection fast enough for a test (the deployment keeps Airflow's defaults): a running task of a killed worker is
# found by its missing heartbeat; a task the killed worker had taken from the broker but not started yet is still
# "queued" (its message is unacknowledged) and is handed out again after the queued timeout. Parallelism equals the
# workers' slots, so a queued task otherwise waits seconds for a slot, never minutes.
FAST_DETECTION = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "90",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "15",
}


def _redis_up() -> None:
    if subprocess.run(["redis-cli", "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
        subprocess.run(["redis-server", "--daemonize", "yes", "--save", "", "--appendonly", "no"], check=True)
        time.sleep(1)


@pytest.fixture(scope="module")
def celery(tmp_path_factory):
    """Airflow with the CeleryExecutor and two workers, judges, moto S3; all stopped at the end, failed or not."""
    from moto.server import ThreadedMotoServer

    from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex

    ensure_services()
    _redis_up()
    d = tmp_path_factory.mktemp("celery")
    truths = write_synthetic_sets(d / "data", DATASETS)
    s3_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port)
    moto.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
    )
    s3.create_bucket(Bucket=BUCKET)
    for f in (d / "data").rglob("*.parquet"):
        s3.upload_file(str(f), BUCKET, f"root/{f.relative_to(d / 'data')}")
    judges = SimulatedJudgeServer(
        TruthIndex.from_tables(*truths.values()),
        {"good": JudgeProfile(0.9, 0.05), "ok": JudgeProfile(0.85, 0.05), "meh": JudgeProfile(0.8, 0.05)},
        api_key="sk-it",
    )
    judges.start()
    redis_db = 1 + secrets.randbelow(15)
    env = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "it_hostname.hostname",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "PYTHONPATH": f"{REPO / 'include'}:{REPO / 'tests'}",
        "SYNPREF_TRAIN_QUEUE": "gpu",
        "SYNPREF_TASK_RETRIES": "1",
        "SYNPREF_RETRY_DELAY_S": "5",
        "SYNPREF_RM_MODE": "frozen",
        "SYNPREF_STAGE1_SCHEDULE": "",  # triggered rounds only: no nightly run beside the test's
        f"AIRFLOW_CONN_{S3_CONN.upper()}": json.dumps(
            {
                "conn_type": "aws",
                "login": "k",
                "password": "s",
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        ),
        **{
            f"AIRFLOW_CONN_SYNPREF_JUDGE_{letter}": json.dumps(
                {
                    "conn_type": "openai",
                    "host": judges.base_url,
                    "password": "sk-it",
                    "extra": {"model": m, "timeout_s": 10},
                }
            )
            for letter, m in zip("ABC", ("good", "ok", "meh"))
        },
        **FAST_DETECTION,
    }
    cluster = AirflowCluster(d / "airflow", env)
    try:
        cluster.start()
        for name, queues in WORKERS.items():
            _start_worker(cluster, name, queues)
        cluster.wait_for_dags(["synpref_prepare", "synpref_stage1", "synpref_stage2"])
        for dag_id in ("synpref_prepare", "synpref_stage1", "synpref_stage2"):
            cluster.unpause(dag_id)
        yield {"cluster": cluster, "s3": s3, "judges": judges, "root": f"s3://{S3_CONN}@{BUCKET}/root"}
    finally:
        cluster.stop()
        judges.stop()
        moto.stop()
        subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], capture_output=True)


def _start_worker(cluster: AirflowCluster, name: str, queues: str) -> None:
    args = ["celery", "worker", "--queues", queues, "--celery-hostname", f"{name}@%h", "--concurrency", "2"]
    cluster.spawn(name, args, {"SYNPREF_IT_HOSTNAME": name})


def _tis(c: AirflowCluster, dag_id: str, run_id: str) -> list[dict]:
    return c.task_instances(dag_id, run_id)


def _s3_bytes(s3, prefix: str) -> dict[str, bytes]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]
    return {k[len(prefix) :]: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def _per_minute(tis: list[dict]) -> float:
    """Shard tasks finished per minute of wall time, first start to last end."""
    starts = [datetime.fromisoformat(t["start_date"]) for t in tis if t["start_date"]]
    ends = [datetime.fromisoformat(t["end_date"]) for t in tis if t["end_date"]]
    minutes = (max(ends) - min(starts)).total_seconds() / 60
    return round(len(tis) / minutes, 1) if minutes > 0 else 0.0


def _record_throughput(c: AirflowCluster, celery_run: str) -> None:
    """Stage-2 shard tasks per minute: the Celery run (two workers) vs the in-process run (one task at a time;
    its annotations come from the cache, so it is the faster of the two per task). Kept as a test artifact."""
    runs = {r["dag_run_id"]: r for r in c.runs("synpref_stage2")}
    local_run = next(r for r, v in runs.items() if (v.get("conf") or {}).get("run_name") == "local")
    figures = {}
    for label, run in (("celery_2_workers", celery_run), ("in_process_1_at_a_time", local_run)):
        shard = [t for t in _tis(c, "synpref_stage2", run) if t["task_id"] in SHARD_TASKS]
        figures[label] = {"shard_tasks": len(shard), "per_minute": _per_minute(shard)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "celery_throughput.json").write_text(json.dumps(figures, indent=2))
    print("stage-2 shard tasks per minute:", figures)


def test_work_spreads_over_the_workers_and_a_killed_worker_loses_nothing(celery):
    c, s3, judges, root = celery["cluster"], celery["s3"], celery["judges"], celery["root"]
    prepared = c.trigger("synpref_prepare", "2026-10-01T00:00:00Z", {"root": root, "shard_size": 150})
    c.wait_run("synpref_prepare", prepared)
    r1 = c.trigger("synpref_stage1", "2026-10-02T00:00:00Z", {"root": root, **ROUND_CONF})
    c.wait_run("synpref_stage1", r1)
    for ti in _tis(c, "synpref_stage1", r1):
        if ti["task_id"] in ("train_best_rm", "train_gold_rm", "evaluate_on_gold"):
            assert (ti["queue"], ti["hostname"]) == ("gpu", "worker-b"), ti

    # stage 2 over 8 shards; kill -9 worker A while it runs a decide task (no LLM request in flight)
    run_id = c.trigger("synpref_stage2", "2026-10-03T00:00:00Z", {"root": root, "run_name": "celery", **STAGE2_CONF})
    killed, deadline = None, time.time() + 900
    while killed is None and time.time() < deadline:
        for ti in _tis(c, "synpref_stage2", run_id):
            if ti["task_id"] == "decide_shard" and ti["state"] == "running" and ti["hostname"] == "worker-a":
                c.kill9("worker-a")
                killed = ti
                break
        time.sleep(0.5)
    assert killed is not None, "worker A never ran a decide task"
    run = c.wait_run("synpref_stage2", run_id, timeout=1200)
    assert run["state"] == "success"
    tis = _tis(c, "synpref_stage2", run_id)
    retried = next(t for t in tis if t["task_id"] == "decide_shard" and t["map_index"] == killed["map_index"])
    assert retried["try_number"] == 2
    assert retried["hostname"] == "worker-b"
    shard_tis = [t for t in tis if t["task_id"] in SHARD_TASKS]
    assert {t["hostname"] for t in shard_tis if t["task_id"] != "score_shard"} == {"worker-a", "worker-b"}
    assert {t["hostname"] for t in shard_tis if t["task_id"] == "score_shard"} == {"worker-b"}
    assert len([t for t in tis if t["task_id"] == "decide_shard"]) == 8
    assert judges.repeated() == 0  # no LLM request was asked twice

    # the same inputs in-process (airflow dags test, no Celery): byte-identical curated parts, same counts. The DAG
    # is paused first: `dags test` runs the tasks itself, and the live scheduler must not schedule the same run
    c.pause("synpref_stage2")
    local_conf = json.dumps({"root": root, "run_name": "local", **STAGE2_CONF})
    c.cli("dags", "test", "synpref_stage2", "2026-10-04", "-c", local_conf, timeout=1200)
    celery_out = _s3_bytes(s3, "root/stage2/celery/")
    local_out = _s3_bytes(s3, "root/stage2/local/")
    parts = [k for k in celery_out if k.split("/")[0] in ("kept", "recycled", "dropped")]
    assert parts and all(celery_out[k] == local_out[k] for k in parts)
    assert celery_out["quarantined.parquet"] == local_out["quarantined.parquet"]
    cm, lm = json.loads(celery_out["manifest.json"]), json.loads(local_out["manifest.json"])
    assert cm["counts"] == lm["counts"]
    outcomes = ("kept", "recycled", "dropped", "quarantined", "duplicates", "contaminated")
    assert cm["counts"]["input"] == sum(cm["counts"][k] for k in outcomes)
    assert judges.repeated() == 0  # the in-process run found every answer in the cache
    _record_throughput(c, run_id)

    # worker A comes back and takes work again (worker B stopped, so that only A can)
    _start_worker(c, "worker-a", WORKERS["worker-a"])
    c.kill9("worker-b")
    source = {"Bucket": BUCKET, "Key": "root/raw/pool.parquet"}
    s3.copy_object(Bucket=BUCKET, Key="again/raw/pool.parquet", CopySource=source)
    again = c.trigger("synpref_prepare", "2026-10-05T00:00:00Z", {"root": f"s3://{S3_CONN}@{BUCKET}/again"})
    c.wait_run("synpref_prepare", again)
    assert {t["hostname"] for t in _tis(c, "synpref_prepare", again)} == {"worker-a"}
