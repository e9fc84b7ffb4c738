"""Humans in the loop, scheduler-driven (tests/local_deployment.py: a real Airflow on PostgreSQL with
LocalExecutor, a real Label Studio server, SIMULATED judges and annotators): the review queue's round trip through
Label Studio, and sign-off gates answered through REST API v2 and in the UI. Triggered runs only (no nightly round,
no asset-triggered stage 2).
"""

from __future__ import annotations

import json
import time

import pytest
from local_deployment import ARTIFACTS, ROUND_CONF, local_deployment, manifest, prepare

from airflow_cluster import AirflowCluster, chromium_page

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with local_deployment(tmp_path_factory.mktemp("humans"), label_studio=True, schedules=False) as world:
        yield world


LS_PROJECT = "synpref-it-review"


def _wait_awaiting(c: AirflowCluster, dag_id: str, run_id: str, task_id: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = {t["task_id"]: t["state"] for t in c.task_instances(dag_id, run_id)}
        if states.get(task_id) == "awaiting_input":
            # answer as a person would, not within the second: an answer that lands before the executor has
            # reported the paused process's exit is taken as a finished-but-requeued task and fails it
            # (seen with Airflow 3.3.2's LocalExecutor)
            time.sleep(15)
            return
        assert "failed" not in states.values(), c.task_logs_tail(dag_id, run_id)
        time.sleep(3)
    raise TimeoutError(f"{dag_id} {run_id}: {task_id} never asked for input")


def _answer(c: AirflowCluster, dag_id: str, run_id: str, task_id: str, option: str) -> None:
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
    c.api("PATCH", path, json={"chosen_options": [option], "params_input": {}})


def _wait_done(c: AirflowCluster, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, str]:
    """Wait for a run to end (success, or a rejection's skips); → task states."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if c.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"] in ("success", "failed"):
            return {t["task_id"]: t["state"] for t in c.task_instances(dag_id, run_id)}
        time.sleep(3)
    raise TimeoutError(f"{dag_id} {run_id} not finished")


def test_label_studio_round_trip_and_a_sign_off_approved_in_the_ui_form(deployment):
    """Round 1 pushes its review queue to a real Label Studio server; a SIMULATED annotator labels the tasks
    through its API (A/B, from the hidden truth); round 2 pulls the verdicts, which become gold in the right
    orientation and counts, and publishes only after its sign-off is approved: in headless Chromium, the round's
    required action opened in the Airflow UI and approved with its button (REST API v2 answers the next test's)."""
    from synpref.io.storage import read_parquet
    from synpref.simulation.simulated import human_answer

    c, roots, ls = deployment["cluster"], deployment["roots"], deployment["label_studio"]
    root = f"file://{roots['L']}"
    prepare(c, root, "2026-10-04T00:00:00Z")
    conf = {"root": root, "label_studio_project": LS_PROJECT, **ROUND_CONF}
    c.wait_run("synpref_stage1", c.trigger("synpref_stage1", "2026-11-01T00:00:00Z", conf))
    queue = json.loads((roots["L"] / "rounds" / "2026-11-01" / "review_queue" / "tasks.json").read_text())
    tasks = ls.tasks(LS_PROJECT)
    assert len(tasks) == len(queue) > 0
    better = {}
    for table in deployment["truths"]["L"].values():
        better.update({t["pair_id"]: t["better"] for t in table.to_pylist()})
    labelled = [t for t in tasks if t["data"]["pair_id"] in better]
    for t in labelled:
        ls.label(t["id"], human_answer(t["data"], better[t["data"]["pair_id"]], right=True))

    run_id = c.trigger("synpref_stage1", "2026-11-02T00:00:00Z", {**conf, "sign_off": True})
    _wait_awaiting(c, "synpref_stage1", run_id, "sign_off_silver")
    assert not (roots["L"] / "rounds" / "2026-11-02" / "manifest.json").exists()  # waits for the person
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_page(c.base, c.token()) as page:
        page.goto(f"{c.base}/dags/synpref_stage1/runs/{run_id}/tasks/sign_off_silver/required_actions")
        page.get_by_text("Publish the silver of round").first.wait_for(timeout=60000)
        page.screenshot(path=str(ARTIFACTS / "sign_off_form.png"), full_page=True)
        page.get_by_role("button", name="Approve").first.click()
        page.wait_for_timeout(3000)
    c.wait_run("synpref_stage1", run_id)
    m = manifest(roots["L"] / "rounds" / "2026-11-02" / "manifest.json")
    assert m["steps"]["intake"]["inbox_verifications"] == len(labelled)
    pulled = roots["L"] / "inbox" / "2026-11-02" / f"label-studio-{LS_PROJECT}.json"
    assert len(json.loads(pulled.read_text())) == len(labelled)
    gold = read_parquet(roots["L"] / "rounds" / "2026-11-02" / "gold.parquet").to_pylist()
    by_id = {g["pair_id"]: g for g in gold}
    for t in labelled:
        assert by_id[t["data"]["pair_id"]]["chosen"] == better[t["data"]["pair_id"]]


def test_a_rejected_export_publishes_nothing(deployment):
    """Stage 2 with its sign-off on: rejected through REST API v2 (the approval in the UI is the test above), the
    dataset card and manifest are not written."""
    c, roots = deployment["cluster"], deployment["roots"]
    conf = {"root": f"file://{roots['L']}", "run_name": "gated", "sign_off": True, "shard_size": 200, "samples": 1}
    run_id = c.trigger("synpref_stage2", "2026-11-05T00:00:00Z", conf)
    _wait_awaiting(c, "synpref_stage2", run_id, "sign_off_export")
    _answer(c, "synpref_stage2", run_id, "sign_off_export", "Reject")
    states = _wait_done(c, "synpref_stage2", run_id)
    out = roots["L"] / "stage2" / "gated"
    assert states["export_dataset"] == "skipped"
    assert (out / "estimates.json").exists()
    assert (out / "report" / "index.html").exists()
    assert not (out / "manifest.json").exists()
    assert not (out / "README.md").exists()
