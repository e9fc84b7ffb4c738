"""Judging through the OpenAI Batch API (annotators with ``mode: batch``): half the price, answers within 24 h.

A task judges as usual, but a batch-mode annotator asks nothing: its requests missing from the LLM cache are
collected (``client.PendingRequest``). ``submit`` writes them as a Batch-API JSONL file (``custom_id`` = the
request's cache key, ``body`` = the online request's body), uploads it and creates the batch; the Airflow task
then waits for it in the triggerer (the OpenAI provider's ``OpenAIBatchTrigger``); ``ingest`` puts every answer
of its output file into the cache, and the task judges again: it finds those answers, asks for what is still
missing (a partly failed or expired batch) and writes its outputs once nothing is. So a re-run, or a batch that
partly failed, costs only what is missing, and the outputs are the online run's on the same answers.

A submission is recorded (``BatchSubmission``) at a path named by the annotator and the file's content before the
task waits, so a task that dies after submitting waits for the same batch instead of paying for it twice.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict

from synpref.io.storage import PathLike, as_path, read_json, write_json
from synpref.llm.breaker import BreakerTransport, EndpointBreaker, client_timeout
from synpref.llm.client import (
    AnnotatorConfig,
    AnnotatorError,
    BackendError,
    EndpointUnreachable,
    PendingRequest,
    ResponseCache,
    cache_value,
    completion_of,
)
from synpref.progress import log

ENDPOINT = "/v1/chat/completions"
IN_PROGRESS = {"validating", "in_progress", "finalizing", "cancelling"}


class BatchSubmission(BaseModel):
    """One submitted batch of one annotator (crosses the task's deferral as a dict)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    annotator: str
    batch_id: str
    input_file_id: str
    requests: int
    digest: str  # of the JSONL file
    attempt: int  # batches submitted before for the same requests


class BatchOutcome(BaseModel):
    """What ``ingest`` found: the batch's final status, answers put into the cache, requests that failed (why)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_id: str
    status: str
    answered: int
    failed: dict[str, int]  # error code → requests


def batch_jsonl(pending: list[PendingRequest]) -> bytes:
    """The Batch-API input file of one annotator's pending requests: one line per distinct request, in key order."""
    lines = {p.custom_id: p.body for p in pending}
    return "".join(
        json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": lines[cid]}, sort_keys=True) + "\n"
        for cid in sorted(lines)
    ).encode()


def by_annotator(pending: list[PendingRequest]) -> dict[str, list[PendingRequest]]:
    out: dict[str, list[PendingRequest]] = defaultdict(list)
    for p in pending:
        out[p.annotator].append(p)
    return dict(sorted(out.items()))


@contextmanager
def _client(cfg: AnnotatorConfig) -> Iterator:
    """The Batch/Files API client of one annotator, behind the endpoint's circuit breaker: an endpoint that cannot be
    reached, or that refuses the key, URL or model, fails in one line (as online judging does), not in a traceback."""
    import openai

    guard = EndpointBreaker(cfg.base_url)
    client = openai.OpenAI(
        base_url=cfg.base_url,
        api_key=cfg.resolved_key(),
        max_retries=cfg.max_retries,
        timeout=client_timeout(cfg.timeout_s),
        http_client=openai.DefaultHttpxClient(transport=BreakerTransport(guard)),
    )
    try:
        yield client
    except (openai.APIConnectionError, openai.APIStatusError) as e:
        status = getattr(e, "status_code", None)
        if guard.tripped or (not guard.answered and isinstance(e, openai.APIConnectionError)):
            raise EndpointUnreachable(guard.message(cfg.name)) from None
        if status in (401, 403, 404):
            raise AnnotatorError(
                f"annotator '{cfg.name}' (base_url {cfg.base_url}, model {cfg.model}) is misconfigured for the Batch "
                f"API: HTTP {status} {type(e).__name__} — check the URL and API key of its connection"
            ) from None
        raise
    finally:
        client.close()


def submit(
    cfg: AnnotatorConfig, pending: list[PendingRequest], record_dir: PathLike, metadata: dict[str, str]
) -> BatchSubmission:
    """Upload the pending requests and create their batch, or return the batch already submitted for the very same
    requests and not yet ingested (recorded in ``record_dir``). At most ``max_retries`` + 1 batches are tried for
    the same requests: then the task fails in one line (a later re-run tries again)."""
    content = batch_jsonl(pending)
    digest, n = hashlib.sha256(content).hexdigest(), content.count(b"\n")
    record = as_path(record_dir) / f"{cfg.name}-{digest[:16]}.json"
    tried = read_json(record)["submissions"] if record.exists() else []
    if tried and not tried[-1].get("ingested"):
        return BatchSubmission(**{k: v for k, v in tried[-1].items() if k != "ingested"})
    if len(tried) > cfg.max_retries:
        raise AnnotatorError(
            f"annotator '{cfg.name}': {n} requests still unanswered after {len(tried)} batches "
            f"(last: {tried[-1]['batch_id']}, {tried[-1].get('outcome')}); re-run the task to try again"
        )
    with _client(cfg) as client:
        uploaded = client.files.create(file=(f"{cfg.name}-{digest[:16]}.jsonl", io.BytesIO(content)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", metadata=metadata
        )
    sub = BatchSubmission(
        annotator=cfg.name,
        batch_id=batch.id,
        input_file_id=uploaded.id,
        requests=n,
        digest=digest,
        attempt=len(tried),
    )
    write_json({"submissions": [*tried, {**sub.model_dump(), "ingested": False}]}, record)
    log.info(
        "annotator %s: batch %s submitted (%d requests, attempt %d)",
        cfg.name,
        sub.batch_id,
        sub.requests,
        sub.attempt + 1,
    )
    return sub


def status(cfg: AnnotatorConfig, batch_id: str) -> str:
    with _client(cfg) as client:
        return client.batches.retrieve(batch_id).status


def ingest(cfg: AnnotatorConfig, sub: BatchSubmission, cache_dir: PathLike, record_dir: PathLike) -> BatchOutcome:
    """Every answer of a finished batch (completed, expired, failed or cancelled: whatever it answered) into the
    LLM cache; the submission is marked ingested (the next submission for requests still missing is a new batch)."""
    with _client(cfg) as client:
        batch = client.batches.retrieve(sub.batch_id)
        if batch.status in IN_PROGRESS:
            raise AnnotatorError(f"annotator '{cfg.name}': batch {sub.batch_id} is still {batch.status}")
        output = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
        errors = client.files.content(batch.error_file_id).text if batch.error_file_id else ""
    cache = ResponseCache(cache_dir)
    answered, failed = 0, defaultdict(int)
    for line in output.splitlines():
        ok, why = _ingest_line(cfg, line, cache)
        answered += ok
        if not ok:
            failed[why] += 1
    for line in errors.splitlines():
        if line.strip():
            error = (json.loads(line).get("error") or {}) if line.strip().startswith("{") else {}
            failed[str(error.get("code") or "error")] += 1
    outcome = BatchOutcome(batch_id=sub.batch_id, status=batch.status, answered=answered, failed=dict(failed))
    _mark_ingested(as_path(record_dir) / f"{cfg.name}-{sub.digest[:16]}.json", sub.batch_id, outcome)
    log.info(
        "annotator %s: batch %s %s: %d answers cached, failed %s",
        cfg.name,
        sub.batch_id,
        batch.status,
        answered,
        dict(failed) or "none",
    )
    return outcome


def _ingest_line(cfg: AnnotatorConfig, line: str, cache: ResponseCache) -> tuple[bool, str]:
    """One output line into the cache, parsed as an online reply is; (stored, why not)."""
    import openai

    try:
        row = json.loads(line)
        response = row.get("response") or {}
        custom_id = row["custom_id"]
    except (ValueError, KeyError, AttributeError, TypeError):
        return False, "bad_line"
    if not isinstance(custom_id, str) or len(custom_id) != 64 or response.get("status_code") != 200:
        return False, str(response.get("status_code") or "bad_line")
    try:
        out = completion_of(openai.types.chat.ChatCompletion.model_validate(response.get("body")), cfg.base_url)
    except (BackendError, ValueError):
        return False, "bad_reply"
    cache.put(custom_id, cache_value(cfg.model, out, out.verdict_logprobs is not None))
    return True, "ok"


def _mark_ingested(record, batch_id: str, outcome: BatchOutcome) -> None:
    tried = read_json(record)["submissions"] if record.exists() else []
    for t in tried:
        if t["batch_id"] == batch_id:
            t.update(ingested=True, outcome=f"{outcome.status}, {outcome.answered} answered, failed {outcome.failed}")
    write_json({"submissions": tried}, record)
