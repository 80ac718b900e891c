"""Recommendation endpoints against the real stack: events in through POST /v1/events, Kafka
and the worker; a different list out of GET /v1/users/{id}/recommendations."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from engine.api.app import Recommendations, create_api
from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import ManagedProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings, catalogue: Catalogue) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(settings, catalogue)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        yield c


@pytest.mark.parametrize("query", ["k=0", "k=101", "k=ten", "context_item=a%20b",
                                   "category="])
async def test_invalid_parameters_are_422_with_a_message(client: httpx.AsyncClient,
                                                         query: str) -> None:
    response = await client.get(f"/v1/users/u1/recommendations?{query}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]


async def test_events_in_a_different_list_out(client: httpx.AsyncClient,
                                              worker: ManagedProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    me, a, b = f"{tag}-me", f"{tag}-dvd-a", f"{tag}-dvd-b"
    now = int(time.time() * 1000)
    before = (await client.get(f"/v1/users/{me}/recommendations?k=5")).json()
    assert all(r["reason"]["type"] == "trending_in" for r in before["items"])

    def view(user: str, item: str, t: int) -> dict:
        return {"topic": "clicks", "event": {
            "event_id": f"{user}-{item}-{t}", "event_type": "view", "event_time_ms": t,
            "user_id": user, "item_id": item, "category": "media.video.dvd"}}

    events = [view(f"{tag}-fan{i}", item, now - 60_000 + i * 1000 + j)
              for i in range(3) for j, item in enumerate((a, b))]
    events.append(view(me, a, now))
    posted = await client.post("/v1/events", json={"events": events})
    assert posted.status_code == 200 and posted.json()["accepted"] == len(events), posted.text

    deadline = time.monotonic() + 60
    while True:
        after = (await client.get(f"/v1/users/{me}/recommendations?k=5")).json()
        fresh = [r for r in after["items"] if r["item_id"] != a]   # a: viewed just now
        if fresh and fresh[0]["item_id"] == b and (after["state_event_time_ms"] or 0) >= now:
            break   # (the state time is re-read at most every 0.25 s: it may trail the list)
        assert time.monotonic() < deadline, after
        await asyncio.sleep(0.2)
    assert after["items"] != before["items"]
    assert fresh[0]["reason"] == {"type": "co_viewed_with", "items": [a]}
    assert after["model_version"]
    Recommendations.model_validate(after, strict=True)   # the body is the documented schema

    similar = (await client.get(f"/v1/items/{a}/similar?k=3")).json()
    assert similar["items"][0]["item_id"] == b
    assert similar["items"][0]["reason"]["type"] == "co_viewed_with"


async def test_cart_context_and_category_parameters(client: httpx.AsyncClient,
                                                    worker: ManagedProcess) -> None:
    response = await client.get("/v1/users/nobody/recommendations",
                                params={"k": 3, "context_item": "x1", "category": "media"})
    assert response.status_code == 200
    body = response.json()
    assert len(body["items"]) <= 3
    assert all(r["reason"]["type"] in {"trending_in", "co_viewed_with",
                                       "bought_together_with"} for r in body["items"])
