"""Prices end to end on the real stack (Tansu, Valkey, the shared worker process): a real
competitor price drop from the Kaggle data -> a price change on `prices`, read by a plain
kafka-python consumer; the price endpoints; an authenticated override and its message."""

from __future__ import annotations

import dataclasses
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaProducer

from engine.api.app import create_api
from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import ManagedProcess
from engine.pricing.follow import describe, follow
from engine.replay.catalog import derive_catalog
from engine.replay.competitors import competitor_prices

from .conftest import DATASETS
from .helpers import consumer_at_end, wait_for_message

pytestmark = pytest.mark.integration

TOKEN = "test-admin-key-0123456789"
#: computers4 (Kaggle), competitor comp_3: 154.70 in October 2017, 109.90 in November; its
#: derived list price is 147.35 and unit cost 103.14 (floor 108.30 with the 5 % margin).
PRODUCT, RIVAL = "computers4", "comp_3"


def real_events(token: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The product's derived catalogue record and its rival's real observations around the
    drop, with the item id tagged and the category put under "e2e" (DERIVED: isolation, and
    the shared worker's "match" rule for that category)."""
    item = f"{token}-{PRODUCT}"
    (cat,) = [r.event for r in derive_catalog(DATASETS, ["competitor_prices"])
              if r.event["item_id"] == PRODUCT]
    cat = dict(cat, item_id=item, event_id=f"{token}-cat", category=f"e2e.{cat['category']}")
    feed = [r.event for r in competitor_prices(
        DATASETS / "competitor_prices" / "retail_price_competitors.csv")
        if r.event["item_id"] == PRODUCT and r.event["competitor"] == RIVAL]
    drop = next(k for k in range(1, len(feed)) if feed[k]["price"] < 0.8 * feed[k - 1]["price"])
    return cat, [dict(e, item_id=item, event_id=f"{token}-{e['event_id']}")
                 for e in feed[drop - 1:drop + 1]]


@pytest.fixture
async def api(settings: Settings, catalogue: Catalogue) -> AsyncIterator[httpx.AsyncClient]:
    admin = dataclasses.replace(    # configured as the shared worker is (SHARED_WORKER_ENV)
        settings, api=dataclasses.replace(settings.api, keys=(f"pricing-team:admin:{TOKEN}",)),
        pricing=dataclasses.replace(settings.pricing, category_rules=("e2e=match",)))
    app = create_api(admin, catalogue)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        yield c


async def test_a_competitor_drop_reaches_prices_and_an_override_wins(
        settings: Settings, worker: ManagedProcess, api: httpx.AsyncClient) -> None:
    token = uuid.uuid4().hex[:10]
    cat, (before, after) = real_events(token)
    item = cat["item_id"]
    assert after["price"] < before["price"]
    consumer = consumer_at_end(settings, "prices")
    producer = KafkaProducer(bootstrap_servers=settings.kafka.url, linger_ms=5)
    try:
        producer.send("catalog", key=item.encode(), value=orjson.dumps(cat))
        producer.send("competitor-prices", key=item.encode(), value=orjson.dumps(before))
        producer.flush()
        wait_for_message(consumer, lambda c: c["item_id"] == item and c["old_price"] is None,
                         "the item's first price")
        producer.send("competitor-prices", key=item.encode(), value=orjson.dumps(after))
        producer.flush()
        seen = wait_for_message(consumer, lambda c: c["item_id"] == item
                                and c["reason"]["competitor"] is not None
                                and c["reason"]["competitor"]["price"] == after["price"],
                                "the competitor's drop")
    finally:
        producer.close()
    drop = next(c for c in seen if c["item_id"] == item and c["reason"]["competitor"]
                and c["reason"]["competitor"]["price"] == after["price"])
    assert drop["reason"]["trigger"] == "competitor_price"
    # traceable to the input record: competitor-prices:<partition>:<offset>:<signal index>
    assert drop["reason"]["signal"].startswith("competitor-prices:")
    assert drop["new_price"] < drop["old_price"]
    assert drop["new_price"] >= round(drop["old_price"] * 0.9, 2)      # one step at most
    assert "competitor:match" in drop["reason"]["guardrails"]
    assert drop["category"] == cat["category"] and drop["decision_id"].startswith("pd-")

    current = (await api.get(f"/v1/items/{item}/price")).json()
    assert current["price"] == drop["new_price"]
    assert current["decision_id"] == drop["decision_id"]
    assert current["competitor_rule"] == "match"
    history = (await api.get(f"/v1/items/{item}/price/history")).json()["changes"]
    assert history[0]["decision_id"] == drop["decision_id"]
    assert (await api.get(f"/v1/items/{token}-unknown/price")).status_code == 404

    body = {"price": 99.0, "ttl_minutes": 60, "note": "clearance", "by": "pricing-team"}
    url = f"/v1/items/{item}/price/override"
    assert (await api.put(url, json=body)).status_code == 401
    wrong = await api.put(url, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    bad = await api.put(url, json={"price": 99.0}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 422
    answer = await api.put(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 202, answer.text
    seen = wait_for_message(consumer, lambda c: c["item_id"] == item
                            and c["reason"]["trigger"] == "override", "the override")
    override = next(c for c in seen if c["reason"]["trigger"] == "override")
    assert override["new_price"] == 99.0 and override["reason"]["override"]["by"] == \
        "pricing-team"
    consumer.close()

    # what a person sees: `engine prices follow --item ... --from-beginning`
    history = (await api.get(f"/v1/items/{item}/price/history")).json()["changes"]
    assert history[0]["decision_id"] == override["decision_id"]
    out = io.StringIO()
    deadline = time.monotonic() + 30
    assert follow(settings, item=item, category="e2e", from_beginning=True, as_json=False,
                  limit=len(history), out=out, stop=lambda: time.monotonic() > deadline) == 0
    lines = out.getvalue().splitlines()
    assert lines == [describe(c) for c in reversed(history)]
    assert any("competitor_price; lowest competitor comp_3 109.90" in line for line in lines)
    assert "override by pricing-team" in lines[-1] and "-> 99.00" in lines[-1]


async def test_overrides_are_off_without_an_admin_key(
        settings: Settings, catalogue: Catalogue) -> None:
    reader = dataclasses.replace(settings, api=dataclasses.replace(
        settings.api, keys=("shop:read+events:shop-key-0123456789",)))
    app = create_api(reader, catalogue)   # no key has the admin scope
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        url, body = "/v1/items/x/price/override", {"price": 1, "ttl_minutes": 1}
        anonymous = await c.put(url, json=body)
        shop = await c.put(url, json=body, headers={"X-API-Key": "shop-key-0123456789"})
    assert anonymous.status_code == 401
    assert shop.status_code == 403 and "admin" in shop.json()["detail"]


@pytest.mark.parametrize("body", [
    {"price": 0.001, "ttl_minutes": 5},                     # rounds to nothing
    {"price": 1.0, "ttl_minutes": 1e305},                   # beyond 90 days (and any clock)
    {"price": 1.0, "ttl_minutes": 5, "expires_ms": 1},      # two expiries
    {"price": 1.0},                                         # none
    {"price": "cheap", "ttl_minutes": 5},
])
async def test_bad_overrides_are_422_with_a_message(api: httpx.AsyncClient,
                                                    body: dict[str, Any]) -> None:
    answer = await api.put("/v1/items/x/price/override", json=body,
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 422 and answer.json()["detail"]
