import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sim_truth(tmp_path_factory):
    """Synthetic pairs + truth shared by the simulator tests."""
    from synpref.io.storage import write_parquet
    from synpref.simulation.synthetic import generate

    d = tmp_path_factory.mktemp("simdata")
    pairs, truth = generate(120, seed=7, noise=0.3)
    gold, gtruth = generate(40, seed=8)
    for name, t in (("pairs", pairs), ("truth", truth), ("gold", gold), ("gtruth", gtruth)):
        write_parquet(t, d / f"{name}.parquet")
    return d, pairs, truth, gold, gtruth


@pytest.fixture()
def sim_server(sim_truth):
    """SIMULATED OpenAI-compatible judges on loopback (fresh request counters per test)."""
    from synpref.simulation.simulated import JudgeProfile, SimulatedJudgeServer, TruthIndex

    _, _, truth, _, gtruth = sim_truth
    profiles = {
        "good": JudgeProfile(0.85, 0.1, 0.0),
        "ok": JudgeProfile(0.8, 0.1, 0.0),
        "meh": JudgeProfile(0.75, 0.1, 0.0),
        "faulty": JudgeProfile(0.85, 0.0, 0.2, slow_s=1.5),
        "biased": JudgeProfile(0.8, 0.4, 0.0),
        "one-choice": JudgeProfile(0.8, 0.1, 0.0, honours_n=False),  # answers one choice whatever ``n`` asks
        # as real judges are: temperature 0 and order-sensitive (an LLM judge), order-invariant (a reward model)
        "temp0": JudgeProfile(0.76, difficulty=1.0, deterministic=True),
        "rm-judge": JudgeProfile(0.64, difficulty=1.0, deterministic=True, order_invariant=True),
    }
    server = SimulatedJudgeServer(TruthIndex.from_tables(truth, gtruth), profiles, api_key="sk-test")
    server.start()
    yield server
    server.stop()


def write_synthetic_sets(root: Path, sets: dict) -> dict:
    """Write synthetic sets {name: (n, seed, noise, with_attributes, path under root)}; return their hidden truths."""
    from synpref.io.storage import write_parquet
    from synpref.simulation.synthetic import generate

    truths = {}
    for name, (n, seed, noise, attrs, rel) in sets.items():
        pairs, truths[name] = generate(n, seed=seed, noise=noise, with_attributes=attrs, source=name)
        write_parquet(pairs, root / rel)
    return truths


def airflow_env(root: str, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "SYNPREF_ROOT": root,
            "SYNPREF_TASK_RETRIES": "0",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO / "include"),
        }
    )
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_env("file:///nonexistent", {"AIRFLOW_HOME": str(home)})
    subprocess.run([str(REPO / ".venv/bin/airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        [str(REPO / ".venv/bin/airflow"), "pools", "set", "llm_api", "4", "llm"],
        env=env,
        check=True,
        capture_output=True,
    )
    return home


def dags_test(
    airflow_home, dag_id: str, date: str, root: str, conf: dict | None = None, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    env = airflow_env(root, {"AIRFLOW_HOME": str(airflow_home), **(extra_env or {})})
    cmd = [str(REPO / ".venv/bin/airflow"), "dags", "test", dag_id, date] + (["-c", json.dumps(conf)] if conf else [])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def conn_env(server, models=("good", "ok", "meh")) -> dict:
    """AIRFLOW_CONN_SYNPREF_JUDGE_A/B/C (the DAGs' default annotator ids) pointing at the simulated models."""
    return {
        f"AIRFLOW_CONN_SYNPREF_JUDGE_{letter}": json.dumps(
            {
                "conn_type": "openai",
                "host": server.base_url,
                "password": "sk-test",
                "extra": {"model": m, "timeout_s": 5, "max_concurrency": 8},
            }
        )
        for letter, m in zip("ABC", models)
    }


def annotator_cfg(server, model, **kw):
    """An annotator config for one SIMULATED model of ``server``."""
    from synpref.llm.client import AnnotatorConfig

    return AnnotatorConfig(
        name=model,
        base_url=server.base_url,
        model=model,
        api_key="sk-test",
        samples=kw.pop("samples", 3),
        timeout_s=kw.pop("timeout_s", 5),
        max_retries=kw.pop("max_retries", 6),
        max_concurrency=8,
        price_in_per_1k=0.001,
        price_out_per_1k=0.002,
        **kw,
    )


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio server on loopback (its own virtualenv; started once per test session)."""
    from labelstudio_server import LabelStudioServer

    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio")).start()
    yield server
    server.stop()


class LongerIsBetter:
    """A toy signal (one class): the longer response is the better one."""

    name = "length"

    def logits(self, rows: list[dict]):
        import numpy as np

        return np.array([len(r["chosen"]) - len(r["rejected"]) for r in rows], dtype=np.float64)


def _length_rule():
    from typing import Literal

    from synpref.stage2.consistency import Decided, RuleBase

    class LengthRule(RuleBase):
        """A toy decision rule (one class) on the toy signal: never asks the judges, drops what the signal rejects."""

        kind: Literal["length"] = "length"

        def needs_judges(self, scores: dict) -> bool:
            return False

        def decide(self, scores: dict, judgement: dict | None) -> Decided:
            return (
                Decided("kept", "longer chosen")
                if scores["logit_length"] > 0
                else Decided("dropped", "shorter chosen")
            )

    return LengthRule


LengthRule = _length_rule()
