"""The recommendations' read model: pre-scored neighbour views and trending lists.

``merge_view`` is pure; the rest runs against the session's real Redis: a reader builds a
missing view and stores it without overwriting a fresher one, the worker's refresher rebuilds
touched items, trending lists are cached for a bounded time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import orjson
import pytest

from engine.config import RecommendSettings, Settings
from engine.contracts import Catalogue
from engine.core.recommend import BOUGHT_TOGETHER, CO_VIEWED, cosine
from engine.recommend.neighbours import (
    NeighbourViews,
    ViewRefresher,
    merge_view,
    project,
    view_labels,
)
from engine.recommend.online import OnlineRecommender
from engine.store import StateStore
from tests.test_recommend_live import MIN, T0, feed, purchase, view


def test_merge_scores_cosine_per_relation_and_keeps_the_best() -> None:
    pairs = {CO_VIEWED: {"x": 4.0, "y": 1.0, "a": 9.0, "z": 1.0},
             BOUGHT_TOGETHER: {"y": 2.0}}
    pops = {CO_VIEWED: {"a": 4.0, "x": 4.0, "y": 1.0},   # z: popularity unknown -> no score
            BOUGHT_TOGETHER: {"a": 2.0, "y": 2.0}}
    labels = {"a": ("dvd", "acme"), "x": ("dvd", None)}
    view = merge_view("a", pairs, pops, labels, bt_boost=2.0, size=5)
    assert (view["cat"], view["brand"]) == ("dvd", "acme")
    assert view["n"] == [["y", cosine(1, 4, 1), cosine(2, 2, 2), None, None],
                         ["x", cosine(4, 4, 4), 0.0, "dvd", None]]   # itself and z left out
    assert merge_view("a", pairs, pops, labels, 2.0, size=1)["n"][0][0] == "y"
    assert view_labels([view]) == {"y": (None, None), "x": ("dvd", None)}


@pytest.fixture(params=["redis", "cluster"])
async def model(settings: Settings, request: pytest.FixtureRequest
                ) -> AsyncIterator[OnlineRecommender]:
    backend = dataclasses.replace(settings.redis, namespace=f"v-{request.node.name}".replace(
        "[", "-").replace("]", ""))
    if request.param == "cluster":   # views and queries span slots: no CROSSSLOT allowed
        backend = dataclasses.replace(backend, url=request.getfixturevalue("cluster_url"),
                                      cluster=True)
    live = dataclasses.replace(settings, redis=backend)
    online = OnlineRecommender(StateStore.open(live.redis), live)
    yield online
    async for key in online.store.client.scan_iter(match=f"{live.redis.namespace}:*"):
        await online.store.client.delete(key)
    await online.close()


def cached(model: OnlineRecommender, catalogue: Catalogue, **recommend: object
           ) -> NeighbourViews:
    s = dataclasses.replace(model.recommender.s, **recommend)
    return NeighbourViews(model.store, catalogue, s)


async def test_a_reader_builds_a_missing_view_and_the_refresher_updates_it(
        model: OnlineRecommender, catalogue: Catalogue) -> None:
    await feed(model, [view("u1", "a", T0), view("u1", "b", T0 + MIN)])
    views = cached(model, catalogue)
    await model.store.client.delete(views.key("a"), views.key("b"))   # as if expired
    first = (await views.get(["a"]))["a"]
    assert [row[0] for row in first["n"]] == ["b"] and first["cat"] == "media.video.dvd"
    assert await model.store.client.ttl(views.key("a")) > 3600

    # u1 goes on to c: the evaluator's refresher (the worker's) rebuilds c and u1's earlier a
    await feed(model, [view("u1", "c", T0 + 2 * MIN)])
    assert {row[0] for row in (await views.get(["a"]))["a"]["n"]} == {"b", "c"}
    await model.store.client.set(views.key("a"), orjson.dumps(first))   # a stale view
    assert [row[0] for row in (await views.get(["a"]))["a"]["n"]] == ["b"]   # readers keep it
    refresher = ViewRefresher(views, views.s)
    refresher.observe("clicks", [{"item_id": "c", "user_id": "u9", "event_time_ms": T0},
                                 {"item_id": "a", "user_id": "u8", "event_time_ms": T0}])
    assert list(refresher.dirty) == ["c", "a"]
    await refresher.tick()
    assert not refresher.dirty
    assert {row[0] for row in (await views.get(["a"]))["a"]["n"]} == {"b", "c"}
    cv, bt, cat, brand = orjson.loads(await model.store.client.hget(
        model.store.key("view:items"), "a"))   # merged figures kept for other views' builds
    assert cv > 0 and bt == 0 and (cat, brand) == ("media.video.dvd", "b")


async def test_a_reader_never_overwrites_a_view_and_skips_unknown_items(
        model: OnlineRecommender, catalogue: Catalogue) -> None:
    views = cached(model, catalogue)
    await feed(model, [view("u1", "a", T0), view("u1", "b", T0 + MIN)])
    await model.store.client.set(views.key("a"), b'{"cat":null,"brand":null,"n":[]}')
    assert (await views.get(["a"]))["a"]["n"] == []
    assert (await views.get(["never-seen"]))["never-seen"]["n"] == []
    assert not await model.store.client.exists(views.key("never-seen"))


def test_the_users_items_earlier_in_the_session_are_rebuilt_too() -> None:
    refresher = ViewRefresher(None, RecommendSettings(**{  # type: ignore[arg-type]
        **{f.name: 1 for f in dataclasses.fields(RecommendSettings)},
        "session_window_minutes": 60.0}))
    refresher.observe("clicks", [{"item_id": i, "user_id": u, "event_time_ms": t}
                                 for i, u, t in (("a", "u1", T0), ("b", "u2", T0), ("c", "u1", T0),
                                                 ("c", "u1", T0), ("d", "u2", T0 + 61 * MIN))])
    assert list(refresher.dirty) == ["a", "b", "c", "d"]
    assert refresher.recent == {"u1": [("c", T0), ("a", T0)],
                                "u2": [("d", T0 + 61 * MIN), ("b", T0)]}
    refresher.dirty.clear()
    refresher.observe("carts", [{"item_id": "e", "user_id": "u1", "event_time_ms": T0 + MIN}])
    assert list(refresher.dirty) == ["e", "c", "a"]


async def test_refresh_is_bounded_per_round(model: OnlineRecommender,
                                            catalogue: Catalogue) -> None:
    views = cached(model, catalogue, view_refresh_max=2)
    refresher = ViewRefresher(views, views.s)
    refresher.observe("orders", [{"event_type": "purchase",
                                  "lines": [{"item_id": i} for i in "pqrst"]},
                                 {"event_type": "return", "lines": [{"item_id": "z"}]}])
    await refresher.tick()
    assert list(refresher.dirty) == ["r", "s", "t"]


async def test_trending_is_cached_for_a_bounded_time(model: OnlineRecommender,
                                                     catalogue: Catalogue) -> None:
    views = cached(model, catalogue, trending_cache_s=0.3)
    await feed(model, [view("u1", "a", T0), purchase("u2", ["b"], T0)])
    assert [row[0] for row in await views.trending(None)] == ["b", "a"]   # purchase > view
    assert [row[:1] + row[2:] for row in await views.trending("media.video")] == \
        [["a", "media.video.dvd", "b"]]
    await feed(model, [view(f"u{i}", "c", T0 + i) for i in range(3, 13)])   # 10 > 8
    assert "c" not in [row[0] for row in await views.trending(None)]
    await asyncio.sleep(0.4)
    assert [row[0] for row in await views.trending(None)][0] == "c"


async def test_an_empty_store_has_no_trending_items_and_empty_views(
        model: OnlineRecommender, catalogue: Catalogue) -> None:
    views = NeighbourViews(model.store, catalogue, model.recommender.s)
    assert await views.trending(None) == [] and await views.trending("media") == []
    assert await views.get(["a"]) == {"a": {"cat": None, "brand": None, "n": []}}


async def test_the_worker_hands_items_over_and_the_projector_rebuilds_them(
        model: OnlineRecommender, catalogue: Catalogue) -> None:
    await feed(model, [view("u1", "a", T0), view("u1", "b", T0 + MIN)])
    views = cached(model, catalogue, view_refresh_s=0.01)
    await model.store.client.delete(views.key("a"), views.key("b"))
    worker_side = ViewRefresher(views, views.s)
    worker_side.observe("clicks", [{"item_id": "b", "user_id": "u1", "event_time_ms": T0}])
    await worker_side.hand_over()
    assert not worker_side.dirty
    assert await model.store.client.smembers(views.dirty_key) == {"b"}
    await project(views, views.s, rounds=1)
    assert not await model.store.client.exists(views.dirty_key)
    stored = orjson.loads(await model.store.client.get(views.key("b")))
    assert [row[0] for row in stored["n"]] == ["a"]
    assert not await model.store.client.exists(views.key("a"))   # not touched: not built
