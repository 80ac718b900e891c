"""Exactly-once effects in Redis: a batch applied twice leaves the state of once.

The same contract runs against a single Redis and a three-primary Redis Cluster: every script
call touches one hash tag, so no CROSSSLOT error may ever occur.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
import redis.exceptions
from redis.crc import key_slot

from engine.config import Settings
from engine.core.activity import ops_for
from engine.store import StateStore
from engine.views import latest_by_event_time

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "cluster"])
async def store(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    namespace = f"t-{request.node.name}".replace("[", "-").replace("]", "")
    backend = settings.redis
    if request.param == "cluster":
        backend = dataclasses.replace(backend, url=request.getfixturevalue("cluster_url"),
                                      cluster=True)
    s = StateStore.open(dataclasses.replace(backend, namespace=namespace))
    yield s
    async for key in s.client.scan_iter(match=f"{namespace}:*"):
        await s.client.delete(key)
    await s.close()


def _view(i: int, item: str = "item-1") -> dict:
    return {"event_id": f"e{i}", "event_type": "view", "event_time_ms": 1_000 + i,
            "user_id": f"user-{i % 3}", "item_id": item}


async def _snapshot(store: StateStore) -> dict[str, object]:
    out: dict[str, object] = {}
    async for key in store.client.scan_iter(match=f"{store.namespace}:*"):
        kind = await store.client.type(key)
        if kind == "hash":
            out[key] = await store.client.hgetall(key)
        elif kind == "list":
            out[key] = await store.client.lrange(key, 0, -1)
        elif kind == "zset":
            out[key] = await store.client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await store.client.get(key)
    return out


async def test_same_batch_twice_gives_state_of_once(store: StateStore) -> None:
    batch = [(offset, ops_for("clicks", _view(offset))) for offset in range(50)]
    first = await store.apply("clicks", 0, batch)
    once = await _snapshot(store)
    second = await store.apply("clicks", 0, batch)
    assert (first.applied, first.skipped, first.watermark) == (50, 0, 49)
    assert (second.applied, second.skipped, second.watermark) == (0, 50, 49)
    assert await _snapshot(store) == once
    assert await store.client.hget(store.shard("clicks", 0) + "item:item-1", "view") == "50"


async def test_overlapping_redelivery_applies_only_new_offsets(store: StateStore) -> None:
    events = [(offset, ops_for("clicks", _view(offset))) for offset in range(100)]
    await store.apply("clicks", 1, events[:60])
    result = await store.apply("clicks", 1, events[30:])   # a re-delivery from offset 30
    assert (result.applied, result.skipped) == (40, 30)
    counts = await store.merged_counts("clicks", 4, "item:item-1")
    assert counts["view"] == 100


async def test_partitions_have_independent_watermarks(store: StateStore) -> None:
    await store.apply("clicks", 0, [(5, ops_for("clicks", _view(1)))])
    result = await store.apply("clicks", 2, [(3, ops_for("clicks", _view(2)))])
    assert result.applied == 1
    assert await store.watermark("clicks", 0) == 5 and await store.watermark("clicks", 2) == 3
    assert (await store.merged_counts("clicks", 4, "item:item-1"))["view"] == 2


async def test_unknown_op_writes_nothing(store: StateStore) -> None:
    batch = [(0, ops_for("clicks", _view(0))), (1, [("hincrby", "x", "y", "1"),
                                                    ("flushall", "", "", "")])]
    with pytest.raises(redis.exceptions.ResponseError, match="invalid op at offset 1: flushall"):
        await store.apply("clicks", 3, batch)
    assert await _snapshot(store) == {}
    assert await store.watermark("clicks", 3) == -1


async def test_one_call_touches_one_cluster_slot(store: StateStore) -> None:
    order = {"event_id": "o", "event_type": "purchase", "event_time_ms": 5, "order_id": "1",
             "user_id": "u", "region": "r", "lines": [{"item_id": "a", "quantity": 1,
                                                       "unit_price": 2.0}]}
    await store.apply("orders", 2, [(0, ops_for("orders", order))])
    keys = [key async for key in store.client.scan_iter(match=f"{store.namespace}:*")]
    assert len(keys) > 3
    assert len({key_slot(k.encode()) for k in keys}) == 1, keys


async def test_latest_value_by_event_time_not_arrival(store: StateStore) -> None:
    comp = {"event_id": "c", "event_time_ms": 10, "item_id": "sku", "competitor": "acme",
            "price": 9.5}
    later = comp | {"event_time_ms": 20, "price": 8.75}
    # The newer observation arrives first; the late, older one must not overwrite it.
    await store.apply("competitor-prices", 0, [(0, ops_for("competitor-prices", later)),
                                               (1, ops_for("competitor-prices", comp))])
    prices = latest_by_event_time(await store.shard_hashes("competitor-prices", 4, "comp:sku"))
    assert prices == {"acme": (20, "8.75")}


@pytest.mark.parametrize("op", [
    ("hincrby", "k", "f", "4.0"), ("hincrby", "k", "f", "x"), ("hincrbyfloat", "k", "f", "nan"),
    ("zincrby", "k", "m", "inf"), ("hsetlatest", "k", "f", "no-time"), ("lpushcap", "k", "v", ""),
    ("hset", "k", "f"),
])
async def test_bad_numbers_are_refused_before_any_write(store: StateStore, op: tuple) -> None:
    good = ops_for("clicks", _view(0))
    with pytest.raises(redis.exceptions.ResponseError, match="invalid op at offset 1"):
        await store.apply("clicks", 0, [(0, good), (1, [*good, op])])
    assert await _snapshot(store) == {}


async def test_watermark_behind_the_callers_is_refused(store: StateStore) -> None:
    """Redis lost writes the worker saw acknowledged: the script writes nothing and says so."""
    await store.apply("clicks", 0, [(o, ops_for("clicks", _view(o))) for o in range(10)])
    await store.client.set(store.shard("clicks", 0) + "wm", 4)     # as if the last writes were lost
    result = await store.apply("clicks", 0, [(10, ops_for("clicks", _view(10)))], expected=9)
    assert (result.applied, result.watermark) == (-1, 4)
    assert await store.watermark("clicks", 0) == 4


async def test_customer_purchases_count_repeat_transactions_by_day(store: StateStore) -> None:
    """custbuy keeps BG/NBD's statistics: same-day purchases are one transaction, a late older
    purchase becomes the first, a re-delivered one changes nothing."""
    day = 86_400_000
    t0 = 1_291_191_960_000

    def order(offset: int, t: int) -> tuple[int, list]:
        event = {"event_id": f"o{offset}", "event_type": "purchase", "event_time_ms": t,
                 "order_id": f"o{offset}", "user_id": "17850", "region": "united-kingdom",
                 "lines": [{"item_id": "85123A", "quantity": 1, "unit_price": 2.55}]}
        return offset, ops_for("orders", event)

    batch = [order(0, t0), order(1, t0 + 3_600_000), order(2, t0 + 2 * day),
             order(3, t0 + 5 * day), order(4, t0 - 3 * day)]
    await store.apply("orders", 0, batch)
    await store.apply("orders", 0, batch)                      # re-delivered
    key = store.shard("orders", 0) + "cust:17850"
    assert await store.client.hgetall(key) == {
        "first": str(t0 - 3 * day), "last": str(t0 + 5 * day), "x": "3",
        "region": "united-kingdom"}
