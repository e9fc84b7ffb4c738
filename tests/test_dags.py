import subprocess
import sys

import pytest

from conftest import REPO, airflow_env


def test_dagbag_integrity(monkeypatch):
    for k, v in airflow_env("file:///tmp/x").items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SYNPREF_TASK_RETRIES")  # check the shipped defaults
    monkeypatch.syspath_prepend(str(REPO / "dags"))  # Airflow puts the DAGS_FOLDER on sys.path; do it for this process
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    assert set(bag.dag_ids) == {"synpref_prepare", "synpref_stage1", "synpref_stage2"}
    for dag in bag.dags.values():
        assert dag.tags
        assert "synpref" in dag.tags
        assert dag.doc_md
        assert all(task.retries >= 1 for task in dag.tasks), dag.dag_id
    s1 = bag.dags["synpref_stage1"]
    assert s1.max_active_runs == 1
    assert all(t.depends_on_past for t in s1.tasks)
    assert type(s1.timetable).__name__ == "CronTriggerTimetable"
    for dag_id in (
        "synpref_prepare",
        "synpref_stage1",
        "synpref_stage2",
    ):  # the trigger form shows titles for every param
        params = bag.dags[dag_id].params
        assert all(params.get_param(k).schema.get("title") for k in params), dag_id
        # the UI's form flags an empty string as a missing value: optional text params must admit null
        assert not [
            k
            for k in params
            if params.get_param(k).value == "" and "null" not in params.get_param(k).schema.get("type", [])
        ], dag_id
    assert {
        "k_max",
        "annotators",
        "samples",
        "merge_policy",
        "max_examples",
        "rm_mode",
        "rm_backbone",
        "budget_usd",
        "seed",
        "pool_uri",
        "inbox_uri",
    } <= set(s1.params)


def test_no_heavy_imports_at_dag_top_level():
    code = (
        "import sys; sys.path[:0] = ['dags', 'include']; import synpref_prepare, synpref_stage1, synpref_stage2; "
        "print([m for m in ('torch', 'transformers', 'faiss', 'openai', 'sentence_transformers') if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=airflow_env("file:///tmp/x"), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_a_misconfiguration_fails_the_task_without_retries(monkeypatch):
    """A wrong annotator, RM backbone or device cannot be fixed by a retry: the task fails at once, in one line;
    an endpoint that failed (it may recover) keeps Airflow's retries."""
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.syspath_prepend(str(REPO / "dags"))
    from synpref.llm.client import EndpointError
    from synpref.models.reward_model import BackboneError
    from synpref.settings import AnnotatorError
    from synpref_common import no_retry_if_misconfigured

    for error in (AnnotatorError("annotator 'a': 401 from the endpoint"), BackboneError("RM backbone 'x' ...")):
        with pytest.raises(AirflowFailException, match="not retried: fix the configuration"):
            with no_retry_if_misconfigured():
                raise error
    with pytest.raises(EndpointError):
        with no_retry_if_misconfigured():
            raise EndpointError("41 of 120 requests failed")
