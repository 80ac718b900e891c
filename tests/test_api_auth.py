"""API keys, scopes, rate limits and body limits (engine.api.auth), on a plain ASGI app that
echoes what reached it, and the key parser's refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

import httpx
import orjson
import pytest

from engine.api.auth import Gate, KeyRing, TokenBuckets, parse_keys, required_scope
from engine.config import load_settings
from engine.errors import ConfigError

SHOP = "shop-secret-0123456789"
OPS = "ops-secret-abcdefghijk"
KEYS = (f"shop:read+events:{SHOP}",
        f"ops:admin:sha256:{hashlib.sha256(OPS.encode()).hexdigest()}")


class Echo:
    """Answers 200 with the caller and the body it read."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise OSError("client went away")   # as Starlette's ClientDisconnect would
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reply = orjson.dumps({"caller": scope.get("engine.caller"), "read": len(body)})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": reply})


def gate(**api: Any) -> Gate:
    settings = load_settings()
    options = {"keys": KEYS, "rate_limit_per_s": 0.0, **api}
    return Gate(Echo(), dataclasses.replace(settings.api, **options))


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


BEARER_SHOP = {"Authorization": f"Bearer {SHOP}"}
BEARER_OPS = {"X-API-Key": OPS}


@pytest.mark.parametrize(("method", "path", "headers", "require", "status", "caller"), [
    ("GET", "/healthz", {}, True, 200, None),                       # probes: always open
    ("GET", "/metrics", {"Authorization": "Bearer wrong"}, True, 200, None),
    ("GET", "/openapi.json", {}, True, 200, "anonymous"),
    ("GET", "/v1/items/1/similar", {}, False, 200, "anonymous"),    # open reads by default
    ("GET", "/v1/items/1/similar", {}, True, 401, None),
    ("GET", "/v1/items/1/similar", BEARER_SHOP, True, 200, "shop"),
    ("GET", "/v1/items/1/similar", BEARER_OPS, True, 200, "ops"),   # admin implies read
    ("GET", "/v1/items/1/similar", {"Authorization": "Bearer nope"}, False, 401, None),
    ("GET", "/v1/items/1/similar", {"Authorization": f"Basic {SHOP}"}, False, 401, None),
    ("POST", "/v1/events", {}, True, 401, None),
    ("POST", "/v1/events", BEARER_SHOP, True, 200, "shop"),
    ("PUT", "/v1/items/1/price/override", {}, False, 401, None),    # admin: never anonymous
    ("PUT", "/v1/items/1/price/override", BEARER_SHOP, False, 403, None),
    ("DELETE", "/v1/items/1/price/override", BEARER_OPS, False, 200, "ops"),
    ("POST", "/v1/anything-new", BEARER_SHOP, False, 403, None),    # unknown writes: admin
])
async def test_scopes(method: str, path: str, headers: dict[str, str], require: bool,
                      status: int, caller: str | None) -> None:
    async with client(gate(require_keys=require)) as c:
        answer = await c.request(method, path, headers=headers, content=b"{}")
    assert answer.status_code == status, answer.text
    if status == 200:
        assert answer.json().get("caller") == caller
    else:
        detail = answer.json()["detail"]
        assert SHOP not in detail and OPS not in detail
        assert (answer.headers.get("www-authenticate") == "Bearer") == (status == 401)


async def test_admin_endpoints_are_off_without_an_admin_key() -> None:
    async with client(gate(keys=KEYS[:1])) as c:
        answer = await c.put("/v1/items/1/price/override", headers=BEARER_SHOP)
    assert answer.status_code == 403 and "no key with the admin scope" in answer.json()["detail"]


async def test_rate_limit_per_key_with_retry_after() -> None:
    async with client(gate(rate_limit_per_s=1.0, rate_limit_burst=3)) as c:
        shop = [(await c.get("/v1/items/1/similar", headers=BEARER_SHOP)).status_code
                for _ in range(5)]
        ops = await c.get("/v1/items/1/similar", headers=BEARER_OPS)
        probe = [(await c.get("/healthz")).status_code for _ in range(5)]
        limited = await c.get("/v1/items/1/similar", headers=BEARER_SHOP)
    assert shop == [200, 200, 200, 429, 429]
    assert ops.status_code == 200                   # its own bucket
    assert probe == [200] * 5                       # probes are never limited
    assert limited.headers["retry-after"] == "1" and "1 requests/s" in limited.json()["detail"]


def test_token_buckets_refill_and_stay_bounded() -> None:
    buckets = TokenBuckets(rate_per_s=10.0, burst=2)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]
    assert buckets.take("a", now=0.2) == 0.0
    for i in range(20_000):
        buckets.take(f"addr:{i}", now=100.0 + i)    # each refilled long before the next
    assert len(buckets._buckets) <= 10_001


@pytest.mark.parametrize(("headers", "body"), [
    ({"content-length": str(2_000)}, b"x" * 2_000),               # declared
    ({}, None),                                                   # streamed, no length
])
async def test_bodies_over_the_limit_get_413(headers: dict[str, str], body: bytes | None
                                             ) -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"y" * 500

    async with client(gate(max_body_bytes=1_000)) as c:
        answer = await c.post("/v1/events", headers=headers,
                              content=body if body is not None else chunks())
        small = await c.post("/v1/events", content=b"z" * 1_000)
    assert answer.status_code == 413 and "over 1000 bytes" in answer.json()["detail"]
    assert small.status_code == 200 and small.json()["read"] == 1_000


def test_key_ring_finds_the_key_and_compares_every_digest() -> None:
    ring = KeyRing(parse_keys(KEYS))
    assert ring.identify(SHOP).name == "shop"      # type: ignore[union-attr]
    assert ring.identify(OPS).name == "ops"        # type: ignore[union-attr]
    assert ring.identify(SHOP[:-1]) is None and ring.identify("") is None


@pytest.mark.parametrize(("spec", "message"), [
    ("shop:read", "at least 16 characters"),
    ("shop:read:short", "at least 16 characters"),
    ("shop:write:0123456789abcdefgh", "scopes must be"),
    ("sh op:read:0123456789abcdefgh", "name of letters"),
    ("shop:read:sha256:abc", "64 hex digits"),
])
def test_bad_keys_are_refused_at_start_without_showing_the_secret(spec: str,
                                                                  message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"ENGINE_API_KEYS": orjson.dumps([spec]).decode()})
    assert message in str(error.value)
    secret = spec.split(":", 2)[-1]
    assert secret not in str(error.value)


def test_two_keys_with_one_name_or_one_secret_are_refused() -> None:
    with pytest.raises(ConfigError, match="same name"):
        parse_keys((f"a:read:{SHOP}", f"a:read:{OPS}"))
    with pytest.raises(ConfigError, match="same secret"):
        parse_keys((f"a:read:{SHOP}", f"b:admin:{SHOP}"))


def test_required_scope_defaults_to_admin_for_writes() -> None:
    assert required_scope("GET", "/v1/stats") == "read"
    assert required_scope("GET", "/status") is None
    assert required_scope("POST", "/v1/events") == "events"
    assert required_scope("PATCH", "/v1/events") == "admin"
    assert required_scope("OPTIONS", "/v1/items/1/similar") == "admin"


async def test_keys_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with client(gate(require_keys=True)) as c:
        for headers in (BEARER_SHOP, BEARER_OPS, {"Authorization": "Bearer " + SHOP[::-1]}):
            await c.get("/v1/stats", headers=headers)
            await c.put("/v1/items/1/price/override", headers=headers)
    assert SHOP not in caplog.text and OPS not in caplog.text and SHOP[::-1] not in caplog.text
