"""OpenAI-compatible chat calls for annotators: async, bounded concurrency, rate limit, the
openai client's own retries (exponential backoff + jitter on 429/5xx/timeouts/connection
errors), a response cache in object storage, token/cost accounting and a budget cap.

The library takes plain ``AnnotatorConfig`` objects; only the DAG layer reads Airflow connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import itertools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx2 as httpx  # the HTTP library of the openai client (its fork of httpx)
import yaml
from pydantic import ValidationError

from synpref.io.storage import PathLike, as_path, dumps_json, is_local, replace_local, write_json
from synpref.llm.breaker import HEADER as UNREACHABLE_HEADER
from synpref.llm.breaker import EndpointBreaker, client_timeout
from synpref.progress import Progress
from synpref.settings import AnnotatorConfig, AnnotatorError  # noqa: F401 (the library's annotator API)

log = logging.getLogger(__name__)

for _noisy in ("httpx", "httpx2", "httpcore", "openai"):  # one INFO line per request would drown task logs
    logging.getLogger(_noisy).setLevel(logging.WARNING)


class EndpointError(RuntimeError):
    """An endpoint failed more than ``max_error_share`` of a task's requests: the task fails so Airflow
    retries it; the answers it did get are cached, so the retry asks only for the missing ones."""


class EndpointUnreachable(EndpointError):
    """An endpoint that never answered tripped its circuit breaker (``synpref.llm.breaker``): the task fails within
    seconds, in one line naming the endpoint, what failed and the fix."""


def validation_message(e: ValidationError) -> str:
    """A pydantic error → 'field 'x': message' (the first problem, in the user's words)."""
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    what = "unknown field (a typo?)" if err["type"] == "extra_forbidden" else err["msg"]
    return f"field '{where}': {what}" if where else what


def annotator_config(data: Any, where: str = "", index: int = 0) -> AnnotatorConfig:
    """One annotator from a mapping; AnnotatorError (one line, naming it and the field) when it is wrong."""
    name = data.get("name") if isinstance(data, dict) else None
    who = f"{where}: " * bool(where) + (f"annotator '{name}'" if name else f"annotator #{index + 1}")
    if not isinstance(data, dict):
        raise AnnotatorError(f"{who}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return AnnotatorConfig.model_validate(data)
    except ValidationError as e:
        raise AnnotatorError(f"{who}: {validation_message(e)}") from None


def load_annotators(uri: PathLike) -> list[AnnotatorConfig]:
    """YAML or JSON: a non-empty list of annotators, or ``{"annotators": [...]}``; names must be unique."""
    p = as_path(uri)
    if not p.exists():
        raise AnnotatorError(f"annotators file not found: {uri}")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise AnnotatorError(f"{uri}: not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict):
        if set(data) != {"annotators"}:
            raise AnnotatorError(
                f"{uri}: expected a list of annotators or 'annotators: [...]', got keys {sorted(data)}"
            )
        data = data["annotators"]
    if not isinstance(data, list) or not data:
        raise AnnotatorError(f"{uri}: no annotators: expected a non-empty list")
    out = [annotator_config(a, str(uri), i) for i, a in enumerate(data)]
    dupes = sorted(n for n, c in Counter(a.name for a in out).items() if c > 1)
    if dupes:
        raise AnnotatorError(f"{uri}: annotator names must be unique: {', '.join(dupes)} repeated")
    return out


@dataclass
class Budget:
    """Stops issuing new requests once ``usd`` or ``tokens`` is reached (None = unlimited)."""

    usd: float | None = None
    tokens: int | None = None
    spent_usd: float = 0.0
    spent_tokens: int = 0

    def exhausted(self) -> bool:
        return (self.usd is not None and self.spent_usd >= self.usd) or (
            self.tokens is not None and self.spent_tokens >= self.tokens
        )


@dataclass
class Usage:
    requests: int = 0
    cache_hits: int = 0
    errors: int = 0
    budget_skipped: int = 0
    missing_usage: int = 0  # answers without token counts (their tokens and cost count as 0)
    cache_write_errors: int = 0  # answers used but not cached (the cache could not be written)
    implausible_usage: int = 0  # answers whose token counts could not be true (counted from the text instead)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the endpoint's prefix cache (as it reported)
    cost_usd: float = 0.0
    prompt_chars: int = 0  # judging prompts: characters in all
    shared_prefix_chars: int = 0  # ... and in the prefix each shares with an earlier prompt of the task
    error_messages: list[str] = field(default_factory=list)

    new_cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Everything, for logs/XCom/CLI summaries (requests vs cache hits differ between runs)."""
        d = dict(self.__dict__)
        d["cost_usd"], d["new_cost_usd"] = round(d["cost_usd"], 6), round(d["new_cost_usd"], 6)
        d["error_messages"] = sorted(set(self.error_messages))[:10]
        return d

    def add(self, other: Usage) -> None:
        """Add another call's usage (one annotator's requests asked in several waves)."""
        for name, value in other.__dict__.items():
            setattr(self, name, getattr(self, name) + value)

    def work_dict(self) -> dict[str, Any]:
        """Cache-invariant figures (tokens and cost of the annotations, fresh or cached): safe in artifacts."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "prompt_chars": self.prompt_chars,
            "shared_prefix_chars": self.shared_prefix_chars,
        }


@dataclass(frozen=True)
class Request:
    key: str  # caller's id for the request, e.g. "<pair_id>:<sample>"
    messages: tuple[tuple[str, str], ...]
    sample: int
    seed: int
    choices: int = 1  # completions asked in one request (``n``)


@dataclass
class Response:
    key: str
    text: str | None
    status: str  # ok (fresh or cached) | error | budget | pending (batch mode: collected for a batch, not asked)
    error: str | None = None
    verdict_logprobs: dict[str, float] | None = None  # {"1": lp, "2": lp} at the final verdict token, if asked
    more_texts: tuple[str, ...] = ()  # the texts of the request's further choices (``n`` > 1), in index order

    def texts(self) -> list[str | None]:
        """Every choice's text, the first one first (one entry, None, for an unanswered request)."""
        return [self.text, *self.more_texts]


def cache_key(
    namespace: str,
    model: str,
    messages: tuple[tuple[str, str], ...],
    temperature: float,
    max_tokens: int,
    sample: int,
    seed: int,
    logprobs: bool = False,
    choices: int = 1,
) -> str:
    """The request's identity; ``namespace`` (the endpoint) keeps a wrong endpoint's answers from being reused.
    A request for logprobs, or for several choices, is another request (its answer differs); one sampled choice
    keeps the old key."""
    key = [namespace, model, messages, temperature, max_tokens, sample, seed] + (["logprobs"] if logprobs else [])
    key += [f"n={choices}"] if choices > 1 else []
    blob = json.dumps(key, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """``<cache_dir>/<h[:2]>/<hash>.json``: identical requests are never paid for twice.

    Only real answers are stored (non-empty text); an entry that cannot be read is a miss. A local cache
    directory is read and written with plain ``os`` calls (hundreds of entries per second at high
    concurrency); an object store through its path object."""

    def __init__(self, directory: PathLike | None, refresh: bool = False):
        self.dir = as_path(directory) if directory else None
        self.local = Path(self.dir.path) if self.dir is not None and is_local(self.dir) else None
        self.refresh = refresh

    def _path(self, h: str):
        return (self.local if self.local is not None else self.dir) / h[:2] / f"{h}.json"

    def get(self, h: str) -> dict | None:
        if self.dir is None or self.refresh:
            return None
        p = self._path(h)
        try:
            value = json.loads(p.read_bytes()) if p.exists() else None
        except (OSError, ValueError):
            return None  # torn or corrupt entry: ask again
        ok = isinstance(value, dict) and isinstance(value.get("text"), str) and value["text"].strip()
        return value if ok else None

    def put(self, h: str, value: dict) -> None:
        if self.dir is None:
            return
        if self.local is None:
            write_json(value, self._path(h))
            return
        path = self._path(h)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_local(path, dumps_json(value))


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


# --- judge backends: one async ``complete`` each; cache, budget, rate limit, retries and accounting wrap them ---


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion, as a backend receives it."""

    model: str
    messages: tuple[tuple[str, str], ...]
    temperature: float
    max_tokens: int
    seed: int
    logprobs: bool = False  # ask for the tokens' log-probabilities (top 5 alternatives)
    n: int = 1  # choices


def chat_body(request: ChatRequest) -> dict:
    """The JSON body of a chat completion (online and in a batch file alike)."""
    body = {
        "model": request.model,
        "messages": [{"role": r, "content": c} for r, c in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
    }
    if request.logprobs:
        body.update(logprobs=True, top_logprobs=5)
    if request.n > 1:
        body["n"] = request.n
    return body


@dataclass(frozen=True)
class PendingRequest:
    """A batch-mode request missing from the cache: its cache key (the batch line's ``custom_id``) and body."""

    annotator: str
    custom_id: str
    body: dict


@dataclass(frozen=True)
class Completion:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = True  # False: the endpoint sent no token counts (counted as 0, and counted)
    verdict_logprobs: dict[str, float] | None = None  # {"1": lp, "2": lp} at the final verdict token
    cached_tokens: int = 0  # prompt tokens served from the endpoint's prefix cache
    more_texts: tuple[str, ...] = ()  # further choices' texts (``n`` > 1; completion_tokens counts them all)


class BackendError(RuntimeError):
    """A request that failed: ``kind`` is recorded as the sample's reason; ``retryable`` asks the wrapper to retry."""

    def __init__(self, kind: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.kind, self.retryable = kind, retryable


class JudgeBackend(Protocol):
    """An LLM endpoint. Raise ``AnnotatorError`` for misconfiguration (fails the task), ``BackendError`` otherwise."""

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...


CONNECTIONS_PER_CLIENT = 16
REPLY_BYTES_PER_TOKEN = 64  # JSON-escaped non-ASCII text takes up to 12 bytes a character
REPLY_OVERHEAD_BYTES = 16_384
CHARS_PER_TOKEN = 4  # the estimate used when a server's token counts are implausible
MAX_CHARS_PER_TOKEN = 24  # fewer reported tokens than chars / 24 is not a count, it is a bug (or a bypass)


def reply_cap(cfg: AnnotatorConfig) -> int:
    """The largest reply body read (bytes): a multiple of ``max_tokens`` per choice asked; a larger one is a bad
    reply."""
    return REPLY_OVERHEAD_BYTES + REPLY_BYTES_PER_TOKEN * cfg.max_tokens * cfg.choices_per_request


class CappedTransport(httpx.AsyncBaseTransport):
    """httpx transport that reads at most ``cap`` bytes of a reply: a larger one becomes a 413 answer of this
    client's own (never parsed, never cached, not retried) — a 10 MiB reply costs no memory. The endpoint's circuit
    breaker sees every connection attempt (``synpref.llm.breaker``)."""

    CAP_HEADER = "x-synpref-reply-cap"

    def __init__(self, cap: int, guard: EndpointBreaker) -> None:
        self.cap, self.breaker = cap, guard
        self.inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.breaker.tripped:
            return self.breaker.reply()
        try:
            response = await self.inner.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            return self.breaker.guard_failure(e)
        self.breaker.on_answer()
        length = response.headers.get("content-length", "")
        chunks, size, too_large = [], 0, length.isdigit() and int(length) > self.cap
        if not too_large:
            async for chunk in response.stream:
                chunks.append(chunk)
                size += len(chunk)
                if size > self.cap:
                    too_large = True
                    break
        await response.aclose()
        body = b"".join(chunks)
        if too_large:
            message = f"reply larger than {self.cap} bytes (64 × max_tokens per choice + 16 KiB)"
            return httpx.Response(413, headers={self.CAP_HEADER: str(self.cap)}, json={"error": {"message": message}})
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(response.status_code, headers=headers, content=body, extensions=response.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()


class OpenAIBackend:
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, ...) via the ``openai`` client, its retries."""

    def __init__(self, cfg: AnnotatorConfig) -> None:
        import openai

        self.cfg, self.openai = cfg, openai
        self.breaker = EndpointBreaker(cfg.base_url)  # one per endpoint and task: every client of it shares it
        # One client (connection pool) per CONNECTIONS_PER_CLIENT requests in flight: httpx scans its whole
        # pool for every request, which makes one large pool CPU-bound at high concurrency.
        self.clients = [
            openai.AsyncOpenAI(
                base_url=cfg.base_url,
                api_key=cfg.resolved_key(),
                max_retries=cfg.max_retries,
                timeout=client_timeout(cfg.timeout_s),
                http_client=openai.DefaultAsyncHttpxClient(transport=CappedTransport(reply_cap(cfg), self.breaker)),
            )
            for _ in range(math.ceil(cfg.max_concurrency / CONNECTIONS_PER_CLIENT))
        ]
        self.turn = itertools.cycle(self.clients)
        self.completion_type = openai.types.chat.ChatCompletion

    async def complete(self, request: ChatRequest) -> Completion:
        openai, cfg = self.openai, self.cfg
        try:
            # the client's own POST (its retries, errors and parsing) with a plain JSON body: the typed
            # ``chat.completions.create`` re-walks every message through its TypedDict transform (~1 ms)
            body = chat_body(request)
            out = await next(self.turn).post("/chat/completions", body=body, cast_to=self.completion_type)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise AnnotatorError(
                f"annotator '{cfg.name}' (base_url {cfg.base_url}, model {cfg.model}) is misconfigured: "
                f"HTTP {e.status_code} {type(e).__name__} — check the URL, model name and API key of its connection"
            ) from None
        except openai.APIStatusError as e:
            if UNREACHABLE_HEADER in e.response.headers:
                raise EndpointUnreachable(self.breaker.message(cfg.name)) from None
            if CappedTransport.CAP_HEADER not in e.response.headers:
                raise BackendError(type(e).__name__, f"{type(e).__name__}: {e.status_code}") from None
            raise BackendError("reply_too_large", f"{cfg.base_url}: {e.message}") from None
        except openai.APIConnectionError as e:  # already retried by the client
            raise BackendError(type(e).__name__, f"{type(e).__name__}: cannot reach {cfg.base_url}") from None
        except openai.APIError as e:
            raise BackendError(type(e).__name__, f"{type(e).__name__}: {getattr(e, 'status_code', '')}") from None
        except (ValueError, TypeError, AttributeError) as e:  # a reply the client cannot parse
            raise BackendError(
                "bad_reply", f"unparseable reply from {cfg.base_url}: {type(e).__name__}", True
            ) from None
        return completion_of(out, cfg.base_url)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


def completion_of(out: Any, where: str) -> Completion:
    """A chat-completion reply → Completion; a junk reply (HTML, no choices, null content) is a retryable error."""
    choices = getattr(out, "choices", None)
    if not isinstance(choices, list) and not hasattr(out, "choices"):
        raise BackendError("bad_reply", f"reply from {where} is not a chat completion ({type(out).__name__})", True)
    if not choices:
        raise BackendError("empty_reply", f"reply from {where} has no choices", True)
    if all(isinstance(getattr(c, "index", None), int) for c in choices):
        choices = sorted(choices, key=lambda c: c.index)
    text = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(text, str) or not text.strip():
        raise BackendError("empty_reply", f"reply from {where} has no message content", True)
    usage = getattr(out, "usage", None)
    tokens = [getattr(usage, k, None) for k in ("prompt_tokens", "completion_tokens")]
    reported = all(isinstance(t, int) and t >= 0 for t in tokens)
    logprobs = verdict_logprobs(getattr(getattr(choices[0], "logprobs", None), "content", None))
    counts = [t if isinstance(t, int) and t >= 0 else 0 for t in tokens]
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
    cached = cached if isinstance(cached, int) and 0 <= cached <= counts[0] else 0
    more = tuple(_further_texts(choices))
    return Completion(text, *counts, reported, logprobs, cached, more)


def _further_texts(choices: list) -> list[str]:
    """The texts of the choices after the first, up to the first one without text: a sample the endpoint did not
    give is asked again, never guessed."""
    out = []
    for choice in choices[1:]:
        text = getattr(getattr(choice, "message", None), "content", None)
        if not isinstance(text, str) or not text.strip():
            break
        out.append(text)
    return out


_DIGIT = {"1", "2"}


def verdict_logprobs(content: Any) -> dict[str, float] | None:
    """Log-probabilities of "1" and "2" at the completion's final verdict token: the last token that carries a
    verdict digit, with only closing brackets, punctuation or whitespace after it. The alternatives are read
    from its ``top_logprobs`` (a digit missing there gets a floor). None when the reply has no logprobs or no
    such token: the verdict is then the sampled text's. Only the completion is read, never the prompt, so a
    candidate's text cannot place a verdict token here."""
    if not isinstance(content, list) or not content:
        return None
    for entry in reversed(content):
        token = str(getattr(entry, "token", "") or "")
        digits = {c for c in token if c.isdigit()}
        if not digits:
            if token.strip(" \n\t]).*_`'\"") == "":
                continue
            return None
        if len(digits) != 1 or not digits <= _DIGIT:
            return None
        out = {d: -30.0 for d in sorted(_DIGIT)}
        for alt in getattr(entry, "top_logprobs", None) or []:
            alt_digits = {c for c in str(getattr(alt, "token", "")) if c.isdigit()}
            lp = getattr(alt, "logprob", None)
            if len(alt_digits) == 1 and alt_digits <= _DIGIT and isinstance(lp, (int, float)) and math.isfinite(lp):
                d = alt_digits.pop()
                out[d] = max(out[d], float(lp))
        own = getattr(entry, "logprob", None)
        if isinstance(own, (int, float)) and math.isfinite(own):
            d = digits.pop()
            out[d] = max(out[d], float(own))
        return out
    return None


# a factory, or "module:Class" imported on first use (a backend module may import this one: no import cycle)
BACKENDS: dict[str, Callable[[AnnotatorConfig], JudgeBackend] | str] = {
    "openai": OpenAIBackend,
    "replay": "synpref.llm.replay:ReplayBackend",  # recorded verdicts as a judge
}


def register_backend(name: str, factory: Callable[[AnnotatorConfig], JudgeBackend] | str) -> None:
    """Make ``backend: <name>`` usable in annotator configs (connections' extra, YAML)."""
    BACKENDS[name] = factory


def make_backend(cfg: AnnotatorConfig) -> JudgeBackend:
    if cfg.backend not in BACKENDS:
        raise AnnotatorError(f"annotator '{cfg.name}': unknown backend {cfg.backend!r} (known: {sorted(BACKENDS)})")
    factory = BACKENDS[cfg.backend]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    return factory(cfg)


def _plausible_count(reported: int, chars: int, most: int) -> bool:
    return chars / MAX_CHARS_PER_TOKEN <= reported <= most


def plausible(out: Completion, chat: ChatRequest, usage: Usage) -> Completion:
    """The completion with token counts that could be true: a count beyond what was sent or received (more
    tokens than characters, more than ``max_tokens``, or far fewer than the text needs) is replaced by an
    estimate from the text (``CHARS_PER_TOKEN``) and counted in ``implausible_usage``."""
    if not out.usage_reported:
        return out
    prompt_chars = sum(len(c) for _, c in chat.messages)
    texts = [out.text or "", *out.more_texts]
    text_chars = sum(map(len, texts))
    ok_prompt = _plausible_count(out.prompt_tokens, prompt_chars, prompt_chars + 64 * len(chat.messages) + 64)
    most = sum(min(chat.max_tokens, len(t)) + 16 for t in texts)
    ok_completion = _plausible_count(out.completion_tokens, text_chars, most)
    if ok_prompt and ok_completion:
        return out
    usage.implausible_usage += 1
    pt = out.prompt_tokens if ok_prompt else math.ceil(prompt_chars / CHARS_PER_TOKEN)
    ct = out.completion_tokens if ok_completion else math.ceil(text_chars / CHARS_PER_TOKEN)
    return Completion(out.text, pt, ct, True, out.verdict_logprobs, min(out.cached_tokens, pt), out.more_texts)


async def _complete_with_retries(backend: JudgeBackend, request: ChatRequest, max_retries: int) -> Completion:
    for attempt in range(max_retries + 1):
        try:
            return await backend.complete(request)
        except BackendError as e:
            if not e.retryable or attempt == max_retries:
                raise
            await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


async def _run_async(
    cfg: AnnotatorConfig,
    requests: list[Request],
    cache: ResponseCache,
    budget: Budget,
    usage: Usage,
    logprobs: bool = False,
    pending: list[PendingRequest] | None = None,
) -> list[Response]:
    backend = make_backend(cfg)
    sem = asyncio.Semaphore(cfg.max_concurrency)
    limiter = _RateLimiter(cfg.requests_per_minute)
    namespace = cfg.cache_namespace or cfg.base_url
    hashes = [
        cache_key(
            namespace, cfg.model, r.messages, cfg.temperature, cfg.max_tokens, r.sample, r.seed, logprobs, r.choices
        )
        for r in requests
    ]
    # cache reads in one go and writes on one thread: file I/O never blocks the requests in flight
    cached = await asyncio.to_thread(lambda: {h: v for h in set(hashes) if (v := cache.get(h)) is not None})
    writer, writes = ThreadPoolExecutor(1, thread_name_prefix="llm-cache"), []

    async def one(req: Request, h: str) -> Response:
        hit = cached.get(h)
        if hit is not None:
            return _cached_response(cfg, usage, req, hit)
        chat = ChatRequest(cfg.model, req.messages, cfg.temperature, cfg.max_tokens, req.seed, logprobs, req.choices)
        if pending is not None and cfg.mode == "batch":
            pending.append(PendingRequest(cfg.name, h, chat_body(chat)))
            return Response(req.key, None, "pending")
        async with sem:
            if budget.exhausted():
                usage.budget_skipped += 1
                return Response(req.key, None, "budget")
            await limiter.wait()
            usage.requests += 1
            try:
                out = await _complete_with_retries(backend, chat, cfg.max_retries)
            except BackendError as e:
                usage.errors += 1
                usage.error_messages.append(str(e))
                return Response(req.key, None, "error", e.kind)
        out = plausible(out, chat, usage)
        cost = _account(cfg, usage, out.prompt_tokens, out.completion_tokens, out.cached_tokens)
        usage.missing_usage += not out.usage_reported
        usage.new_cost_usd += cost
        budget.spent_usd += cost
        budget.spent_tokens += out.prompt_tokens + out.completion_tokens
        value = cache_value(cfg.model, out, logprobs)
        writes.append(writer.submit(cache.put, h, value))  # off the event loop, one writer thread
        return Response(req.key, out.text, "ok", verdict_logprobs=out.verdict_logprobs, more_texts=out.more_texts)

    async def counted(req: Request, h: str, progress: Progress) -> Response:
        response = await one(req, h)
        progress.update()
        return response

    try:
        with Progress(f"annotator {cfg.name}", len(requests), "requests") as progress:
            responses = list(await asyncio.gather(*(counted(r, h, progress) for r, h in zip(requests, hashes))))
        failed = await asyncio.to_thread(_failed_writes, writes)  # every answer stored (or known not to be)
        if failed:
            usage.cache_write_errors += len(failed)
            log.warning(
                "annotator %s: %d answers could not be stored in the LLM cache (%s); they are kept for this task's "
                "outputs, and a re-run will ask for them again",
                cfg.name,
                len(failed),
                failed[0],
            )
        return responses
    finally:
        writer.shutdown(wait=True)
        await backend.aclose()


def _account(cfg: AnnotatorConfig, usage: Usage, pt: int, ct: int, cached: int = 0) -> float:
    """Count an answer's tokens and cost (at the annotator's prices) in ``usage``; → its cost."""
    cost = cfg.cost(pt, ct, cached)
    usage.prompt_tokens += pt
    usage.completion_tokens += ct
    usage.cached_prompt_tokens += cached
    usage.cost_usd += cost
    return cost


def _cached_response(cfg: AnnotatorConfig, usage: Usage, req: Request, hit: dict) -> Response:
    """A cached answer as a response, counted as it was billed (the figures do not change on a re-run)."""
    usage.cache_hits += 1
    _account(cfg, usage, hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0), hit.get("cached_tokens", 0))
    more = tuple(itertools.takewhile(lambda t: isinstance(t, str), hit.get("more_texts") or ()))
    return Response(req.key, hit["text"], "ok", verdict_logprobs=hit.get("verdict_logprobs"), more_texts=more)


def cache_value(model: str, out: Completion, logprobs: bool) -> dict:
    """What the cache stores of an answer (online or from a batch)."""
    return {
        "model": model,
        "text": out.text,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        **({"cached_tokens": out.cached_tokens} if out.cached_tokens else {}),
        **({"verdict_logprobs": out.verdict_logprobs} if logprobs else {}),
        **({"more_texts": list(out.more_texts)} if out.more_texts else {}),
    }


def _failed_writes(writes: list) -> list[str]:
    """The cache writes that failed (disk full, read-only storage), as messages: a cache that cannot be written
    must not cost the answers already paid for."""
    failed = []
    for w in writes:
        try:
            w.result()
        except OSError as e:
            failed.append(str(e))
    return failed


def run_requests(
    cfg: AnnotatorConfig,
    requests: list[Request],
    cache_dir: PathLike | None,
    budget: Budget | None = None,
    logprobs: bool = False,
    pending: list[PendingRequest] | None = None,
) -> tuple[list[Response], Usage]:
    """Issue (or read from cache) every request of one annotator; order of results = order of requests.
    ``logprobs``: ask for the verdict token's log-probabilities (cached with the answer). A batch-mode annotator
    asks nothing: its cache misses are appended to ``pending`` (for a batch) and answered ``pending``."""
    if cfg.mode == "batch" and pending is None:
        raise AnnotatorError(
            f"annotator '{cfg.name}' has mode: batch, which only stage 2's annotate task in Airflow submits "
            "(it waits for the batch in the triggerer); use mode: online here"
        )
    usage = Usage()
    cache = ResponseCache(cache_dir, refresh=cfg.cache == "refresh")
    responses = asyncio.run(_run_async(cfg, requests, cache, budget or Budget(), usage, logprobs, pending))
    check_error_share(cfg, usage)
    return responses, usage


def check_error_share(cfg: AnnotatorConfig, usage: Usage) -> None:
    """Raise EndpointError when more than ``max_error_share`` of the requests sent failed."""
    if usage.requests and usage.errors / usage.requests > cfg.max_error_share:
        rejected_n = cfg.choices_per_request > 1 and any("BadRequestError" in m for m in usage.error_messages)
        raise EndpointError(
            f"annotator '{cfg.name}' ({cfg.base_url}): {usage.errors} of {usage.requests} requests failed "
            f"(more than {cfg.max_error_share:.0%}): {'; '.join(sorted(set(usage.error_messages))[:3])}. "
            + (
                "If the endpoint does not accept several choices a request (n), set choices_per_request: 1. "
                if rejected_n
                else ""
            )
            + "The answers received are cached; a re-run asks only for the missing ones."
        )
