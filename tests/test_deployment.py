"""The docker-compose deployment, validated without a Docker engine: `docker-compose config` resolves it,
its services are the ones docs/deployment.md documents, every variable is documented, no secret is committed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from airflow_cluster import REPO, ensure_services

pytestmark = pytest.mark.e2e  # needs Debian's docker-compose

COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
}


def compose(*args: str, env_file=ENV_EXAMPLE) -> subprocess.CompletedProcess:
    if not shutil.which("docker-compose"):
        ensure_services()
    cmd = ["docker-compose", "--project-directory", str(REPO), "-f", str(COMPOSE)]
    cmd += ["--env-file", str(env_file)] if env_file else []
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def resolved() -> dict:
    proc = compose("--profile", "gpu", "--profile", "local-llm", "config")
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_compose_config_resolves_the_celery_deployment(resolved):
    services = resolved["services"]
    assert {
        "postgres",
        "redis",
        "minio",
        "minio-init",
        "local-llm",
        "label-studio",
        "label-studio-db",
    } | AIRFLOW_SERVICES == set(services)
    for name in AIRFLOW_SERVICES:
        s = services[name]
        env = s["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
        assert env["PYTHONPATH"] == "/opt/synpref/include"
        assert any(":/opt/synpref/include" in v for v in map(_volume, s["volumes"]))
        assert env["SYNPREF_ROOT"] == "s3://minio@synpref/curation"
        assert '"endpoint_url": "http://minio:9000"' in env["AIRFLOW_CONN_MINIO"]
        assert "build" in s
        assert s["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert "healthcheck" in services[name], name
    init = _cmd(services["airflow-init"]["command"])
    assert "airflow db migrate" in init
    assert "users create" in init
    assert "pools set llm_api" in init
    assert "pools set gpu" in init
    gpu = services["airflow-worker-gpu"]
    assert "--queues gpu" in _cmd(gpu["command"])
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]  # one worker per GPU
    assert gpu["environment"]["SYNPREF_DEVICE"] == "cuda"  # never a silent fall-back to the worker's CPU
    assert services["airflow-worker"]["environment"]["SYNPREF_DEVICE"] == "auto"
    assert gpu["profiles"] == ["gpu"]
    assert services["local-llm"]["profiles"] == ["local-llm"]
    assert _cmd(services["airflow-worker"]["command"]) == "celery worker --queues default"
    assert "mc mb" in _cmd(services["minio-init"]["entrypoint"])


def _cmd(c) -> str:
    return c if isinstance(c, str) else " ".join(c)


def _volume(v) -> str:
    return v if isinstance(v, str) else f"{v['source']}:{v['target']}"


def test_compose_refuses_to_start_without_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = compose("config", env_file=empty)
    assert proc.returncode != 0
    assert re.search(r"set (AIRFLOW_JWT_SECRET|MINIO_ROOT_PASSWORD|_AIRFLOW_WWW_USER_PASSWORD) in \.env", proc.stderr)


def test_every_variable_is_documented_and_no_secret_is_committed():
    used = set(
        re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text())
    )  # $${X}: the container's own variable
    documented = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert used - set(documented) == set(), "undocumented in .env.example"
    for key, value in documented.items():
        if re.search(r"PASSWORD|SECRET|API_KEY|TOKEN|FERNET", key):
            assert value == "" or value.startswith("change-me"), f"{key} looks like a real secret"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_readme_services_exist(resolved):
    docs = (REPO / "docs" / "deployment.md").read_text()
    section = docs[docs.index("### docker-compose") :]
    section = section[: section.index("\n### ", 4)]  # the compose section's service table only
    table = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert table, "docs/deployment.md has no service table"
    assert set(table) == set(resolved["services"])


def test_image_pins_airflow():
    dockerfile = (REPO / "Dockerfile").read_text()
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), flags=re.M).group(1)
    assert f"FROM apache/airflow:{pinned}-python3.11" in dockerfile
    assert f'"apache-airflow=={pinned}" -r /requirements.txt' in dockerfile
