"""The review queue on a real Label Studio server: push without duplicates, pull once per round, verdicts
mapped back through the A/B order, and a server that fails is recorded, never a lost verification."""

import http.server
import json
import socket
import threading

import pytest

from synpref.simulation.simulated import human_answer
from synpref.simulation.synthetic import generate
from synpref.stage1.gold import build_gold, label_studio_tasks, read_inbox
from synpref.stage1.review_queue import (
    ReviewServer,
    ReviewServerError,
    earlier_pulls,
    pull_file,
    pull_verifications,
    push_review_queue,
)

pytestmark = pytest.mark.e2e  # a real Label Studio server (.venv-labelstudio)


def _queue(tmp_path, rows, rnd):
    tasks = label_studio_tasks([{**r, "round": rnd} for r in rows], seed=3)
    path = tmp_path / f"tasks-{rnd}.json"
    path.write_text(json.dumps(tasks))
    return path


@pytest.fixture()
def server(label_studio, request):
    return ReviewServer(url=label_studio.url, token=label_studio.token, project=f"test-{request.node.name[:40]}")


def test_push_creates_the_project_and_never_duplicates_tasks(tmp_path, server, label_studio):
    rows = generate(5, seed=21)[0].to_pylist()
    first = push_review_queue(_queue(tmp_path, rows, "2026-01-01"), server)
    again = push_review_queue(_queue(tmp_path, rows, "2026-01-01"), server)
    assert (first["pushed"], again["pushed"], again["already_on_server"]) == (5, 0, 5)
    assert len(label_studio.tasks(server.project)) == 5
    shown = {t["data"]["pair_id"]: t["data"] for t in label_studio.tasks(server.project)}
    assert all("response_a" in d and "response_chosen" not in d for d in shown.values())


def test_labelled_tasks_are_pulled_once_and_become_gold_in_the_right_orientation(tmp_path, server, label_studio):
    pairs, truth = generate(4, seed=22, noise=0.5)
    better = {t["pair_id"]: t["better"] for t in truth.to_pylist()}
    push_review_queue(_queue(tmp_path, pairs.to_pylist(), "2026-01-01"), server)
    tasks = label_studio.tasks(server.project)
    for t in tasks[:3]:  # SIMULATED annotator: answers A/B from the hidden truth
        label_studio.label(t["id"], human_answer(t["data"], better[t["data"]["pair_id"]], right=True))
    inbox = tmp_path / "inbox"
    day1 = pull_verifications(inbox / "2026-01-02", [], server)
    assert (day1["tasks"], day1["annotations"]) == (3, 3)
    again = pull_verifications(inbox / "2026-01-02", [], server)  # a re-run of the round reads what it pulled
    assert again["already_pulled"]
    gold = build_gold([{**v, "round": "2026-01-02"} for v in read_inbox(inbox / "2026-01-02").verifications])["gold"]
    assert len(gold) == 3
    assert all(g["chosen"] == better[g["pair_id"]] for g in gold)
    label_studio.label(tasks[3]["id"], human_answer(tasks[3]["data"], better[tasks[3]["data"]["pair_id"]], right=True))
    day2 = pull_verifications(inbox / "2026-01-03", earlier_pulls(inbox, server, "2026-01-03"), server)
    assert (day2["tasks"], day2["annotations"]) == (1, 1)  # only what was labelled since


def test_a_wrong_token_or_a_dead_server_is_an_error_and_writes_nothing(tmp_path, label_studio):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    for srv, kind in (
        (ReviewServer(url=label_studio.url, token="wrong"), "unauthorized"),
        (ReviewServer(url=dead, token="x", timeout_s=2), "unreachable"),
    ):
        with pytest.raises(ReviewServerError) as e:
            pull_verifications(tmp_path / "inbox", [], srv)
        assert e.value.kind == kind
        assert not pull_file(tmp_path / "inbox", srv).exists()


class _JunkExport(http.server.BaseHTTPRequestHandler):
    """Not Label Studio: a stand-in answering the three calls a pull makes with malformed task JSON."""

    def log_message(self, *args):
        """Quiet: no line per request on stderr."""

    def do_GET(self):
        if self.path.startswith("/api/projects?"):
            body = {"results": [{"id": 1, "title": "junk"}]}
        else:
            body = [{"id": 1, "data": "not an object", "annotations": [{"id": 9, "result": []}]}, "junk", {"id": 2}]
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)


def test_malformed_tasks_from_the_server_are_kept_and_quarantined_by_intake(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JunkExport)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    server = ReviewServer(url=f"http://127.0.0.1:{srv.server_address[1]}", token="t", project="junk")
    pulled = pull_verifications(tmp_path / "inbox", [], server)
    intake = read_inbox(tmp_path / "inbox")
    assert pulled["tasks"] == 3
    assert intake.verifications == []
    assert len(intake.quarantine) == 3
    srv.shutdown()
