"""A whole deployment for the scheduler-driven suites: PostgreSQL, Airflow (LocalExecutor) on loopback, an S3
endpoint (moto, the S3 wire protocol), SIMULATED judges over HTTP and, where asked, a real Label Studio server.
Each integration module starts its own (the modules run side by side under pytest-xdist, one per worker).

Storage roots: F (REST-triggered round), B (nightly root = SYNPREF_ROOT: the scheduled round and the
backfill), L (the humans-in-the-loop rounds), S3 (the same data as F, uploaded to the bucket).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

from airflow_cluster import REPO, AirflowCluster, ensure_services, free_port
from conftest import write_synthetic_sets

S3_CONN, BUCKET = "synpref_s3", "synpref-it"
ROUND_CONF = {"rm_mode": "frozen", "k_max": 4, "samples": 1, "max_examples": 4, "spot_check": 5}
DATASETS = {
    "gold": (60, 11, 0.0, True, "seed/gold.parquet"),
    "silver": (200, 12, 0.2, True, "seed/silver.parquet"),
    "pool": (300, 13, 0.3, False, "raw/pool.parquet"),  # two shards of 150: enough for mapped tasks to overlap
    "wild": (300, 14, 0.3, False, "wild/wild.parquet"),
}
ARTIFACTS = Path(os.environ.get("SYNPREF_TEST_ARTIFACTS", REPO / ".artifacts"))


@contextmanager
def local_deployment(d: Path, label_studio: bool = False, schedules: bool = True) -> Iterator[dict]:
    """Everything a deployment has, in ``d``; torn down even on failure. ``schedules``: the nightly round and the
    asset-triggered stage 2 on (the DAGs paused, as a new deployment's are); else triggered runs only, the DAGs
    unpaused."""
    from moto.server import ThreadedMotoServer

    from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex

    ensure_services()
    roots = {"F": d / "root-f", "B": d / "root-b", "L": d / "root-l", "S3_local": d / "root-s3-upload"}
    truths = {k: write_synthetic_sets(roots[k], DATASETS) for k in ("F", "B", "L")}  # the same bytes in every root
    write_synthetic_sets(roots["S3_local"], DATASETS)

    s3_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port)
    moto.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="it-key",
        aws_secret_access_key="it-secret",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    for f in roots["S3_local"].rglob("*.parquet"):
        s3.upload_file(str(f), BUCKET, f"root/{f.relative_to(roots['S3_local'])}")

    judges = SimulatedJudgeServer(
        TruthIndex.from_tables(*truths["F"].values()),
        {"good": JudgeProfile(0.9, 0.05), "ok": JudgeProfile(0.85, 0.05), "meh": JudgeProfile(0.8, 0.05)},
        api_key="sk-it",
    )  # no injected faults: a fault depends on the attempt, so the file and S3 runs would differ
    judges.start()
    services = {"judges": judges.stop, "moto": moto.stop}
    s3_root = f"s3://{S3_CONN}@{BUCKET}/root"
    env = {
        "SYNPREF_ROOT": f"file://{roots['B']}",
        "SYNPREF_REPORT_ROOTS": f"file://{roots['F']},{s3_root}",  # the Curation page: B, F, S3
        "SYNPREF_TASK_RETRIES": "0",
        "SYNPREF_STAGE2_SCHEDULE": "asset" if schedules else "",
        **({} if schedules else {"SYNPREF_STAGE1_SCHEDULE": ""}),
        "SYNPREF_RM_MODE": "frozen",
        "SYNPREF_SENSOR_POKE_S": "10",
        "SYNPREF_BATCH_POLL_S": "2",  # the triggerer polls a judging batch every 2 s (60 s by default)
        f"AIRFLOW_CONN_{S3_CONN.upper()}": json.dumps(
            {
                "conn_type": "aws",
                "login": "it-key",
                "password": "it-secret",
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        ),
        **{
            f"AIRFLOW_CONN_SYNPREF_JUDGE_{letter}": json.dumps(
                {
                    "conn_type": "openai",
                    "host": judges.base_url,
                    "password": "sk-it",
                    "extra": {"model": model, "timeout_s": 10, "max_concurrency": 8},
                }
            )
            for letter, model in zip("ABC", ("good", "ok", "meh"))
        },
    }
    cluster, server = None, None
    try:
        if label_studio:
            from labelstudio_server import LabelStudioServer

            server = LabelStudioServer(d / "label-studio").start()
            services["label_studio"] = server.stop
            env["AIRFLOW_CONN_SYNPREF_LABEL_STUDIO"] = json.dumps(
                {"conn_type": "http", "host": server.url, "password": server.token}
            )
        cluster = AirflowCluster(d / "airflow", env)
        cluster.start()
        dag_ids = ["synpref_prepare", "synpref_stage1", "synpref_stage2"]
        cluster.wait_for_dags(dag_ids)
        if not schedules:
            for dag_id in dag_ids:
                cluster.unpause(dag_id)
        yield {
            "cluster": cluster,
            "roots": roots,
            "truths": truths,
            "s3": s3,
            "judges": judges,
            "label_studio": server,
            "s3_root": s3_root,
        }
    finally:
        if cluster is not None:
            cluster.stop()
        for stop in services.values():
            stop()


def manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def asset_runs(cluster: AirflowCluster) -> list[dict]:
    return [r for r in cluster.runs("synpref_stage2") if r["run_type"] == "asset_triggered"]


def curated(cluster: AirflowCluster, read_manifest, rnd: str, timeout: float = 900) -> dict:
    """Wait until no asset-triggered stage-2 run is queued or running (none failed) and the stage-2
    manifest that ``read_manifest()`` returns was curated with round ``rnd``; return it."""
    deadline, found = time.time() + timeout, None
    while time.time() < deadline:
        runs = asset_runs(cluster)
        failed = [r for r in runs if r["state"] == "failed"]
        assert not failed, "\n".join(cluster.task_logs_tail("synpref_stage2", r["dag_run_id"]) for r in failed)
        if runs and all(r["state"] == "success" for r in runs):
            found = read_manifest()
            if found and found["round"] == rnd:
                return found
        time.sleep(5)
    raise TimeoutError(f"no stage-2 manifest for round {rnd} (last: {found}); runs: {cluster.runs('synpref_stage2')}")


def local_stage2(root: Path):
    def read() -> dict | None:
        found = sorted((root / "stage2").glob("*/manifest.json"))
        return manifest(found[0]) if found else None

    return read


def prepare(cluster: AirflowCluster, root: str, logical_date: str) -> None:
    run_id = cluster.trigger("synpref_prepare", logical_date, {"root": root, "shard_size": 150})
    cluster.wait_run("synpref_prepare", run_id)
