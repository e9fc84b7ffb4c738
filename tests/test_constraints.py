"""The lock files agree with what they lock: every pin of requirements.txt is the version constraints.txt holds
(scripts/setup.sh installs with both), and the Label Studio lock holds the version scripts/services.sh installs."""

from __future__ import annotations

import re
from pathlib import Path

from airflow_cluster import REPO


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", line).groups()
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_requirement_is_locked_at_its_pinned_version():
    locked = _pins(REPO / "constraints.txt")
    for name, version in _pins(REPO / "requirements.txt").items():
        assert name in locked, f"{name} is not in constraints.txt"
        assert locked[name].split("+")[0] == version, (name, version, locked[name])  # torch 2.13.0 is 2.13.0+cpu


def test_label_studio_lock_holds_the_version_services_installs():
    services = (REPO / "scripts" / "services.sh").read_text()
    version = re.search(r'^LS_VERSION="(\S+) ', services, flags=re.M).group(1)
    assert _pins(REPO / "scripts" / "labelstudio-constraints.txt")["label-studio"] == version
