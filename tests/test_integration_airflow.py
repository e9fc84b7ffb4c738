"""Scheduler-driven integration suite: a real Airflow (api-server, scheduler, dag-processor, LocalExecutor,
PostgreSQL) on loopback, driven through REST API v2 and `airflow backfill create`, with storage on
`file://` and on S3 (moto server speaking the S3 wire protocol), SIMULATED judges over HTTP
(tests/local_deployment.py), and stage 2 with batch-mode annotators waiting deferred in the triggerer. The humans
in the loop are in test_integration_humans.py.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from local_deployment import (
    ARTIFACTS,
    BUCKET,
    ROUND_CONF,
    curated,
    local_deployment,
    local_stage2,
    manifest,
    prepare,
)

from airflow_cluster import CHROMIUM_ARGS, TERMINAL, AirflowCluster, chromium_page, curation_listing

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with local_deployment(tmp_path_factory.mktemp("deployment")) as world:
        yield world


def s3_manifest(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _check_stage2(s2: dict, out: Path, truth) -> None:
    from synpref.simulation.evaluation import accuracy_report

    counts = s2["counts"]
    assert counts["input"] == 300
    assert counts["input"] == sum(
        counts[k] for k in ("kept", "recycled", "dropped", "quarantined", "duplicates", "contaminated")
    )
    acc = accuracy_report(out, truth)
    assert acc["kept"] > acc["input"]


def test_nightly_schedule_runs_last_nights_round_and_stage2_follows(deployment):
    """Unpausing the nightly DAG runs last night's round (catchup=False) on SYNPREF_ROOT with the DAG's defaults;
    the round's Asset event schedules stage 2, which curates with that round."""
    c, roots = deployment["cluster"], deployment["roots"]
    c.unpause("synpref_prepare")
    prepare(c, f"file://{roots['F']}", "2026-10-01T00:00:00Z")
    prepare(c, f"file://{roots['B']}", "2026-10-02T00:00:00Z")  # the nightly root, before the schedule starts
    c.unpause("synpref_stage2")
    c.unpause("synpref_stage1")
    deadline = time.time() + 60
    while (
        not (scheduled := [r for r in c.runs("synpref_stage1") if r["run_type"] == "scheduled"])
        and time.time() < deadline
    ):
        time.sleep(2)
    assert len(scheduled) == 1, c.runs("synpref_stage1")
    c.wait_run("synpref_stage1", scheduled[0]["dag_run_id"])
    nightly = datetime.fromisoformat(scheduled[0]["logical_date"]).strftime("%Y-%m-%d")
    m = manifest(roots["B"] / "rounds" / nightly / "manifest.json")
    assert m["previous_round"] == "0000-seed"
    assert m["params"]["rm_mode"] == "frozen"  # SYNPREF_RM_MODE sets the default
    s2 = curated(c, local_stage2(roots["B"]), nightly)
    (out,) = [p.parent for p in (roots["B"] / "stage2").glob("*/manifest.json")]
    _check_stage2(s2, out, deployment["truths"]["B"]["wild"])


def test_rest_triggered_round_with_conf(deployment):
    """A round triggered through REST v2 (token auth) with conf overriding params, then its asset-scheduled stage 2."""
    c, roots = deployment["cluster"], deployment["roots"]
    run_id = c.trigger("synpref_stage1", "2026-10-20T00:00:00Z", {"root": f"file://{roots['F']}", **ROUND_CONF})
    run = c.wait_run("synpref_stage1", run_id)
    assert run["run_type"] == "manual"
    assert run["conf"]["k_max"] == 4
    m = manifest(roots["F"] / "rounds" / "2026-10-20" / "manifest.json")
    assert m["previous_round"] == "0000-seed"
    assert m["summary"]["gold"] == 60
    assert m["summary"]["retrieved"] > 0
    assert m["params"]["k_max"] == 4
    assert m["params"]["samples"] == 1
    s2 = curated(c, local_stage2(roots["F"]), "2026-10-20")
    (out,) = [p.parent for p in (roots["F"] / "stage2").glob("*/manifest.json")]
    _check_stage2(s2, out, deployment["truths"]["F"]["wild"])


def test_backfill_runs_rounds_in_date_order(deployment):
    """`airflow backfill create` over 2 dates: rounds run one at a time in date order, each reading its
    predecessor's artifacts, with the mapped shard tasks of a round running side by side. (Stage 2 is paused
    meanwhile: that a round's Asset event schedules stage 2 is the nightly test's; here it would only add runs.)"""
    c, root = deployment["cluster"], deployment["roots"]["B"]
    with c.paused("synpref_stage2"):
        c.cli(
            "backfill",
            "create",
            "--dag-id",
            "synpref_stage1",
            "--from-date",
            "2026-11-01",
            "--to-date",
            "2026-11-03",
            "--reprocess-behavior",
            "failed",
            "--dag-run-conf",
            json.dumps(ROUND_CONF),
        )
        deadline = time.time() + 1200
        while time.time() < deadline:
            runs = [r for r in c.runs("synpref_stage1") if r["run_type"] == "backfill"]
            if len(runs) == 2 and all(r["state"] in ("success", "failed") for r in runs):
                break
            time.sleep(5)
        assert [r["state"] for r in runs] == ["success"] * 2, [
            c.task_logs_tail("synpref_stage1", r["dag_run_id"]) for r in runs
        ]
        runs.sort(key=lambda r: r["logical_date"])
        rounds = [datetime.fromisoformat(r["logical_date"]).strftime("%Y-%m-%d") for r in runs]
        assert rounds == ["2026-11-01", "2026-11-02"]
        # Backfill starts several runs at once; wait_for_previous_round makes each round begin (intake)
        # only after its predecessor published (publish_round ended).
        tis = {
            r["dag_run_id"]: {
                (t["task_id"], t["map_index"]): t for t in c.task_instances("synpref_stage1", r["dag_run_id"])
            }
            for r in runs
        }
        for earlier, later in zip(runs, runs[1:]):
            published = tis[earlier["dag_run_id"]][("publish_round", -1)]["end_date"]
            assert tis[later["dag_run_id"]][("human_verification_intake", -1)]["start_date"] >= published, (
                earlier,
                later,
            )
        manifests = [manifest(root / "rounds" / r / "manifest.json") for r in rounds]
        assert [m["previous_round"] for m in manifests] == ["0000-seed", "2026-11-01"]
        for prev, cur in zip(manifests, manifests[1:]):  # a round starts from its predecessor's silver
            assert cur["steps"]["intake"]["silver_in"] == prev["summary"]["silver"]
        overlaps = 0
        for r in runs:
            mapped = [
                t
                for (task_id, _), t in tis[r["dag_run_id"]].items()
                if task_id in ("generate_attributes", "embed_pool_shard")
            ]
            assert len(mapped) == 4
            assert all(t["state"] == "success" for t in mapped)  # 2 pool shards × 2 mapped steps
            for task_id in ("generate_attributes", "embed_pool_shard"):
                spans = sorted((t["start_date"], t["end_date"]) for t in mapped if t["task_id"] == task_id)
                overlaps += sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
                # short tasks on a quiet machine may not overlap in time: both handed to the executor before either
                # finished shows the same (the scheduler does not run mapped tasks one at a time)
                queued = [t.get("queued_when") for t in mapped if t["task_id"] == task_id]
                overlaps += all(queued) and max(queued) < min(end for _, end in spans)
        assert overlaps > 0, "mapped shard tasks never ran (or were never queued) side by side under LocalExecutor"


def _comparable(manifest: dict) -> dict:
    """A manifest without what names its place (URIs, roots) or its date."""
    drop = {"root", "uri", "pool_uri", "key", "created", "date", "round", "out", "run", "params"}

    def clean(x):
        if isinstance(x, dict):
            return {
                k: clean(v)
                for k, v in x.items()
                if k not in drop and not (isinstance(v, str) and ("://" in v or v.startswith("/")))
            }
        if isinstance(x, list):
            return [clean(v) for v in x if not (isinstance(v, str) and ("://" in v or v.startswith("/")))]
        return x

    return clean(manifest)


def test_s3_storage_matches_file_storage(deployment):
    """The same prepare → round → stage 2 on s3://conn@bucket (moto, S3 wire protocol) gives the file run's results."""
    c, s3, roots, s3_root = deployment["cluster"], deployment["s3"], deployment["roots"], deployment["s3_root"]
    prepare(c, s3_root, "2026-10-03T00:00:00Z")
    run_id = c.trigger("synpref_stage1", "2026-10-19T00:00:00Z", {"root": s3_root, **ROUND_CONF})
    c.wait_run("synpref_stage1", run_id)

    def s3_stage2() -> dict | None:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="root/stage2/").get("Contents", [])]
        found = [k for k in keys if k.endswith("/manifest.json") and k.count("/") == 3]
        return s3_manifest(s3, found[0]) if found else None

    s_s2 = curated(c, s3_stage2, "2026-10-19")

    f_pool, s_pool = manifest(roots["F"] / "pool" / "manifest.json"), s3_manifest(s3, "root/pool/manifest.json")
    assert s_pool["counts"] == f_pool["counts"]
    assert _comparable(s_pool) == _comparable(f_pool)
    f_round = manifest(roots["F"] / "rounds" / "2026-10-20" / "manifest.json")
    s_round = s3_manifest(s3, "root/rounds/2026-10-19/manifest.json")
    assert s_round["summary"] == f_round["summary"]
    assert s_s2["counts"] == local_stage2(roots["F"])()["counts"]


def _batch_connection(c: AirflowCluster, judges, conn_id: str, model: str, mode: str) -> None:
    """An annotator connection in the metadata DB (created, or changed, through REST v2)."""
    extra = {"model": model, "mode": mode, "timeout_s": 10, "max_concurrency": 8, "price_in_per_1k": 0.001}
    body = {"connection_id": conn_id, "conn_type": "openai", "host": judges.base_url, "password": "sk-it"}
    body["extra"] = json.dumps(extra)
    try:
        c.api("POST", "/connections", json=body)
    except RuntimeError:
        c.api("PATCH", f"/connections/{conn_id}", json=body)


def test_stage2_in_batch_mode_waits_deferred_and_writes_what_the_online_run_writes(deployment):
    """Scheduler-driven stage 2 with batch-mode annotators: the annotate task submits OpenAI batches and waits
    deferred (the triggerer polls; no worker slot held) through a batch that partly fails and one that expires;
    the same annotators online then ask nothing and write byte-identical parts from the cached answers (that a
    batch-mode re-run submits no batch is checked without Airflow, in test_stage2)."""
    from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex

    c, roots = deployment["cluster"], deployment["roots"]
    judges = SimulatedJudgeServer(  # its own judges: the stage-2 runs other tests set off ask theirs meanwhile
        TruthIndex.from_tables(*deployment["truths"]["F"].values()),
        {"good": JudgeProfile(0.9, 0.05), "ok": JudgeProfile(0.85, 0.05)},
        api_key="sk-it",
    )
    judges.start()
    try:
        _batch_mode_run(c, roots, judges)
    finally:
        judges.stop()


def _batch_mode_run(c: AirflowCluster, roots: dict, judges) -> None:
    for conn_id, model in (("synpref_batch_a", "good"), ("synpref_batch_b", "ok")):
        _batch_connection(c, judges, conn_id, model, "batch")
    judges.batches.delay_s, judges.batches.fail_share, judges.batches.fail_next = 5.0, 0.3, 1  # deferred ≥ 5 s
    judges.batches.expire_next = 1
    conf = {
        "root": f"file://{roots['F']}",
        "round": "2026-10-20",  # published by test_rest_triggered_round_with_conf
        "shard_size": 400,  # one shard; each annotator's three samples in one request (n = 3) of its batch lines
        "annotators": ["synpref_batch_a", "synpref_batch_b"],
    }
    chats = judges.counts.total()
    run_id = c.trigger("synpref_stage2", "2026-11-06T00:00:00Z", {**conf, "run_name": "batch"})
    seen, deadline = set(), time.time() + 900
    while time.time() < deadline:
        seen |= {t["state"] for t in c.task_instances("synpref_stage2", run_id) if t["task_id"] == "annotate_shard"}
        if c.api("GET", f"/dags/synpref_stage2/dagRuns/{run_id}")["state"] in TERMINAL:
            break
        time.sleep(1)
    c.wait_run("synpref_stage2", run_id)
    assert "deferred" in seen, seen
    batches = judges.batches.created
    assert batches >= 3  # more than one per annotator: what failed or expired went out again
    out = roots["F"] / "stage2"
    records = [json.loads(p.read_text()) for p in (out / "batch").rglob("batches/*.json")]
    outcomes = " ".join(s["outcome"] for r in records for s in r["submissions"])
    assert "expired" in outcomes and "server_error" in outcomes

    for conn_id, model in (("synpref_batch_a", "good"), ("synpref_batch_b", "ok")):
        _batch_connection(c, judges, conn_id, model, "online")
    c.wait_run("synpref_stage2", c.trigger("synpref_stage2", "2026-11-07T00:00:00Z", {**conf, "run_name": "online"}))
    assert judges.batches.created == batches
    answered = sum(j["request_counts"]["completed"] for j in judges.batches.jobs.values())
    assert judges.counts.total() - chats == answered  # every verdict came through a batch, none online
    parts = sorted(p.relative_to(out / "batch") for p in (out / "batch").glob("*/*.parquet"))
    assert parts and all((out / "batch" / p).read_bytes() == (out / "online" / p).read_bytes() for p in parts)
    assert "per 1,000 curated pairs" in (out / "batch" / "README.md").read_text()


FORM_SECTIONS = {
    "Storage": ["Storage root", "Unverified pool URI", "Inbox URI"],
    "Adaptive retrieval": ["k_max", "Spot-check sample"],
    "LLM annotation": [
        "Annotator connections",
        "Self-consistency samples",
        "Cross-model merge policy",
        "LLM budget (USD)",
    ],
    "Reward models": ["RM training mode", "RM backbone", "RM max tokens"],
}


def test_ui_shows_the_dag_grid_and_the_trigger_form(deployment):
    """Headless Chromium against the running api-server: the grid of synpref_stage1 after the runs above
    (screenshot saved under .artifacts/), and the trigger form listing the params by title; a run
    triggered from the form with the DAG's defaults is accepted."""
    from playwright.sync_api import sync_playwright

    c = deployment["cluster"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    runs_before = {r["dag_run_id"] for r in c.runs("synpref_stage1")}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.add_cookies([{"name": "_token", "value": c.token(), "url": c.base}])
            page = context.new_page()
            page.goto(f"{c.base}/dags/synpref_stage1", wait_until="networkidle")
            grid = page.get_by_text("merge_silver_and_review_queue")
            grid.wait_for(timeout=30000)
            page.screenshot(path=str(ARTIFACTS / "synpref_stage1_grid.png"))
            body = page.inner_text("body")
            for task_id in (
                "human_verification_intake",
                "generate_attributes",
                "adaptive_retrieval",
                "annotate",
                "publish_round",
            ):
                assert task_id in body
            assert "0 2 * * *" in body
            assert "skywork-reward-v2" in body

            page.get_by_role("button", name="Trigger").first.click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("Trigger Dag - synpref_stage1").wait_for(timeout=15000)
            for section, titles in FORM_SECTIONS.items():
                dialog.get_by_text(section, exact=True).click()
                page.wait_for_timeout(500)
                text = dialog.inner_text()
                assert all(t in text for t in titles), (section, text)
            page.screenshot(path=str(ARTIFACTS / "synpref_stage1_trigger_form.png"))
            submit = dialog.get_by_role("button", name="Trigger").last
            assert submit.is_enabled(), "the trigger form rejects the DAG's own defaults"
            submit.click()
            page.wait_for_timeout(3000)
        finally:
            browser.close()
    new = [r for r in c.runs("synpref_stage1") if r["dag_run_id"] not in runs_before and r["run_type"] == "manual"]
    assert len(new) == 1, new
    assert new[0]["conf"]["k_max"] == 8
    assert new[0]["conf"]["rm_mode"] == "frozen"
    # the form's run was accepted, which is what this test checks; a whole round with the defaults would only
    # compete for the cores with the tests after it (the nightly test ran one). It cannot be held back instead: the
    # UI unpauses a paused DAG when it triggers it. Marking it failed races with the execution API starting its first
    # tasks (a PostgreSQL deadlock, rolled back, answered 500 "Database error"): the client sends that PATCH again.
    c.api("PATCH", f"/dags/synpref_stage1/dagRuns/{new[0]['dag_run_id']}", json={"state": "failed"})


def _loaded_figures(page) -> int:
    """How many figures the page shows, after checking that every one of them decoded."""
    count = page.evaluate("document.images.length")
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    return count


def test_curation_page_lists_the_rounds_and_opens_their_reports_on_file_and_s3(deployment):
    """Headless Chromium: the plugin's Curation page (Browse → Curation) lists the rounds run above under the
    file:// and the S3 root; each one's report opens with every figure loaded (screenshots under .artifacts/);
    a DAG run's "Curation report" link leads to the report of its round."""
    import httpx

    c, roots, s3 = deployment["cluster"], deployment["roots"], deployment["s3"]
    f_rounds = sorted(p.parent.name for p in (roots["F"] / "rounds").glob("*/manifest.json"))
    s3_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="root/rounds/").get("Contents", [])]
    s3_rounds = sorted(k.split("/")[2] for k in s3_keys if k.endswith("/manifest.json") and k.count("/") == 3)
    assert f_rounds and s3_rounds
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_page(c.base, c.token()) as page:
        text = curation_listing(page, c.base, ARTIFACTS / "curation_page.png")
        assert f"file://{roots['F']}" in text
        assert deployment["s3_root"] in text
        assert all(r in text for r in f_rounds + s3_rounds)
        for index, name, label in ((1, f_rounds[-1], "file"), (2, s3_rounds[-1], "s3")):
            page.goto(f"{c.base}/curation/round?root={index}&name={name}", wait_until="load")
            assert _loaded_figures(page) >= 8, label
            assert "Reward models on gold" in page.content()
            page.screenshot(path=str(ARTIFACTS / f"curation_round_{label}.png"), full_page=True)
    f_run = next(r for r in c.runs("synpref_stage1") if (r.get("conf") or {}).get("root") == f"file://{roots['F']}")
    report = httpx.get(
        f"{c.base}/curation/dag-run/synpref_stage1/{f_run['dag_run_id']}",
        cookies={"_token": c.token()},
        follow_redirects=True,
        timeout=60,
    )
    assert report.status_code == 200
    assert 'data-figure="rm_accuracy"' in report.text
    assert "SynPref stage 1 — round" in report.text
