"""The documentation cannot drift: the configuration page is generated from the declarations, the site builds with
``--strict`` (a broken link, a missing anchor or a page outside the nav fails), the README stays short, every
environment variable the code reads is declared, every error class the project raises is in troubleshooting."""

import re
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import docs  # noqa: E402  (scripts/docs.py)
from synpref.environment import DECLARED  # noqa: E402

CODE = [REPO / d for d in ("include", "dags", "plugins", "scripts")] + [REPO / "docker-compose.yaml"]


def test_the_configuration_page_is_generated_from_the_declarations():
    assert (REPO / "docs" / "configuration.md").read_text() == docs.configuration_page(), (
        "docs/configuration.md is stale: run python scripts/docs.py"
    )


def test_the_configuration_page_names_every_setting_extra_and_variable():
    from synpref.settings import AnnotatorConfig, Stage1Config, Stage2Config, specs

    page = docs.configuration_page()
    names = [s.name for m in (Stage1Config, Stage2Config) for s in specs(m)] + list(AnnotatorConfig.model_fields)
    assert [n for n in names + list(DECLARED) if f"`{n}`" not in page] == []


def test_the_site_builds_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted(p.stem for p in (REPO / "benchmarks" / "results").glob("*.md"))
    assert all((tmp_path / "site" / "results" / name / "index.html").exists() for name in results)


def test_the_readme_is_short_with_both_commands_first():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:40])
    assert "./scripts/demo.sh" in head and "./scripts/test.sh" in head


def test_every_environment_variable_the_code_reads_is_declared():
    used = set()
    for root in CODE:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.suffix in (".py", ".sh", ".yaml") and ".egg-info" not in str(path):
                used |= set(re.findall(r"\bSYNPREF_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    connections = {u for u in used if u.startswith("SYNPREF_JUDGE")}  # AIRFLOW_CONN_SYNPREF_JUDGE_*: connection ids
    assert used - connections - set(DECLARED) == set()


def test_every_error_the_project_raises_is_in_troubleshooting():
    errors = set()
    for path in (REPO / "include").rglob("*.py"):
        errors |= set(re.findall(r"^class (\w+(?:Error|Unreachable))\(", path.read_text(), re.M))
    page = (REPO / "docs" / "troubleshooting.md").read_text()
    assert errors and {e for e in errors if f"`{e}`" not in page} == set()
