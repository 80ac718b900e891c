"""Load shedding, read deadlines and request metrics, as one plain ASGI middleware.

Under overload a queue only makes every request late: past ``api.max_in_flight`` concurrent
requests a new one is refused at once with 503 and ``Retry-After``, so the storefront can fall
back (cached list, bestsellers) instead of waiting. A read (GET) unanswered after
``api.read_timeout_s`` is abandoned with 503: its client has usually given up, and the work
would delay the requests behind it. Writes are never cut short (a publish half done would leave
the client unsure what was accepted). Operational endpoints are exempt from shedding, so probes
and scrapes still answer when the API is saturated.

Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs each
request in an extra task and costs a measurable share of a millisecond per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from prometheus_client import Counter, Histogram

REQUESTS = Counter("engine_api_requests_total", "HTTP requests", ["route", "status"])
REQUEST_SECONDS = Histogram("engine_api_request_seconds", "HTTP request latency", ["route"],
                            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
SHED = Counter("engine_api_shed_total", "Requests refused or abandoned under load", ["why"])

#: Probes and scrapes: never shed (nor, in engine.api.auth, authenticated or rate limited), so
#: they answer when the API is saturated.
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_SOON = [(b"retry-after", b"1")]
Scope = dict[str, Any]


class Guard:
    def __init__(self, app: Any, max_in_flight: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.read_timeout_s = read_timeout_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        if self.in_flight >= self.max_in_flight and scope["path"] not in EXEMPT:
            SHED.labels("in_flight").inc()
            await reply(send, 503, f"overloaded: {self.in_flight} requests in flight, "
                        "retry shortly", RETRY_SOON)
            self._observe("shed", 503, started)
            return
        status = 500
        responded = False

        async def send_and_watch(message: dict[str, Any]) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        self.in_flight += 1
        try:
            if scope["method"] in ("GET", "HEAD"):
                try:
                    async with asyncio.timeout(self.read_timeout_s):
                        await self.app(scope, receive, send_and_watch)
                except TimeoutError:
                    SHED.labels("deadline").inc()
                    if not responded:
                        status = 503
                        await reply(send, 503, f"not answered within {self.read_timeout_s} s "
                                    "(overloaded), retry shortly", RETRY_SOON)
            else:
                await self.app(scope, receive, send_and_watch)
        finally:
            self.in_flight -= 1
            self._observe(getattr(scope.get("route"), "path", "unmatched"), status, started)

    @staticmethod
    def _observe(route: str, status: int, started: float) -> None:
        REQUESTS.labels(route, str(status)).inc()
        REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)


async def reply(send: Any, status: int, detail: str,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``{"detail": ...}`` from an ASGI middleware, before any endpoint runs."""
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
