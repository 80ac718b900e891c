"""API keys with scopes, per-key rate limits and request body limits, as one ASGI middleware.

Keys come from configuration (``api.keys``, best set from the environment: ``ENGINE_API_KEYS``),
each ``"name:scopes:secret"``:

* ``name`` identifies the caller in metrics and logs (the secret never appears in either);
* ``scopes`` joined by ``+``: ``read`` (GET endpoints: storefronts), ``events`` (POST
  /v1/events), ``admin`` (price overrides and every other write; implies the other two);
* ``secret`` is the key itself (16 characters or more), or ``sha256:<64 hex digits>`` of it, so
  that a configuration file need not hold the key.

A request presents its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The key
is hashed (SHA-256) and compared with every configured digest with ``hmac.compare_digest``,
without stopping at a match, so the time taken tells nothing about which key, or how much of one,
was right.

Which scope an endpoint needs follows from its method and path, so a new route is protected by
default: probes, metrics, the documentation and the status page are open; other reads need
``read``; ``POST /v1/events`` needs ``events``; any other method needs ``admin``. With
``api.require_keys`` off (the embedded default), reads and events are open to anonymous callers,
but a key that is sent must still be valid, and admin endpoints always need an admin key (403
while none is configured). 401 = no or unknown key, 403 = a key without the scope.

Rate limits are token buckets per key name (anonymous callers: per client address), in this
process: ``api.rate_limit_per_s`` requests a second with bursts up to ``api.rate_limit_burst``;
past it, 429 with ``Retry-After``. Bodies over ``api.max_body_bytes`` get 413, from the declared
length before anything is read, or as soon as a streamed body passes the limit.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from engine.api.guard import EXEMPT, reply
from engine.config import ApiSettings
from engine.errors import ConfigError

log = logging.getLogger(__name__)

SCOPES = ("read", "events", "admin")
#: Open without a key (rate limited per address like any anonymous request); the probes
#: (guard.EXEMPT) are never authenticated or rate limited either.
PUBLIC = EXEMPT | {"/docs", "/openapi.json", "/status", "/v1/status"}
MIN_SECRET_CHARS = 16
#: Anonymous buckets kept (per client address); the fullest are forgotten first past this.
MAX_ANONYMOUS_BUCKETS = 10_000

REFUSED = Counter("engine_api_refused_total", "Requests refused before reaching an endpoint",
                  ["why"])  # why: unauthenticated | forbidden | rate_limited | too_large

Scope = dict[str, Any]


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    digest: bytes

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_keys(specs: tuple[str, ...]) -> tuple[ApiKey, ...]:
    """Parse ``api.keys``. Errors name the key by its position and name, never its secret."""
    keys: list[ApiKey] = []
    for i, spec in enumerate(specs):
        name, _, rest = spec.partition(":")
        scopes_text, _, secret = rest.partition(":")
        where = f"api.keys[{i}]"
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ConfigError(f"{where}: expected \"name:scopes:secret\" with a name of letters, "
                              "digits, '.', '_' or '-'")
        where = f"{where} ({name})"
        scopes = frozenset(scopes_text.split("+"))
        if not scopes_text or not scopes <= set(SCOPES):
            raise ConfigError(f"{where}: scopes must be {', '.join(SCOPES)} joined by '+', got "
                              f"{scopes_text!r}")
        if secret.startswith("sha256:"):
            hexdigest = secret.removeprefix("sha256:")
            if not re.fullmatch(r"[0-9a-fA-F]{64}", hexdigest):
                raise ConfigError(f"{where}: sha256: must be followed by 64 hex digits")
            digest = bytes.fromhex(hexdigest)
        elif len(secret) < MIN_SECRET_CHARS:
            raise ConfigError(f"{where}: the secret must have at least {MIN_SECRET_CHARS} "
                              "characters (or give sha256:<hex digest>)")
        else:
            digest = _digest(secret)
        if any(k.name == name for k in keys):
            raise ConfigError(f"{where}: two keys have the same name")
        if any(hmac.compare_digest(k.digest, digest) for k in keys):
            raise ConfigError(f"{where}: the same secret is configured twice")
        keys.append(ApiKey(name, scopes, digest))
    return tuple(keys)


class KeyRing:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys
        self.has_admin = any("admin" in k.scopes for k in keys)

    def identify(self, presented: str) -> ApiKey | None:
        """The key whose secret is ``presented``; every digest is compared (constant time)."""
        digest = _digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def required_scope(method: str, path: str) -> str | None:
    if path in PUBLIC:
        return None
    if method in ("GET", "HEAD"):
        return "read"
    if method == "POST" and path == "/v1/events":
        return "events"
    return "admin"


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``; "" for a malformed header."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


class TokenBuckets:
    """Token buckets by caller; ``take`` answers the seconds to wait (0 = allowed)."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate = rate_per_s
        self.burst = max(burst, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}   # caller -> (tokens, at)

    def take(self, caller: str, now: float | None = None) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[caller] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_ANONYMOUS_BUCKETS:
            self._forget_full(now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (forgetting them changes nothing), then, if
        still too many, the oldest."""
        self._buckets = {c: (t, at) for c, (t, at) in self._buckets.items()
                         if t + (now - at) * self.rate < self.burst}
        while len(self._buckets) > MAX_ANONYMOUS_BUCKETS:
            del self._buckets[next(iter(self._buckets))]


class Gate:
    """Authentication, authorisation, rate limits and body limits before any endpoint runs.
    The caller's key name is left in ``scope["engine.caller"]`` ("anonymous" without one)."""

    def __init__(self, app: Any, settings: ApiSettings) -> None:
        self.app = app
        self.ring = KeyRing(parse_keys(settings.keys))
        self.require_keys = settings.require_keys
        self.max_body_bytes = settings.max_body_bytes
        self.buckets = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        need = required_scope(scope["method"], scope["path"])
        presented = presented_key(scope["headers"])
        key = self.ring.identify(presented) if presented else None
        if presented is not None and key is None:
            await _refuse(send, 401, "unauthenticated", "unknown or malformed API key")
            return
        if need is not None and key is None and (need == "admin" or self.require_keys):
            await _refuse(send, 401, "unauthenticated", f"this endpoint needs an API key with "
                          f"the {need} scope: send Authorization: Bearer <key>")
            return
        if need == "admin" and not self.ring.has_admin:
            await _refuse(send, 403, "forbidden", "admin endpoints are off: no key with the "
                          "admin scope is configured (api.keys)")
            return
        if need is not None and key is not None and not key.allows(need):
            await _refuse(send, 403, "forbidden", f"key {key.name!r} lacks the {need} scope")
            return
        caller = key.name if key else "anonymous"
        scope["engine.caller"] = caller
        client = scope.get("client")
        wait = self.buckets.take(f"key:{caller}" if key else
                                 f"addr:{client[0] if client else '?'}")
        if wait > 0:
            await _refuse(send, 429, "rate_limited", f"rate limit of "
                          f"{self.buckets.rate:g} requests/s for {caller} exceeded",
                          retry_after=math.ceil(wait))
            return
        declared = next((v for n, v in scope["headers"] if n == b"content-length"), None)
        if declared is not None and (not declared.isdigit()
                                     or int(declared) > self.max_body_bytes):
            await _refuse(send, 413, "too_large", f"request body over {self.max_body_bytes} "
                          "bytes")
            return
        await self._bounded(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Any, send: Any) -> None:
        """Run the endpoint, cutting a streamed body off at the limit: the endpoint sees the
        client disconnect and the client gets 413."""
        received = 0
        over = False
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            if over:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _refuse(send, 413, "too_large", f"request body over {self.max_body_bytes} "
                          "bytes")


async def _refuse(send: Any, status: int, why: str, detail: str,
                  retry_after: int | None = None) -> None:
    REFUSED.labels(why).inc()
    headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await reply(send, status, detail, headers)
