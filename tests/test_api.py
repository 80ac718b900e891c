"""The HTTP API against real Redis, broker and worker (in-process ASGI client)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from engine.api.app import create_api
from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import ManagedProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings, catalogue: Catalogue) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(settings, catalogue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as c:
        yield c


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_ready_when_worker_covers_every_partition(
        client: httpx.AsyncClient, worker: ManagedProcess) -> None:
    response = await client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["checks"]["workers"]["unassigned_partitions"] == []
    assert body["checks"]["broker"]["ok"] and body["checks"]["redis"]["ok"]


async def test_not_ready_without_broker(settings: Settings, catalogue: Catalogue) -> None:
    import dataclasses
    dead = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka,
                                                                   url="127.0.0.1:1"))
    app = create_api(dead, catalogue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as c:
        response = await c.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient,
                                           worker: ManagedProcess) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'engine_api_requests_total{route="/healthz",status="200"}' in response.text
    assert "engine_state_events" in response.text and "engine_live_workers" in response.text
    assert "engine_reco_views_waiting " in response.text


async def test_stats_and_item_activity(client: httpx.AsyncClient,
                                       worker: ManagedProcess) -> None:
    stats = (await client.get("/v1/stats")).json()
    assert set(stats["topics"]) >= {"clicks", "orders", "catalog"}
    assert "p99" in stats["event_to_state_ms"]
    # Each worker says where its own Prometheus endpoint is, and it answers.
    (beat,) = [w for w in stats["workers"] if w["pid"] == worker.pid]
    async with httpx.AsyncClient() as direct:
        scraped = await direct.get(beat["metrics_url"])
    assert scraped.status_code == 200 and "engine_events_total" in scraped.text
    item = (await client.get("/v1/items/no-such-item/activity")).json()
    assert item == {"item_id": "no-such-item", "counts": {}, "catalog": {},
                    "competitor_prices": {}, "inventory": {}}


@pytest.mark.parametrize("item", ["%20", "a%0Ab", "x" * 200])
async def test_invalid_item_id_is_422_with_message(client: httpx.AsyncClient, item: str) -> None:
    response = await client.get(f"/v1/items/{item}/activity")
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]


async def test_openapi_and_offline_docs(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert {"/healthz", "/readyz", "/metrics", "/v1/stats"} <= set(spec["paths"])
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    assert "cdn" not in docs.text.lower()


async def test_faust_web_views_are_off() -> None:
    """The worker exposes no Faust web server (its /table and /router views leak state)."""
    from engine.config import load_settings
    from engine.contracts import load_catalogue
    from engine.worker.app import build_app

    app = build_app(load_settings().with_urls("127.0.0.1:1", "redis://127.0.0.1:1"),
                    load_catalogue())
    assert app.conf.web_enabled is False
    assert app.conf.web_tables_enabled is False and app.conf.web_router_enabled is False
