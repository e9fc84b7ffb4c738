"""The integration tests' REST client: Airflow's database races are retried where that is safe, nothing else is."""

import http.server
import json
import threading

import pytest

import airflow_cluster
from airflow_cluster import api_request

DEADLOCK = {"detail": {"reason": "Database error", "statement": "UPDATE dag_run ...", "orig_error": "deadlock"}}


class ScriptedApi:
    """An HTTP server answering each request with the next (status, body) of a script; it records the methods."""

    def __init__(self, script: list[tuple[int, dict]]) -> None:
        self.script, self.seen = list(script), []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                api.seen.append(self.command)
                status, body = api.script.pop(0) if api.script else (200, {"ok": True})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_POST = _answer

            def log_message(self, *args) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v2/dags/d/dagRuns/r"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def no_backoff(monkeypatch):
    monkeypatch.setattr(airflow_cluster, "DB_ERROR_BACKOFF_S", 0.0)


def test_a_database_error_of_an_idempotent_request_is_retried(no_backoff):
    api = ScriptedApi([(500, DEADLOCK), (500, DEADLOCK), (200, {"state": "failed"})])
    assert api_request("PATCH", api.url, "t", json={"state": "failed"}) == {"state": "failed"}
    assert api.seen == ["PATCH"] * 3
    api.close()


def test_a_database_error_that_persists_fails_saying_how_many_tries(no_backoff):
    api = ScriptedApi([(500, DEADLOCK)] * 10)
    with pytest.raises(RuntimeError, match=r"→ 500 after 4 tries: .*Database error"):
        api_request("GET", api.url, "t")
    assert len(api.seen) == airflow_cluster.DB_ERROR_TRIES
    api.close()


@pytest.mark.parametrize(
    ("method", "status", "body"),
    [
        ("PATCH", 400, {"detail": "Database error"}),  # a 4xx is the request's fault: never retried
        ("PATCH", 500, {"detail": "Internal Server Error"}),  # a 5xx that is not the database's
        ("POST", 500, DEADLOCK),  # a trigger is not idempotent: asking twice could start two runs
    ],
)
def test_other_failures_fail_at_once(no_backoff, method, status, body):
    api = ScriptedApi([(status, body), (200, {})])
    with pytest.raises(RuntimeError, match=rf"→ {status} after 1 try"):
        api_request(method, api.url, "t")
    assert api.seen == [method]
    api.close()
