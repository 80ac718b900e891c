"""Stocking end to end on the real stack (Tansu, Valkey, the shared worker process): stock at
two centres, then a burst of real orders in one region -> an open signal on `stocking-signals`
(read by a plain kafka-python consumer) naming the centre with surplus; the stocking endpoints
agree; a restock clears the signal."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaProducer

from engine.api.app import create_api
from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import ManagedProcess

from .helpers import consumer_at_end, wait_for_message
from .test_stocking_stage import stock, uk_orders

pytestmark = pytest.mark.integration


async def settled(api: httpx.AsyncClient, url: str, params: dict[str, Any],
                  done: Callable[[dict[str, Any]], Any], timeout_s: float = 10.0
                  ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = (await api.get(url, params=params)).json()
        if done(body) or time.monotonic() > deadline:
            return dict(body)
        await asyncio.sleep(0.1)


@pytest.fixture
async def api(settings: Settings, catalogue: Catalogue) -> AsyncIterator[httpx.AsyncClient]:
    app = create_api(settings, catalogue)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        yield c


def tagged(token: str, settings: Settings) -> tuple[str, list[tuple[str, dict[str, Any]]],
                                                     str]:
    """The real invoices of a best-selling item (only its line; item, order and customer ids
    tagged: DERIVED, for isolation from other tests), stock levels of the test's own before
    them, and a customer who bought more than once."""
    real_item, catalog, orders = uk_orders(settings)
    item = f"{token}-{real_item}"
    t0 = orders[0]["event_time_ms"]
    events: list[tuple[str, dict[str, Any]]] = [
        ("catalog", dict(e, item_id=item, event_id=f"{token}-{e['event_id']}"))
        for e in catalog]
    events += [("inventory", dict(stock(item, "dc-uk", 5, t0 - 1, 0), event_id=f"{token}-i0")),
               ("inventory", dict(stock(item, "dc-intl", 50_000, t0 - 1, 1),
                                  event_id=f"{token}-i1"))]
    buyers: dict[str, int] = {}
    for o in orders[:40]:
        user = f"{token}-{o.get('user_id', 'guest')}"
        buyers[user] = buyers.get(user, 0) + 1
        events.append(("orders", dict(
            o, event_id=f"{token}-{o['event_id']}", order_id=f"{token}-{o['order_id']}",
            user_id=user, lines=[dict(line, item_id=item) for line in o["lines"]
                                 if line["item_id"] == real_item])))
    repeat = max(sorted(buyers), key=buyers.__getitem__)
    return item, events, repeat


async def test_a_burst_of_orders_in_a_region_opens_a_signal_and_a_restock_clears_it(
        settings: Settings, worker: ManagedProcess, api: httpx.AsyncClient) -> None:
    token = uuid.uuid4().hex[:10]
    item, events, customer = tagged(token, settings)
    consumer = consumer_at_end(settings, "stocking-signals")
    producer = KafkaProducer(bootstrap_servers=settings.kafka.url, linger_ms=5)
    try:
        for topic, event in events:
            key = event["user_id"] if topic == "orders" else event["item_id"]
            producer.send(topic, key=key.encode(), value=orjson.dumps(event))
        producer.flush()
        # inventory and orders are separate topics, so the first signal may come before the
        # surplus abroad is known; a later one (an hour of event time on) names it
        def named(s: dict[str, Any]) -> bool:
            return s["item_id"] == item and s["status"] == "open" and s["source_dc"] == "dc-intl"

        opened = next(s for s in wait_for_message(consumer, named, "an open signal naming "
                                                  "dc-intl", timeout_s=90) if named(s))
        assert opened["dc"] == "dc-uk" and opened["region"] == "united-kingdom"
        assert opened["suggested_transfer_qty"] > 0
        assert opened["forecast"]["upper"] > opened["on_hand"] + opened["in_transit"]
        assert 0 < opened["confidence"] <= 1 and opened["reason"]

        # the stage publishes a signal just before it applies its batch to Redis
        listed = await settled(api, "/v1/stocking/signals", {"item": item},
                               lambda body: body["signals"] and body["signals"][0]["source_dc"]
                               == "dc-intl")
        assert [s["signal_id"] for s in listed["signals"]] == [opened["signal_id"]]
        by_dc = (await api.get("/v1/stocking/signals", params={"dc": "dc-uk"})).json()
        assert opened["signal_id"] in {s["signal_id"] for s in by_dc["signals"]}
        forecast = (await api.get(f"/v1/items/{item}/forecast",
                                  params={"region": "united-kingdom", "horizon": 7})).json()
        (uk,) = forecast["regions"]
        assert uk["dc"] == "dc-uk" and uk["horizon_days"] == 7 and uk["mean"] > 0
        assert uk["lower"] <= uk["mean"] <= uk["upper"]
        centres = {c["dc"]: c for c in forecast["centres"]}
        assert centres["dc-uk"]["on_hand"] == 5 and centres["dc-intl"]["on_hand"] == 50_000
        assert (await api.get(f"/v1/items/{token}-nothing/forecast")).status_code == 404
        assert (await api.get(f"/v1/items/{item}/forecast",
                              params={"horizon": -1})).status_code == 422

        returning = (await api.get(f"/v1/users/{customer}/return-forecast",
                                   params={"horizon": 30})).json()
        assert returning["region"] == "united-kingdom" and returning["repeat_transactions"] >= 1
        assert 0 <= returning["p_buy_within_horizon"] <= returning["p_alive"] <= 1
        assert returning["expected_days_to_next_purchase"] > 0
        assert isinstance(returning["likely_items"], list)
        assert (await api.get(f"/v1/users/{token}-nobody/return-forecast")).status_code == 404

        last = max(e["event_time_ms"] for _, e in events)
        restock = dict(stock(item, "dc-uk", 1_000_000, last + 1, 2), event_id=f"{token}-i2")
        producer.send("inventory", key=item.encode(), value=orjson.dumps(restock))
        producer.flush()
        def clearing(s: dict[str, Any]) -> bool:
            return s["item_id"] == item and s["status"] == "cleared"

        cleared = next(s for s in wait_for_message(consumer, clearing, "the item's clearing",
                                                   timeout_s=90) if clearing(s))
        assert cleared["signal_id"] == opened["signal_id"]
        assert cleared["suggested_transfer_qty"] == 0
        listed = await settled(api, "/v1/stocking/signals", {"item": item},
                               lambda body: not body["signals"])
        assert listed["signals"] == []
    finally:
        producer.close()
        consumer.close()
