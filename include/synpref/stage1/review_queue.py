"""The humans' review queue on a Label Studio server: push a round's queue as tasks, pull the verdicts.

Push (end of a round): the queue's tasks (``review_queue/tasks.json``: responses as A/B in a seeded
order, the pair id and the round as task data) are imported into a project found or created by title
with ``labelstudio/pairwise.xml``; a task already on the server (same pair id and round) is not
imported again, so a re-run creates no duplicates.

Pull (start of the next round): the project's annotated tasks whose annotations were not pulled by an
earlier round are written as a Label Studio export into the round's inbox
(``inbox/<date>/label-studio-<project>.json``), where intake validates and quarantines them like any
file. The file is written once per round (a re-run reads what was pulled, so the round stays
reproducible and nothing pulled is lost); tasks still unlabelled stay on the server for a later night.
A server that is unreachable, refuses the token or answers junk is recorded, never fatal to the round.

The REST API is called with httpx: ``label-studio-sdk`` pins numpy < 2.3, PyJWT and opencv, which clash
with Airflow's and this project's stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import httpx

from synpref.io.storage import PathLike, as_path, list_files, read_bytes, write_json

PAGE_SIZE = 100


class ReviewServerError(RuntimeError):
    """The server could not be used: ``kind`` is unreachable | unauthorized | bad_reply."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ReviewServer:
    """A Label Studio server (an Airflow connection: host = URL, password = API token; extra.project)."""

    url: str
    token: str = field(repr=False)
    project: str = "synpref-review"
    timeout_s: float = 30.0


def label_config() -> str:
    return resources.files("synpref").joinpath("labelstudio", "pairwise.xml").read_text()


class LabelStudio:
    """The few Label Studio REST calls the queue needs, with errors turned into ``ReviewServerError``."""

    def __init__(self, server: ReviewServer, client: httpx.Client | None = None) -> None:
        self.server = server
        self.client = client or httpx.Client(
            base_url=server.url.rstrip("/"),
            headers={"Authorization": f"Token {server.token}"},
            timeout=server.timeout_s,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ReviewServerError("unreachable", f"Label Studio at {self.server.url}: {type(e).__name__}") from None
        if r.status_code in (401, 403):
            raise ReviewServerError(
                "unauthorized", f"Label Studio at {self.server.url} refused the token ({r.status_code})"
            )
        if r.status_code >= 400:
            raise ReviewServerError("bad_reply", f"Label Studio {method} {path}: HTTP {r.status_code}")
        try:
            return r.json()
        except ValueError:
            raise ReviewServerError("bad_reply", f"Label Studio {method} {path}: the reply is not JSON") from None

    def project_id(self) -> int:
        """The project titled ``server.project``, created with the pairwise labelling config when missing."""
        found = self.call("GET", "/api/projects", params={"title": self.server.project, "page_size": PAGE_SIZE})
        results = found.get("results", found) if isinstance(found, dict) else found
        if not isinstance(results, list):
            raise ReviewServerError("bad_reply", "Label Studio /api/projects: no list of projects")
        for p in results:
            if isinstance(p, dict) and p.get("title") == self.server.project:
                return int(p["id"])
        created = self.call(
            "POST", "/api/projects", json={"title": self.server.project, "label_config": label_config()}
        )
        return int(created["id"])

    def tasks(self, project: int) -> list[dict]:
        out, page = [], 1
        while True:
            got = self.call("GET", "/api/tasks", params={"project": project, "page": page, "page_size": PAGE_SIZE})
            batch = got.get("tasks", []) if isinstance(got, dict) else []
            out += batch
            if len(batch) < PAGE_SIZE or len(out) >= int(got.get("total", 0)):
                return out
            page += 1

    def import_tasks(self, project: int, tasks: list[dict]) -> int:
        if not tasks:
            return 0
        got = self.call("POST", f"/api/projects/{project}/import", json=[{"data": t["data"]} for t in tasks])
        return int(got.get("task_count", len(tasks))) if isinstance(got, dict) else len(tasks)

    def annotated(self, project: int) -> list[Any]:
        """Every task with at least one annotation (Label Studio's JSON export)."""
        got = self.call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON"})
        if not isinstance(got, list):
            raise ReviewServerError("bad_reply", "Label Studio export: not a list of tasks")
        return got

    def close(self) -> None:
        self.client.close()


def _key(data: Any) -> tuple[Any, Any]:
    return (data.get("pair_id"), data.get("round")) if isinstance(data, dict) else (None, None)


def push_review_queue(tasks_uri: PathLike, server: ReviewServer, client: httpx.Client | None = None) -> dict:
    """Import the round's queue (tasks not on the server yet); → counts. Raises ReviewServerError."""
    tasks = json.loads(read_bytes(tasks_uri))
    ls = LabelStudio(server, client)
    try:
        project = ls.project_id()
        present = {_key(t.get("data")) for t in ls.tasks(project)}
        new = [t for t in tasks if _key(t["data"]) not in present]
        pushed = ls.import_tasks(project, new)
    finally:
        ls.close()
    return {
        "project": server.project,
        "queued": len(tasks),
        "already_on_server": len(tasks) - len(new),
        "pushed": pushed,
    }


def pull_file(inbox: PathLike, server: ReviewServer) -> Any:
    """Where a round's pull lands: ``inbox/<date>/label-studio-<project>.json``."""
    return as_path(inbox) / f"label-studio-{server.project}.json"


def _pulled_annotation_ids(earlier: list[Any]) -> set[Any]:
    ids = set()
    for path in earlier:
        try:
            tasks = json.loads(read_bytes(path))
        except (OSError, ValueError):
            continue  # a damaged earlier pull is the intake's business (it quarantines it)
        for t in tasks if isinstance(tasks, list) else []:
            for a in t.get("annotations") or [] if isinstance(t, dict) else []:
                if isinstance(a, dict) and a.get("id") is not None:
                    ids.add(a["id"])
    return ids


def earlier_pulls(inbox_root: PathLike, server: ReviewServer, before: str) -> list[Any]:
    """Pull files of the rounds dated before ``before`` (their annotations are not pulled again)."""
    root = as_path(inbox_root)
    if not root.exists():
        return []
    name = f"label-studio-{server.project}.json"
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name < before)
    return [f for d in dirs for f in list_files(d) if f.name == name]


def pull_verifications(
    inbox: PathLike, earlier: list[Any], server: ReviewServer, client: httpx.Client | None = None
) -> dict:
    """Write the annotations not pulled before into the round's inbox (once per round); → counts.

    Raises ReviewServerError (nothing is written then, and the round goes on with the inbox's files)."""
    target = pull_file(inbox, server)
    if target.exists():
        tasks = json.loads(read_bytes(target))
        return {"project": server.project, "file": str(target), "tasks": len(tasks), "already_pulled": True}
    seen = _pulled_annotation_ids(earlier)
    ls = LabelStudio(server, client)
    try:
        exported = ls.annotated(ls.project_id())
    finally:
        ls.close()
    fresh = []
    for t in exported:
        if not isinstance(t, dict) or not isinstance(t.get("annotations"), list):
            fresh.append(t)  # malformed: kept, so that intake quarantines it with a reason
            continue
        new = [a for a in t["annotations"] if not (isinstance(a, dict) and a.get("id") in seen)]
        if new:
            fresh.append({**t, "annotations": new})
    write_json(fresh, target)
    annotations = sum(len(t.get("annotations") or []) for t in fresh if isinstance(t, dict))
    return {"project": server.project, "file": str(target), "tasks": len(fresh), "annotations": annotations}
