"""The Curation plugin's FastAPI app, in process (the scheduler-driven suite opens it in Chromium)."""

import sys

import pytest
from fastapi.testclient import TestClient
from report_fixtures import fake_rounds, fake_stage2

from airflow_cluster import REPO
from synpref.io.layout import StorageLayout

sys.path.insert(0, str(REPO / "plugins"))
import synpref_curation as plugin  # noqa: E402


@pytest.fixture()
def client(tmp_path, monkeypatch):
    a, b = StorageLayout(tmp_path / "a"), StorageLayout(tmp_path / "b")
    fake_rounds(a, 25)
    fake_stage2(a, "run-1", shards=2, pairs_per_shard=100)
    fake_rounds(b, 1)
    monkeypatch.setenv("SYNPREF_ROOT", f"file://{tmp_path / 'a'}")
    monkeypatch.setenv("SYNPREF_REPORT_ROOTS", f"file://{tmp_path / 'b'},file://{tmp_path / 'a'}")
    plugin.app.dependency_overrides[plugin.get_user] = lambda: None
    monkeypatch.setattr(plugin, "may_read_runs", lambda user, dag_id: True)  # the auth manager's answer
    yield TestClient(plugin.app)
    plugin.app.dependency_overrides.clear()


def test_roots_come_from_the_environment_without_repeats(client, tmp_path):
    assert plugin.report_roots() == [f"file://{tmp_path / 'a'}", f"file://{tmp_path / 'b'}"]


def test_the_index_lists_rounds_and_runs_of_every_root_paginated(client):
    page = client.get("/").text
    assert "Stage-1 rounds (25)" in page
    assert "Stage-2 runs (1)" in page
    assert "Stage-1 rounds (1)" in page
    assert "best RM on RM benchmarks" in page and "rewardbench 0." in page and "(+0.020)" in page
    assert page.count("round?root=0&amp;name=") == plugin.PER_PAGE
    second = client.get("/", params={"rounds_page": 2}).text
    assert second.count("round?root=0&amp;name=") == 25 - plugin.PER_PAGE


def test_a_report_is_rendered_on_demand_and_served_from_the_written_file(client, tmp_path):
    page = client.get("/round", params={"root": 0, "name": "2026-01-25"})
    assert page.status_code == 200
    assert 'data-figure="rm_accuracy"' in page.text
    (StorageLayout(tmp_path / "a").round("2026-01-25").report_dir).mkdir(parents=True)
    (StorageLayout(tmp_path / "a").round("2026-01-25").report_dir / "index.html").write_text("written by the DAG")
    served = client.get("/round", params={"root": 0, "name": "2026-01-25"}).text
    assert served.endswith("written by the DAG") and 'href="./"' in served  # with a link back to the list
    assert page.text.count("every round and run") == 1
    assert "funnel" in client.get("/stage2", params={"root": 0, "name": "run-1"}).text


def test_unknown_names_and_roots_are_404_not_paths(client):
    assert client.get("/round", params={"root": 0, "name": "../../etc"}).status_code == 404
    assert client.get("/round", params={"root": 0, "name": "../stage2/run-1"}).status_code == 404
    assert client.get("/round", params={"root": 9, "name": "2026-01-01"}).status_code == 404


def test_a_page_uri_is_located_under_its_root(client, tmp_path):
    uri = str(StorageLayout(f"file://{tmp_path / 'b'}").round("2026-01-01").report_dir / "index.html")
    assert plugin.locate(uri) == ("round", 1, "2026-01-01")
    assert plugin.locate("/elsewhere/rounds/x/report/index.html") is None


def test_the_plugin_registers_a_nav_page_and_a_dag_run_tab():
    views = {v["destination"]: v for v in plugin.SynPrefCurationPlugin.external_views}
    assert views["nav"]["href"] == "curation/"
    assert "{RUN_ID}" in views["dag_run"]["href"]


def test_pages_are_authorized_like_the_dag_runs_they_show(client, monkeypatch):
    allowed = {"synpref_stage2"}
    monkeypatch.setattr(plugin, "may_read_runs", lambda user, dag_id: dag_id in allowed)
    assert client.get("/round", params={"root": 0, "name": "2026-01-25"}).status_code == 403
    assert client.get("/stage2", params={"root": 0, "name": "run-1"}).status_code == 200
    page = client.get("/").text
    assert "Stage-2 runs (1)" in page and "Stage-1 rounds" not in page
    assert client.get("/dag-run/some_other_dag/manual__1").status_code == 403
    allowed.clear()
    assert client.get("/").status_code == 403


def test_no_docs_routes(client):
    for route in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(route).status_code in (403, 404, 422)
        assert "swagger" not in client.get(route).text.lower()


def test_a_symlink_out_of_the_root_is_not_followed(client, tmp_path):
    outside = tmp_path / "elsewhere" / "report"
    outside.mkdir(parents=True)
    (outside / "index.html").write_text("secret from outside the root")
    run = StorageLayout(tmp_path / "a").round("2026-01-24")
    run.report_dir.parent.mkdir(parents=True, exist_ok=True)
    __import__("shutil").rmtree(run.report_dir, ignore_errors=True)
    run.report_dir.symlink_to(outside)
    page = client.get("/round", params={"root": 0, "name": "2026-01-24"})
    assert page.status_code == 404 and "secret" not in page.text
