"""A real Label Studio server on loopback for the tests (installed by scripts/services.sh into its own
virtualenv, .venv-labelstudio: its pins clash with Airflow's). Stopped group-wide on ``stop()``."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
LABEL_STUDIO = REPO / ".venv-labelstudio" / "bin" / "label-studio"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioServer:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> LabelStudioServer:
        if not LABEL_STUDIO.exists():
            subprocess.run([str(REPO / "scripts" / "services.sh")], check=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LABEL_STUDIO_USERNAME": "reviewer@example.com",
            "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(12),
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        }
        log = (self.data_dir / "label-studio.log").open("w")
        cmd = [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*cmd, "--data-dir", str(self.data_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited:\n{(self.data_dir / 'label-studio.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if self.get("/api/projects").status_code == 200:
                    return self
            time.sleep(2)
        raise RuntimeError(f"Label Studio not up after {timeout}s")

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Token {self.token}"}, timeout=30, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", headers={"Authorization": f"Token {self.token}"}, timeout=30, **kw)

    def tasks(self, project_title: str) -> list[dict]:
        projects = self.get("/api/projects", params={"title": project_title}).json()["results"]
        pid = next(p["id"] for p in projects if p["title"] == project_title)
        return self.get("/api/tasks", params={"project": pid, "page_size": 1000}).json()["tasks"]

    def label(self, task_id: int, verdict: str) -> None:
        """Answer a task as an annotator would in the labelling UI (the verdict comes from a SIMULATION)."""
        result = [{"from_name": "verdict", "to_name": "pair", "type": "choices", "value": {"choices": [verdict]}}]
        r = self.post(f"/api/tasks/{task_id}/annotations", json={"result": result})
        r.raise_for_status()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
