"""Settings are declared once: the DAG params and the CLI flags are derived from the same declarations."""

import argparse

import pytest

from conftest import REPO, airflow_env
from synpref.cli import build_parser
from synpref.settings import (
    AnnotateSettings,
    PrepareConfig,
    Stage1Config,
    Stage2Config,
    Stage2Source,
    from_flat,
    specs,
    to_flat,
)

PAIRS = {  # DAG id → (CLI command, the config models both expose)
    "synpref_prepare": ("prepare", [PrepareConfig]),
    "synpref_stage1": ("stage1", [Stage1Config]),
    "synpref_stage2": ("stage2", [Stage2Source, Stage2Config]),
}


@pytest.fixture(scope="module")
def dag_params():
    """The DAGs' params, loaded with the test environment; the DAG glue is unloaded again afterwards so that
    other tests import it with their own environment."""
    import os
    import sys

    glue = ("synpref_common", "synpref_prepare", "synpref_stage1", "synpref_stage2")
    saved = dict(os.environ)
    os.environ.update(airflow_env("file:///tmp/x"))
    os.environ.pop("SYNPREF_RM_MODE", None)
    sys.path.insert(0, str(REPO / "dags"))
    try:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        return {dag_id: bag.dags[dag_id].params for dag_id in PAIRS}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        sys.path.remove(str(REPO / "dags"))
        for name in glue:
            sys.modules.pop(name, None)


def _cli_actions(command: str) -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a for a in sub._actions}


CASES = [(dag_id, spec) for dag_id, (_, models) in PAIRS.items() for m in models for spec in specs(m)]


@pytest.mark.parametrize("dag_id,spec", CASES, ids=[f"{d}:{s.name}" for d, s in CASES])
def test_dag_param_and_cli_flag_share_default_and_choices(dag_params, dag_id, spec):
    param = dag_params[dag_id].get_param(spec.name)
    flag = _cli_actions(PAIRS[dag_id][0])[spec.name]
    assert param.value == flag.default
    assert param.schema.get("enum") == (list(flag.choices) if flag.choices else None)
    assert param.schema["title"] == spec.title


@pytest.mark.parametrize("dag_id,spec", CASES, ids=[f"{d}:{s.name}" for d, s in CASES])
def test_dag_param_carries_the_declared_bounds(dag_params, dag_id, spec):
    schema = dag_params[dag_id].get_param(spec.name).schema
    assert schema.get("minimum") == spec.minimum
    assert schema.get("maximum") == spec.maximum


def test_every_setting_has_one_declaration():
    """A flat name appears once per model, whichever configs share it, with one default."""
    seen: dict[str, object] = {}
    for model in (PrepareConfig, AnnotateSettings, Stage1Config, Stage2Source, Stage2Config):
        names = [s.name for s in specs(model)]
        assert len(names) == len(set(names)), model
        for s in specs(model):
            assert seen.setdefault(s.name, s.default) == s.default, s.name


def test_nested_settings_round_trip_through_flat_names():
    cfg = Stage1Config(k_max=3, rm={"mode": "frozen", "learning_rate": 1e-4})
    flat = to_flat(cfg)
    assert flat["rm_lr"] == 1e-4
    assert flat["rm_mode"] == "frozen"
    assert from_flat(Stage1Config, flat) == cfg


def test_the_round_seed_reaches_both_reward_models():
    assert from_flat(Stage1Config, {"seed": 7}).rm_config.seed == 7


def test_out_of_bounds_values_are_refused():
    with pytest.raises(ValueError, match="k_max"):
        from_flat(Stage1Config, {"k_max": 0})
