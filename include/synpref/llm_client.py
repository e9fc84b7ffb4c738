"""OpenAI-compatible chat calls for annotators: async, bounded concurrency, rate limit, the
openai client's own retries (exponential backoff + jitter on 429/5xx/timeouts/connection
errors), a response cache in object storage, token/cost accounting and a budget cap.

The library takes plain ``AnnotatorConfig`` objects; only the DAG layer reads Airflow connections.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .storage import PathLike, as_path, read_json, write_json

for _noisy in ("httpx", "httpx2", "httpcore", "openai"):  # one INFO line per request would drown task logs
    logging.getLogger(_noisy).setLevel(logging.WARNING)


class AnnotatorConfig(BaseModel):
    """One annotator model behind an OpenAI-compatible endpoint. The API key is never serialised."""

    model_config = ConfigDict(extra="forbid")
    name: str
    base_url: str
    model: str
    api_key_env: str | None = None
    api_key: str | None = Field(default=None, exclude=True, repr=False)
    samples: int = Field(default=3, ge=1)
    temperature: float = 0.7
    max_tokens: int = 512
    max_concurrency: int = Field(default=4, ge=1)
    requests_per_minute: float | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0

    def resolved_key(self) -> str:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                return key
            raise AnnotatorError(f"annotator '{self.name}': environment variable {self.api_key_env} (its API key) is not set")
        return "no-key"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000 * self.price_in_per_1k + completion_tokens / 1000 * self.price_out_per_1k


class AnnotatorError(RuntimeError):
    """A misconfigured annotator (bad URL, bad key, unknown model): fails the task, names the annotator."""


def load_annotators(uri: PathLike) -> list[AnnotatorConfig]:
    """YAML or JSON: a list of annotators, or ``{"annotators": [...]}``."""
    data = yaml.safe_load(as_path(uri).read_text())
    if isinstance(data, dict):
        data = data["annotators"]
    return [AnnotatorConfig.model_validate(a) for a in data]


@dataclass
class Budget:
    """Stops issuing new requests once ``usd`` or ``tokens`` is reached (None = unlimited)."""

    usd: float | None = None
    tokens: int | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0

    def exhausted(self) -> bool:
        return (self.usd is not None and self.spent_usd >= self.usd) or (self.tokens is not None and self.spent_tokens >= self.tokens)


@dataclass
class Usage:
    requests: int = 0
    cache_hits: int = 0
    errors: int = 0
    budget_skipped: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error_messages: list[str] = field(default_factory=list)

    new_cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Everything, for logs/XCom/CLI summaries (requests vs cache hits differ between runs)."""
        d = dict(self.__dict__)
        d["cost_usd"], d["new_cost_usd"] = round(d["cost_usd"], 6), round(d["new_cost_usd"], 6)
        d["error_messages"] = sorted(set(self.error_messages))[:10]
        return d

    def work_dict(self) -> dict[str, Any]:
        """Cache-invariant figures (tokens and cost of the annotations, fresh or cached): safe in artifacts."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6)}


@dataclass(frozen=True)
class Request:
    key: str  # caller's id for the request, e.g. "<pair_id>:<sample>"
    messages: tuple[tuple[str, str], ...]
    sample: int
    seed: int


@dataclass
class Response:
    key: str
    text: str | None
    status: str  # ok (fresh or cached) | error | budget
    error: str | None = None


def cache_key(model: str, messages: tuple[tuple[str, str], ...], temperature: float, max_tokens: int, sample: int, seed: int) -> str:
    blob = json.dumps([model, messages, temperature, max_tokens, sample, seed], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """``<cache_dir>/<h[:2]>/<hash>.json``: identical requests are never paid for twice."""

    def __init__(self, directory: PathLike | None):
        self.dir = as_path(directory) if directory else None

    def _path(self, h: str):
        return self.dir / h[:2] / f"{h}.json"

    def get(self, h: str) -> dict | None:
        if self.dir is None:
            return None
        p = self._path(h)
        return read_json(p) if p.exists() else None

    def put(self, h: str, value: dict) -> None:
        if self.dir is not None:
            write_json(value, self._path(h))


class _RateLimiter:
    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self.next_at = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            delay = self.next_at - now
            self.next_at = max(now, self.next_at) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


async def _run_async(cfg: AnnotatorConfig, requests: list[Request], cache: ResponseCache, budget: Budget, usage: Usage) -> list[Response]:
    import openai

    client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=cfg.resolved_key(), max_retries=cfg.max_retries, timeout=cfg.timeout_s)
    sem = asyncio.Semaphore(cfg.max_concurrency)
    limiter = _RateLimiter(cfg.requests_per_minute)

    async def one(req: Request) -> Response:
        h = cache_key(cfg.model, req.messages, cfg.temperature, cfg.max_tokens, req.sample, req.seed)
        hit = cache.get(h)
        if hit is not None:
            usage.cache_hits += 1
            usage.prompt_tokens += hit.get("prompt_tokens", 0)
            usage.completion_tokens += hit.get("completion_tokens", 0)
            usage.cost_usd += cfg.cost(hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0))
            return Response(req.key, hit["text"], "ok")
        async with sem:
            if budget.exhausted():
                usage.budget_skipped += 1
                return Response(req.key, None, "budget")
            await limiter.wait()
            usage.requests += 1
            try:
                out = await client.chat.completions.create(
                    model=cfg.model,
                    messages=[{"role": r, "content": c} for r, c in req.messages],
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                    seed=req.seed,
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise AnnotatorError(
                    f"annotator '{cfg.name}' (base_url {cfg.base_url}, model {cfg.model}) is misconfigured: "
                    f"HTTP {e.status_code} {type(e).__name__} — check the URL, model name and API key of its connection"
                ) from None
            except openai.APIConnectionError as e:
                usage.errors += 1
                usage.error_messages.append(f"{type(e).__name__}: cannot reach {cfg.base_url}")
                return Response(req.key, None, "error", f"{type(e).__name__}")
            except openai.APIError as e:
                usage.errors += 1
                usage.error_messages.append(f"{type(e).__name__}: {getattr(e, 'status_code', '')}")
                return Response(req.key, None, "error", type(e).__name__)
        text = out.choices[0].message.content if out.choices else None
        pt = out.usage.prompt_tokens if out.usage else 0
        ct = out.usage.completion_tokens if out.usage else 0
        cost = cfg.cost(pt, ct)
        usage.prompt_tokens += pt
        usage.completion_tokens += ct
        usage.cost_usd += cost
        usage.new_cost_usd += cost
        budget.spent_usd += cost
        budget.spent_tokens += pt + ct
        cache.put(h, {"model": cfg.model, "text": text, "prompt_tokens": pt, "completion_tokens": ct})
        return Response(req.key, text, "ok")

    try:
        return list(await asyncio.gather(*(one(r) for r in requests)))
    finally:
        await client.close()


def run_requests(cfg: AnnotatorConfig, requests: list[Request], cache_dir: PathLike | None, budget: Budget | None = None) -> tuple[list[Response], Usage]:
    """Issue (or read from cache) every request of one annotator; order of results = order of requests."""
    usage = Usage()
    responses = asyncio.run(_run_async(cfg, requests, ResponseCache(cache_dir), budget or Budget(), usage))
    return responses, usage
