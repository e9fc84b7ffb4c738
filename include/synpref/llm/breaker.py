"""A circuit breaker per annotator endpoint: fail in seconds on an endpoint that cannot be reached at all.

The openai client retries a failed connection with back-off, request by request, which is right for an endpoint
that answered before and dropped a connection, and wrong for a mistyped host or port: every request of a task would
go through all its retries before the task gave up (hours on a stage-2 shard). The breaker sits in the HTTP
transport, sees every connection attempt, and trips once an endpoint that has *never* answered has failed
``TRIP_AFTER`` connection attempts in a row (refused, unresolvable host, connect timeout). A tripped breaker answers
every further attempt itself, at once, with a reply the client does not retry, and the backend turns it into
``EndpointUnreachable``: one line naming the endpoint, what failed and the fix. Any reply from the endpoint (even a
429 or a 500) disarms it for the task, so transient failures keep the client's retries (``Retry-After`` honoured).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import httpx2 as httpx  # the HTTP library of the openai client

TRIP_AFTER = 6  # connection attempts in a row, with no answer ever (a request and its retries are 5 by default)
CONNECT_TIMEOUT_S = 10.0  # a TCP/TLS connection not made within this is a failed attempt (the read timeout is apart)
HEADER = "x-synpref-unreachable"  # marks the breaker's own reply (never parsed, never cached)

# kind → (what failed, the fix)
KINDS = {
    "refused": ("connection refused", "is the server running, and are the host and port of the connection right?"),
    "dns": ("the host name does not resolve", "check the host name in the connection's base URL"),
    "connect_timeout": (
        f"no connection within {CONNECT_TIMEOUT_S:g} s",
        "check the host, the port and any firewall in between",
    ),
    "connect": ("cannot connect", "check the connection's base URL"),
}


def failure_kind(exc: BaseException) -> str:
    """What a failed connection attempt was: refused, an unresolvable host, a connect timeout, or other."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return "dns"
        if isinstance(seen, ConnectionRefusedError):
            return "refused"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    if "refused" in text:
        return "refused"
    if any(s in text for s in ("name or service", "name resolution", "nodename nor servname", "getaddrinfo")):
        return "dns"
    return "connect"


@dataclass
class EndpointBreaker:
    """Connection attempts to one endpoint within one task: trips after ``trip_after`` failed attempts in a row
    while the endpoint has never answered."""

    base_url: str
    trip_after: int = TRIP_AFTER
    answered: bool = False
    failures: int = 0
    kind: str = "connect"

    @property
    def tripped(self) -> bool:
        return not self.answered and self.failures >= self.trip_after

    def on_answer(self) -> None:
        self.answered, self.failures = True, 0

    def on_connect_failure(self, exc: BaseException) -> None:
        if not self.answered:
            self.failures += 1
            self.kind = failure_kind(exc)

    def message(self, annotator: str) -> str:
        what, fix = KINDS[self.kind]
        return (
            f"annotator '{annotator}' cannot reach {self.base_url}: {what} on {self.failures} connection attempts in "
            f"a row, and it never answered — {fix} The answers received are cached; a re-run asks only for the "
            "missing ones."
        )

    def reply(self) -> httpx.Response:
        """The breaker's own answer to an attempt: a 503 the openai client does not retry (``x-should-retry``)."""
        headers = {"x-should-retry": "false", HEADER: self.kind}
        return httpx.Response(503, headers=headers, json={"error": {"message": f"{self.base_url} unreachable"}})

    def guard_failure(self, exc: BaseException) -> httpx.Response:
        """Count a failed attempt; the breaker's reply once that trips it, else the failure again (to retry)."""
        self.on_connect_failure(exc)
        if self.tripped:
            return self.reply()
        raise exc


class BreakerTransport(httpx.BaseTransport):
    """The synchronous client's transport (batch uploads and polls) with the breaker in front of it."""

    def __init__(self, breaker: EndpointBreaker) -> None:
        self.breaker, self.inner = breaker, httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.breaker.tripped:
            return self.breaker.reply()
        try:
            response = self.inner.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            return self.breaker.guard_failure(e)
        self.breaker.on_answer()
        return response

    def close(self) -> None:
        self.inner.close()


def client_timeout(read_s: float) -> httpx.Timeout:
    """The clients' timeouts: ``read_s`` for a reply, at most ``CONNECT_TIMEOUT_S`` for a connection."""
    return httpx.Timeout(read_s, connect=min(read_s, CONNECT_TIMEOUT_S))
