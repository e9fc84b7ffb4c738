"""A real Airflow 3 deployment on loopback for the integration tests.

api-server + scheduler + dag-processor + triggerer, LocalExecutor, PostgreSQL metadata DB (created fresh),
SimpleAuthManager with a password so the REST API is used with real token auth. Every process
runs in its own session and is killed (group-wide) on ``stop()``, even after a failed test.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(REPO / ".venv" / "bin" / "airflow")
PG = {"host": "127.0.0.1", "port": 5432}
DB_ROLE = "synpref_it"
TERMINAL = {"success", "failed"}


CHROMIUM_ARGS = [  # headless Chromium offline, in a container
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium_page(base: str, token: str) -> Iterator:
    """A headless Chromium page logged in to the Airflow UI at ``base`` (closed on exit)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_cookies([{"name": "_token", "value": token, "url": base}])
            yield context.new_page()
        finally:
            browser.close()


def curation_listing(page, base: str, screenshot: Path) -> str:
    """Browse → Curation: the listing's text once it shows the rounds (a screenshot taken)."""
    page.goto(f"{base}/plugin/curation", wait_until="networkidle")
    listing = page.frame_locator("iframe").first.locator("body")
    listing.get_by_text("Stage-1 rounds").first.wait_for(timeout=60000)
    page.screenshot(path=str(screenshot))
    return listing.inner_text()


def wait_answering(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until ``url`` answers 200; fails with the process's log tail if it exits or the time runs out."""
    deadline, last = time.time() + timeout, "no answer yet"
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s ({last}):\n{log.read_text()[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_services() -> None:
    """PostgreSQL (and Chromium, docker-compose) present and running: scripts/services.sh installs/starts the rest."""
    subprocess.run([str(REPO / "scripts" / "services.sh")], check=True)


def _admin(*statements: str) -> None:
    import psycopg2

    con = psycopg2.connect(dbname="postgres", user="postgres", **PG)
    con.autocommit = True
    with con.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    con.close()


def fresh_database() -> tuple[str, str]:
    """A new metadata database with a name of its own (two test runs on one host never share one) and its role
    if missing; returns (name, SQLAlchemy URL). ``drop_database`` removes it."""
    import psycopg2

    name = f"synpref_it_{os.getpid()}_{secrets.token_hex(4)}"
    with contextlib.suppress(psycopg2.errors.UniqueViolation):  # another suite (xdist worker) made it just now
        _admin(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{DB_ROLE}') "
            f"THEN CREATE ROLE {DB_ROLE} LOGIN; END IF; END $$"
        )
    _admin(f"CREATE DATABASE {name} OWNER {DB_ROLE}")
    return name, f"postgresql+psycopg2://{DB_ROLE}@{PG['host']}:{PG['port']}/{name}"


def drop_database(name: str) -> None:
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# Airflow's own races: a state change through the REST API (marking a run failed, pausing a DAG) while the
# execution API starts that run's tasks can deadlock in PostgreSQL, which aborts one side; the API server then answers
# 500 "Database error" for a transaction that was rolled back, so an idempotent request is safe to send again.
IDEMPOTENT = frozenset({"GET", "PATCH", "PUT", "DELETE"})
DB_ERROR_TRIES = 4
DB_ERROR_BACKOFF_S = 0.5


def is_database_error(r: httpx.Response) -> bool:
    """A 5xx the API server gives for a failed (rolled back) database transaction."""
    return r.status_code >= 500 and "database error" in r.text.lower()


def api_request(method: str, url: str, token: str, **kwargs) -> dict:
    """One REST call; a database-error 5xx of an idempotent request is retried (``DB_ERROR_TRIES`` tries, back-off
    0.5, 1, 2 s); any 4xx, any other 5xx, and a POST's database error fail at once, saying how many tries."""
    tries = DB_ERROR_TRIES if method.upper() in IDEMPOTENT else 1
    for attempt in range(1, tries + 1):
        r = httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs)
        if not is_database_error(r) or attempt == tries:
            break
        time.sleep(DB_ERROR_BACKOFF_S * 2 ** (attempt - 1))
    if r.status_code >= 400:
        tried = f"{attempt} tr{'y' if attempt == 1 else 'ies'}"
        raise RuntimeError(f"{method} {url} → {r.status_code} after {tried}: {r.text[:2000]}")
    return r.json() if r.content else {}


class AirflowCluster:
    def __init__(self, home: Path, extra_env: dict[str, str]):
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        self.procs: list[subprocess.Popen] = []
        self.named: dict[str, subprocess.Popen] = {}
        self._token: str | None = None
        self.database: str | None = None
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__BASE_URL": self.base,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # the DAG files do not change while a test runs: parse them once, not every 30 s (Airflow's default)
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "1800",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            # log servers on ports of their own: two clusters (pytest-xdist workers) run side by side
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # one thread per task (torch, faiss): up to 4 tasks of each of two deployments share 2 cores, and torch's
            # default of a thread per core made them spin against each other (README "Scale out": threads per task)
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO / "include"),
            **extra_env,
        }

    # -- lifecycle -----------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def start(self) -> AirflowCluster:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": self.password}))
        self.database, self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = fresh_database()
        self.cli("db", "migrate")
        self.cli("pools", "set", "llm_api", "4", "LLM endpoints")
        self.cli("pools", "set", "gpu", "1", "GPU workers")
        for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
            self.spawn(component, [component])
        self._wait_healthy()
        return self

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start one more Airflow process (in its own session, log ``<home>/<name>.log``)."""
        log = open(self.home / f"{name}.log", "a")
        proc = subprocess.Popen(
            [AIRFLOW, *args],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        self.named[name] = proc
        return proc

    def kill9(self, name: str) -> None:
        """SIGKILL a process and everything it started (a machine that died): no clean shutdown at all."""
        proc = self.named.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 30
        for p in self.procs:
            try:
                p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        if self.database:
            drop_database(self.database)
            self.database = None

    def _wait_healthy(self, timeout: float = 240) -> None:
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            dead = [" ".join(p.args[1:3]) for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"airflow {dead} exited during start-up:\n{self.logs_tail()}")
            try:
                last = httpx.get(f"{self.base}/api/v2/monitor/health", timeout=5).json()
                if all(
                    last.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "dag_processor")
                ):
                    return
            except (httpx.HTTPError, ValueError) as exc:
                last = f"api-server not answering yet: {exc!r}"
            time.sleep(2)
        raise RuntimeError(f"Airflow not healthy after {timeout}s: {last}\n{self.logs_tail()}")

    def logs_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in sorted(self.home.glob("*.log")))

    def task_logs_tail(self, dag_id: str, run_id: str, chars: int = 4000) -> str:
        run_dir = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        logs = sorted(run_dir.rglob("*.log")) if run_dir.exists() else []
        failed = [p for p in logs if '"level":"error"' in p.read_text() or "Traceback" in p.read_text()] or logs[-2:]
        return "\n".join(f"--- {p.relative_to(self.home)}\n{p.read_text()[-chars:]}" for p in failed)

    # -- REST API v2 (token auth) --------------------------------------------------------------
    def token(self) -> str:
        if self._token is None:
            r = httpx.post(
                f"{self.base}/auth/token", json={"username": "admin", "password": self.password}, timeout=30
            )
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs) -> dict:
        return api_request(method, f"{self.base}/api/v2{path}", self.token(), **kwargs)

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = {d["dag_id"] for d in self.api("GET", "/dags", params={"dag_id_pattern": "synpref"})["dags"]}
            if set(dag_ids) <= found:
                errors = self.api("GET", "/importErrors")
                assert errors["total_entries"] == 0, errors
                return
            time.sleep(2)
        raise RuntimeError(f"DAGs {dag_ids} not parsed after {timeout}s:\n{self.logs_tail()}")

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": True})

    @contextmanager
    def paused(self, dag_id: str) -> Iterator[None]:
        """``dag_id`` paused inside the block (Airflow queues no Asset-triggered run for it), unpaused after it."""
        self.pause(dag_id)
        try:
            yield
        finally:
            self.unpause(dag_id)

    def trigger(self, dag_id: str, logical_date: str | None, conf: dict) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": conf})
        return run["dag_run_id"]

    def runs(self, dag_id: str, **params) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "logical_date", **params})[
            "dag_runs"
        ]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in TERMINAL:
                assert run["state"] == "success", (
                    f"{dag_id} {run_id} {run['state']}\n{self.task_logs_tail(dag_id, run_id)}"
                )
                return run
            time.sleep(3)
        raise TimeoutError(f"{dag_id} {run_id} not finished after {timeout}s\n{self.logs_tail()}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500})[
            "task_instances"
        ]
