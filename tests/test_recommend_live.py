"""Recommendations on real Redis state, written by the same core and script as the worker.

The events here are small hand-made fixtures (named dvd-*, book-*): each test states the exact
situation a rule is about, which real data cannot isolate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from engine.config import Settings
from engine.recommend.online import OnlineRecommender
from engine.replay.reading import Record
from engine.store import StateStore

pytestmark = pytest.mark.integration

T0 = 1_569_888_000_000
MIN = 60_000
DAY = 86_400_000


@pytest.fixture
async def engine(settings: Settings, request: pytest.FixtureRequest
                 ) -> AsyncIterator[OnlineRecommender]:
    live = _with(settings, namespace=f"r-{request.node.name}")
    model = OnlineRecommender(StateStore.open(live.redis), live)
    yield model
    async for key in model.store.client.scan_iter(match=f"{live.redis.namespace}:*"):
        await model.store.client.delete(key)
    await model.close()


def _with(settings: Settings, namespace: str | None = None, **recommend: object) -> Settings:
    out = dataclasses.replace(settings, recommend=dataclasses.replace(settings.recommend,
                                                                       **recommend))
    if namespace:
        out = dataclasses.replace(out, redis=dataclasses.replace(out.redis, namespace=namespace))
    return out


_n = 0


def view(user: str, item: str, t: int, category: str = "media.video.dvd", brand: str = "b"
         ) -> Record:
    global _n
    _n += 1
    event = {"event_id": f"v{_n}", "event_type": "view", "event_time_ms": t, "user_id": user,
             "item_id": item, "category": category, "brand": brand, "region": "north"}
    return Record("clicks", user, event, t)


def purchase(user: str, items: list[str], t: int) -> Record:
    global _n
    _n += 1
    event = {"event_id": f"o{_n}", "event_type": "purchase", "event_time_ms": t,
             "order_id": f"o{_n}", "user_id": user, "region": "north",
             "lines": [{"item_id": i, "quantity": 1, "unit_price": 9.99} for i in items]}
    return Record("orders", user, event, t)


async def feed(model: OnlineRecommender, records: list[Record]) -> None:
    for r in records:
        await model.learn(r)


async def test_dvd_in_the_cart_brings_other_dvds(engine: OnlineRecommender) -> None:
    books = [view(f"reader{i}", f"book-{j}", T0 + j * MIN, "books.fiction")
             for i in range(5) for j in range(3)]
    dvds = [view(f"viewer{i}", f"dvd-{j}", T0 + j * MIN) for i in range(3) for j in range(3)]
    await feed(engine, [*books, *dvds, view("me", "book-0", T0 + 10 * MIN, "books.fiction")])
    plain = await engine.recommender.for_user("me", 3)
    assert {r.item_id for r in plain.items} == {"book-0", "book-1", "book-2"}
    (again,) = [r for r in plain.items if r.item_id == "book-0"]   # seen just now
    assert again.reason["type"] == "personal_model" and again.reason["signals"]["recently_viewed"]
    with_cart = await engine.recommender.for_user("me", 3, context_item="dvd-0")
    top = with_cart.items[0]
    assert top.item_id in {"dvd-1", "dvd-2"}
    assert top.reason == {"type": "co_viewed_with", "items": ["dvd-0"]}


async def test_recent_links_outweigh_old_ones(engine: OnlineRecommender) -> None:
    old = [view(f"o{i}", item, T0 + i * MIN) for i in range(6) for item in ("a", "old")]
    new = [view(f"n{i}", item, T0 + 200 * DAY + i * MIN) for i in range(2)
           for item in ("a", "new")]
    await feed(engine, [*old, *new])
    ranked = [r.item_id for r in (await engine.recommender.similar("a", 2)).items]
    assert ranked == ["new", "old"]   # 6 links ~6.7 half-lives old count less than 2 fresh ones


async def test_neighbour_lists_are_pruned(settings: Settings) -> None:
    live = _with(settings, namespace="r-prune", neighbours_per_item=8, partners_per_event=50,
                 history_size=100)
    model = OnlineRecommender(StateStore.open(live.redis), live)
    try:
        await feed(model, [view("hub-user", f"item-{i}", T0 + i * 1000) for i in range(60)])
        sizes = []
        for p in range(4):
            key = model.store.shard("clicks", p) + "cv:co:item-59"
            sizes.append(await model.store.client.zcard(key))
        assert 0 < max(sizes) <= 8 + 8 // 4
    finally:
        async for key in model.store.client.scan_iter(match="r-prune:*"):
            await model.store.client.delete(key)
        await model.close()


async def test_bought_items_are_excluded(engine: OnlineRecommender) -> None:
    await feed(engine, [view(f"u{i}", item, T0 + i * MIN) for i in range(3)
                        for item in ("x", "y", "z")])
    await feed(engine, [view("me", "x", T0 + 5 * MIN), purchase("me", ["y"], T0 + 6 * MIN)])
    items = [r.item_id for r in (await engine.recommender.for_user("me", 5)).items]
    assert "y" not in items and "z" in items


async def test_out_of_stock_in_the_users_region_is_excluded(engine: OnlineRecommender) -> None:
    await feed(engine, [view(f"u{i}", item, T0 + i * MIN) for i in range(3)
                        for item in ("x", "y", "z")])
    await feed(engine, [view("me", "x", T0 + 5 * MIN)])
    stock = {"event_id": "inv", "event_time_ms": T0, "item_id": "y",
             "dc": "dc-north", "on_hand": 0, "in_transit": 0}
    await engine.learn(Record("inventory", "y", stock, T0))
    items = [r.item_id for r in (await engine.recommender.for_user("me", 5)).items]
    assert "y" not in items and "z" in items


async def test_category_filter_and_diversity_cap(engine: OnlineRecommender,
                                                 settings: Settings) -> None:
    records = [view(f"u{i}", f"dvd-{j}", T0 + j * MIN, brand="warner" if j < 3 else "sony")
               for i in range(3) for j in range(5)]
    records += [view(f"u{i}", "book-1", T0 + 9 * MIN, "books.fiction") for i in range(3)]
    await feed(engine, [*records, view("me", "dvd-0", T0 + 20 * MIN)])
    only_books = await engine.recommender.for_user("me", 5, category="books")
    assert [r.item_id for r in only_books.items] == ["book-1"]
    capped = dataclasses.replace(engine.recommender.s, max_per_brand=1)
    engine.recommender.s = capped
    brands = [r.item_id for r in (await engine.recommender.for_user("me", 5)).items]
    assert len([i for i in brands if i in {"dvd-1", "dvd-2"}]) == 1


async def test_unknown_user_gets_trending_and_new_item_its_category(
        engine: OnlineRecommender) -> None:
    await feed(engine, [view(f"u{i}", "hit", T0 + i * MIN) for i in range(5)])
    await feed(engine, [view("u9", "niche", T0 + 9 * MIN), view("late", "fresh", T0 + DAY)])
    cold = await engine.recommender.for_user("nobody", 2)
    assert cold.items[0].item_id == "hit"
    assert cold.items[0].reason["type"] == "trending_in"
    assert cold.state_event_time_ms == T0 + DAY
    similar = await engine.recommender.similar("fresh", 2)   # never co-occurred with anything
    assert similar.items and all(r.reason["type"] == "similar_to" for r in similar.items)
    assert similar.items[0].item_id == "hit"


async def test_replayed_interactions_do_not_double_links(engine: OnlineRecommender) -> None:
    records = [view("u", "a", T0), view("u", "b", T0 + MIN)]
    await feed(engine, records)
    before = (await engine.recommender.similar("a", 1)).items[0].score
    # A re-delivery carries the same offsets: the watermark makes it a no-op.
    partition = next(iter(p for (t, p) in engine.offsets if t == "clicks"))
    result = await engine.store.apply("clicks", partition, [
        (1, engine.core("clicks", records[1].event))])
    assert result.skipped == 1
    assert (await engine.recommender.similar("a", 1)).items[0].score == before
