"""SynPref "Curation" page in the Airflow 3 UI: the stage-1 rounds and stage-2 runs under the configured
storage roots, each one's HTML report, and a "Curation report" tab on every DAG run that wrote one.

Roots: ``$SYNPREF_ROOT`` plus the comma-separated ``$SYNPREF_REPORT_ROOTS`` (``file://`` or
``s3://<conn_id>@<bucket>/<prefix>``; S3 connections resolve like in the DAGs). Storage is read through
the library (``synpref.io.layout``, ``synpref.reporting.report``): a report the DAG wrote (``report/index.html`` next
to the manifest) is served as is; a run without one is rendered on demand from its manifests and
per-shard summaries (never its pairs) and cached by manifest content. Lists are paginated; endpoints
are synchronous, so FastAPI runs them in its thread pool and a slow bucket never blocks the API server.
Every route requires a logged-in Airflow user (the UI's session cookie or a bearer token).
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from airflow.api_fastapi.core_api.security import GetUserDep, get_user
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, RedirectResponse

from synpref.environment import env

PER_PAGE = 20
_NAME = re.compile(r"[\w][\w.-]*")  # a round (date) or run name: never a path
MANIFEST_TTL_S = 30.0
REPORT_TASK = "write_report"

DAG_OF = {"round": "synpref_stage1", "stage2": "synpref_stage2"}  # whose runs a page shows

# authenticated pages only (no docs routes); each page is also authorized like the DAG runs it shows
app = FastAPI(
    title="SynPref curation", dependencies=[Depends(get_user)], docs_url=None, redoc_url=None, openapi_url=None
)


def may_read_runs(user: Any, dag_id: str) -> bool:
    """Airflow's own authorization: may ``user`` read the runs of ``dag_id`` (FAB, Keycloak, simple auth...)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
    )


def _authorize(user: Any, dag_id: str) -> None:
    if not may_read_runs(user, dag_id):
        raise HTTPException(403, f"not authorized to read the runs of {dag_id}")


def _inside(root: str, path: Any) -> bool:
    """A local path stays inside its root once symlinks are resolved (an object store has no symlinks)."""
    from pathlib import Path

    from synpref.io.storage import is_local

    if not is_local(path):
        return True
    base = Path(str(_store(root).root.path)).resolve()
    return Path(str(path.path)).resolve().is_relative_to(base)


def report_roots() -> list[str]:
    """``$SYNPREF_ROOT`` first, then ``$SYNPREF_REPORT_ROOTS`` (comma-separated), without repeats."""
    roots = [env("SYNPREF_ROOT")] + env("SYNPREF_REPORT_ROOTS").split(",")
    return list(dict.fromkeys(r.strip() for r in roots if r.strip()))


def _store(root: str):
    from airflow.sdk import ObjectStoragePath

    from synpref.io.layout import StorageLayout
    from synpref.io.storage import use_uri_factory

    use_uri_factory(ObjectStoragePath)
    return StorageLayout(ObjectStoragePath(root))


class _Cache:
    """A small LRU of values with an optional time to live (manifests 30 s; pages by manifest hash)."""

    def __init__(self, size: int, ttl_s: float | None = None) -> None:
        self.size, self.ttl_s, self.items, self.lock = size, ttl_s, OrderedDict(), threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            hit = self.items.get(key)
            if hit and (self.ttl_s is None or time.monotonic() - hit[0] < self.ttl_s):
                self.items.move_to_end(key)
                return hit[1]
        value = make()
        with self.lock:
            self.items[key] = (time.monotonic(), value)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_manifests = _Cache(512, MANIFEST_TTL_S)
_pages = _Cache(64)


def _manifest_bytes(path) -> bytes:
    return _manifests.get(str(path), path.read_bytes)


def _root(index: int) -> str:
    roots = report_roots()
    if not 0 <= index < len(roots):
        raise HTTPException(404, f"no storage root #{index} (configure SYNPREF_ROOT / SYNPREF_REPORT_ROOTS)")
    return roots[index]


def _page(kind: str, root: str, name: str) -> bytes:
    """A round's or run's report: the file the DAG wrote, else rendered now (cached by manifest content)."""
    from synpref.reporting.report import round_page, stage2_page

    if not _NAME.fullmatch(name):
        raise HTTPException(404, f"no {kind} named {name!r}")
    store = _store(root)
    target = store.round(name) if kind == "round" else store.stage2(name)
    written = target.report_dir / "index.html"
    if not _inside(root, target.dir) or not _inside(root, written):
        raise HTTPException(404, f"no {kind} named {name!r}")
    if written.exists():  # also the preview of a round or run awaiting its sign-off
        return written.read_bytes()
    if not target.is_complete():
        raise HTTPException(404, f"{kind} {name} is not published under {root}")
    digest = hashlib.sha256(_manifest_bytes(target.manifest)).hexdigest()
    render = (lambda: round_page(store, name)) if kind == "round" else (lambda: stage2_page(target))
    return _pages.get((kind, root, name, digest), lambda: render().html().encode())


def _fmt(x: Any) -> str:
    return "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x))


def _rows(kind: str, index: int, root: str, names: list[str]) -> str:
    from synpref.records import RoundManifest, Stage2Manifest

    store = _store(root)
    out = []
    for name in names:
        target = store.round(name) if kind == "round" else store.stage2(name)
        raw = _manifest_bytes(target.manifest)
        link = f'<a href="{kind}?root={index}&amp;name={html.escape(name)}">{html.escape(name)}</a>'
        if kind == "round":
            m = RoundManifest.model_validate_json(raw)
            s = m.summary
            cells = [s.gold, s.silver, s.best_rm_gold_accuracy, _benchmarks(m.steps.rm_benchmarks)]
            cells += [s.retrieved, s.review_queue, s.cost_usd]
        else:
            m = Stage2Manifest.model_validate_json(raw)
            c = m.counts
            cells = [m.round, c["input"], c["kept"], c["recycled"], c["dropped"], c.get("quarantined", 0)]
        out.append("<tr><td>" + link + "</td>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in cells) + "</tr>")
    return "\n".join(out)


def _benchmarks(record: Any) -> str | None:
    """The best RM on each public RM benchmark of the round, with its change from the round before."""
    if record is None or not record.benchmarks:
        return None
    cells = []
    for name, b in sorted(record.benchmarks.items()):
        change = f" ({b.vs_previous['difference']:+.3f})" if b.vs_previous else ""
        cells.append(f"{name} {b.best_rm['overall']['accuracy']:.3f}{change}" + (" regressed" if b.regressed else ""))
    return "; ".join(cells)


def _pager(param: str, page: int, total: int, other: str) -> str:
    pages = max(1, -(-total // PER_PAGE))
    links = [f'<a href="?{param}={p}{other}">{p}</a>' if p != page else f"<b>{p}</b>" for p in range(1, pages + 1)]
    return f'<div class="pager">page {" ".join(links)} · {total} in all</div>' if pages > 1 else ""


_STYLE = """<style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;
font-size:.85rem;margin:.4rem 0 1.2rem}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
td:first-child,th:first-child{text-align:left}h2{font-size:1.05rem;margin-top:1.6rem}.pager{font-size:.8rem}
.muted{color:#666;font-size:.85rem}</style>"""


@app.get("/", response_class=HTMLResponse)
def index(user: GetUserDep, rounds_page: int = Query(1, ge=1), runs_page: int = Query(1, ge=1)) -> str:
    """Every root: its rounds (newest first) and stage-2 runs, paginated, with links to their reports (only the
    kinds whose DAG runs the user may read)."""
    shown = {kind: may_read_runs(user, dag_id) for kind, dag_id in DAG_OF.items()}
    if not any(shown.values()):
        raise HTTPException(403, "not authorized to read the runs of the curation DAGs")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Curation</title>{_STYLE}</head><body>"]
    parts.append("<h1>SynPref curation</h1>")
    roots = report_roots()
    if not roots:
        parts.append("<p>No storage root configured: set SYNPREF_ROOT (and SYNPREF_REPORT_ROOTS).</p>")
    for i, root in enumerate(roots):
        store = _store(root)
        try:
            rounds = sorted(store.completed_rounds(), reverse=True) if shown["round"] else []
            runs = sorted(store.completed_stage2_runs(), reverse=True) if shown["stage2"] else []
        except Exception as e:  # an unreachable root must not take the page down
            parts.append(
                f"<h2>{html.escape(root)}</h2><p class='muted'>cannot list: {html.escape(type(e).__name__)}</p>"
            )
            continue
        shown_rounds = rounds[(rounds_page - 1) * PER_PAGE : rounds_page * PER_PAGE]
        shown_runs = runs[(runs_page - 1) * PER_PAGE : runs_page * PER_PAGE]
        parts.append(f"<h2>Storage root {html.escape(root)}</h2>")
        if shown["round"]:
            parts.append(f"<h3>Stage-1 rounds ({len(rounds)})</h3>")
        if rounds:
            head = ["round", "gold", "silver", "best RM on gold", "best RM on RM benchmarks", "retrieved"]
            head += ["review queue", "cost USD"]
            parts.append("<table class='rounds'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
            parts.append(_rows("round", i, root, shown_rounds) + "</table>")
            parts.append(_pager("rounds_page", rounds_page, len(rounds), f"&runs_page={runs_page}"))
        if shown["stage2"]:
            parts.append(f"<h3>Stage-2 runs ({len(runs)})</h3>")
        if runs:
            head = ["run", "round", "input", "kept", "recycled", "dropped", "quarantined"]
            parts.append("<table class='runs'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
            parts.append(_rows("stage2", i, root, shown_runs) + "</table>")
            parts.append(_pager("runs_page", runs_page, len(runs), f"&rounds_page={rounds_page}"))
    parts.append("</body></html>")
    return "\n".join(parts)


@app.get("/{kind}", response_class=HTMLResponse)
def report(
    user: GetUserDep,
    kind: Literal["round", "stage2"],
    root: int = Query(0, ge=0),
    name: str = Query(..., min_length=1),
) -> HTMLResponse:
    """A round's (``/round``) or a stage-2 run's (``/stage2``) report, for users who may read that DAG's runs."""
    _authorize(user, DAG_OF[kind])
    return HTMLResponse(with_back_link(_page(kind, _root(root), name)))


BACK_LINK = b'<p><a href="./" target="_self">&larr; Curation: every round and run</a></p>'


def with_back_link(page: bytes) -> bytes:
    """The report with a link back to the list at the top of its body (the report file itself stays as written)."""
    at = page.find(b"<body>")
    return page[: at + 6] + BACK_LINK + page[at + 6 :] if at >= 0 else BACK_LINK + page


def _report_of_run(dag_id: str, run_id: str) -> str | None:
    """The page URI the run's ``write_report`` task returned (XCom), if it has run."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=REPORT_TASK, key="return_value")
        row = session.scalars(query.limit(1)).first()
        value = XComModel.deserialize_value(row) if row is not None else None
        return value.get("uri") if isinstance(value, dict) else value


def locate(page_uri: str) -> tuple[str, int, str] | None:
    """``.../rounds/<r>/report/index.html`` or ``.../stage2/<run>/report/index.html`` under a configured root →
    (kind, root index, name)."""
    for i, root in enumerate(report_roots()):
        base = str(_store(root).root).rstrip("/") + "/"
        rel = page_uri[len(base) :].split("/") if page_uri.startswith(base) else []
        if len(rel) == 4 and rel[0] in ("rounds", "stage2") and rel[2:] == ["report", "index.html"]:
            return ("round" if rel[0] == "rounds" else "stage2"), i, rel[1]
    return None


@app.get("/dag-run/{dag_id}/{run_id}")
def dag_run_report(user: GetUserDep, dag_id: str, run_id: str):
    """The report of the round or stage-2 run a DAG run wrote (the "Curation report" tab of a run), for users
    who may read that DAG's runs."""
    _authorize(user, dag_id)
    uri = _report_of_run(dag_id, run_id)
    where = locate(uri) if isinstance(uri, str) else None
    if where is None:
        text = (
            "This run has not written a curation report (yet)."
            if uri is None
            else f"Report at {uri} (not under a configured root)."
        )
        return HTMLResponse(
            f"<!doctype html><html><head>{_STYLE}</head><body><p>{html.escape(text)}</p></body></html>"
        )
    kind, index, name = where
    return RedirectResponse(f"../../{kind}?root={index}&name={name}", status_code=307)


class SynPrefCurationPlugin(AirflowPlugin):
    name = "synpref_curation"
    fastapi_apps = [{"app": app, "url_prefix": "/curation", "name": "SynPref curation"}]
    external_views = [
        {"name": "Curation", "href": "curation/", "url_route": "curation", "destination": "nav", "category": "browse"},
        {
            "name": "Curation report",
            "href": "curation/dag-run/{DAG_ID}/{RUN_ID}",
            "url_route": "curation-report",
            "destination": "dag_run",
        },
    ]
