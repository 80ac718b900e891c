"""Load shedding and read deadlines (engine.api.guard), on a plain ASGI app that waits."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from engine.api.guard import Guard


class Slow:
    """Answers 200 after ``delay`` seconds; ``gate`` holds every request until set."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.gate = asyncio.Event()
        self.gate.set()
        self.finished = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.gate.wait()
        await asyncio.sleep(self.delay)
        self.finished += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def test_requests_beyond_the_limit_are_refused_at_once_but_probes_answer() -> None:
    slow = Slow()
    slow.gate.clear()
    guard = Guard(slow, max_in_flight=2, read_timeout_s=5.0)
    async with client(guard) as c:
        held = [asyncio.create_task(c.get(f"/v1/items/{i}/similar")) for i in range(2)]
        while guard.in_flight < 2:
            await asyncio.sleep(0.01)
        refused = await c.get("/v1/items/x/similar")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "overloaded" in refused.json()["detail"]
        slow.gate.set()
        assert (await c.get("/healthz")).status_code == 200
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
    assert guard.in_flight == 0


@pytest.mark.parametrize(("method", "expected"), [("GET", 503), ("POST", 200)])
async def test_reads_past_the_deadline_are_abandoned_writes_are_not(method: str,
                                                                    expected: int) -> None:
    slow = Slow(delay=0.3)
    guard = Guard(slow, max_in_flight=10, read_timeout_s=0.05)
    async with client(guard) as c:
        response = await c.request(method, "/v1/users/u/recommendations")
    assert response.status_code == expected
    if expected == 503:
        assert "not answered within 0.05 s" in response.json()["detail"]
        assert slow.finished == 0
    assert guard.in_flight == 0
