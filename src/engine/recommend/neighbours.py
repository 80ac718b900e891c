"""The recommendations' read model: per-item neighbour lists merged over the shards and
pre-scored, and trending lists, so that a query is a few reads instead of hundreds.

The truth stays in the shards, written exactly once with their watermarks (state/KEYS.md). A
view is a deterministic function of them: building it twice gives the same list, so views need
no exactly-once care of their own, and losing one costs a rebuild, never data. Writers:

- the worker notes the items its batches touched (``ViewRefresher``) in the set ``view:dirty``;
  a projector process (``engine views``, started by each worker as its child unless
  ``worker.views_child`` is off) rebuilds them every ``view_refresh_s``, so a view trails its
  item's latest interaction by about that much, and the rebuilds stay off the worker's event
  loop;
- a reader that finds no view (a new item, or one expired) builds it and stores it with SET NX,
  so it never overwrites a fresher one written by the worker meanwhile;
- a view not rebuilt for ``view_ttl_hours`` expires: memory follows the active catalogue.

A link a user's event adds between items a and b changes both lists: the refresher rebuilds the
event's item and the user's last few items of the session; older partners take the link at
their next interaction or rebuild. Trending
lists (all items, or one category) are cached in each reading process for ``trending_cache_s``.

View value, JSON: ``{"cat": .., "brand": .., "n": [[item, cv, bt, cat, brand], ..]}`` with
``cv``/``bt`` the cosine similarity in each relation, best first by ``cv + boost x bt``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from engine import metrics
from engine.config import RecommendSettings
from engine.contracts import Catalogue
from engine.core.recommend import BOUGHT_TOGETHER, CO_VIEWED, category_levels, cosine, in_category
from engine.errors import TRANSIENT_REDIS_ERRORS
from engine.resources import data_dir
from engine.store import StateStore

log = logging.getLogger(__name__)

RELATION_TOPICS = {CO_VIEWED: ("clicks", "carts"), BOUGHT_TOGETHER: ("orders",)}
#: Topics whose events write item labels: category from all three, brand from clicks and carts.
CATEGORY_TOPICS, BRAND_TOPICS = ("clicks", "carts", "orders"), ("clicks", "carts")
#: Neighbours read per item and shard before merging.
NEIGHBOURS_READ = 25
#: Trending lists cached per process at most (scopes are the category levels asked for).
TRENDING_SCOPES = 1000
#: Per user, the latest items whose views an interaction refreshes, and how many users the
#: refresher tracks (bounded memory per worker: at most SESSION_ITEMS x USERS_TRACKED entries).
SESSION_ITEMS, USERS_TRACKED = 2, 50_000
#: Items built per pipeline, so that one build does not hold the event loop for long.
BUILD_CHUNK = 50

Labels = tuple[str | None, str | None]
View = dict[str, Any]
#: An item's merged figures: popularity in cv and in bt (forward-decayed), category, brand.
ItemStats = tuple[float, float, str | None, str | None]


def merge_view(item: str, pairs: Mapping[str, Mapping[str, float]],
               pops: Mapping[str, Mapping[str, float]], labels: Mapping[str, Labels],
               bt_boost: float, size: int) -> View:
    """One item's view from its pair weights per relation (``pairs[rel][other]``) and the
    popularity of everything involved: cosine per relation, best ``size`` kept (pure)."""
    sims: dict[str, list[float]] = {}
    for slot, rel in enumerate((CO_VIEWED, BOUGHT_TOGETHER)):
        pop = pops.get(rel, {})
        for other, pair in pairs.get(rel, {}).items():
            sim = cosine(pair, pop.get(item, 0.0), pop.get(other, 0.0))
            if other != item and sim > 0:
                sims.setdefault(other, [0.0, 0.0])[slot] = sim
    ranked = sorted(sims.items(), key=lambda kv: (-(kv[1][0] + bt_boost * kv[1][1]), kv[0]))
    cat, brand = labels.get(item, (None, None))
    return {"cat": cat, "brand": brand,
            "n": [[other, round(cv, 9), round(bt, 9), *labels.get(other, (None, None))]
                  for other, (cv, bt) in ranked[:size]]}


def split_stats(stats: Mapping[str, ItemStats]
                ) -> tuple[dict[str, dict[str, float]], dict[str, Labels]]:
    """(relation -> item -> popularity, item -> labels), as ``merge_view`` takes them."""
    pops: dict[str, dict[str, float]] = {CO_VIEWED: {}, BOUGHT_TOGETHER: {}}
    for item, (cv, bt, _, _) in stats.items():
        if cv:
            pops[CO_VIEWED][item] = cv
        if bt:
            pops[BOUGHT_TOGETHER][item] = bt
    return pops, {item: (cat, brand) for item, (_, _, cat, brand) in stats.items()}


def view_labels(views: Iterable[View]) -> dict[str, Labels]:
    """item -> (category, brand) for every neighbour the views name."""
    return {row[0]: (row[3], row[4]) for view in views for row in view["n"]}


def shards_of(store: StateStore, catalogue: Catalogue, topics: Iterable[str]) -> list[str]:
    """The shard prefixes of every partition of ``topics``."""
    return [store.shard(t, p) for t in topics for p in range(catalogue.topics[t].partitions)]


class NeighbourViews:
    """Reads, builds and stores views, and caches trending lists in the process."""

    def __init__(self, store: StateStore, catalogue: Catalogue, settings: RecommendSettings
                 ) -> None:
        self.store = store
        self.s = settings
        self.shards = {rel: shards_of(store, catalogue, topics)
                       for rel, topics in RELATION_TOPICS.items()}
        self.cat_shards = shards_of(store, catalogue, CATEGORY_TOPICS)
        self.brand_shards = shards_of(store, catalogue, BRAND_TOPICS)
        self.ttl_s = max(int(settings.view_ttl_hours * 3600), 1)
        self._trending: dict[str | None, tuple[float, list[list[Any]]]] = {}
        self._read = store.client.register_script(
            (data_dir("state") / "read_neighbours.lua").read_text())

    def key(self, item: str) -> str:
        return self.store.key(f"view:nb:{item}")

    @property
    def dirty_key(self) -> str:
        """The set of items whose views wait for the projector."""
        return self.store.key("view:dirty")

    # --- reads ------------------------------------------------------------------------------

    async def get(self, items: Sequence[str]) -> dict[str, View]:
        """The views of ``items``; missing ones are built now (and stored)."""
        items = list(dict.fromkeys(items))
        if not items:
            return {}
        pipe = self.store.client.pipeline(transaction=False)
        for item in items:
            pipe.get(self.key(item))
        found = {item: orjson.loads(raw)
                 for item, raw in zip(items, await pipe.execute(), strict=True) if raw}
        missing = [item for item in items if item not in found]
        if missing:
            built = await self.build(missing)
            # an item nobody has interacted with (say, a mistyped context item) is not stored
            await self._store({item: view for item, view in built.items()
                               if view["n"] or view["cat"]}, only_if_absent=True)
            found.update(built)
        return found

    async def trending(self, scope: str | None) -> list[list[Any]]:
        """``[[item, score, cat, brand], ..]``, best first: decayed popularity of all items or of
        a category (kept for the first three levels of a path; deeper filters read the third
        level and keep the matching items). Cached in the process: a trending list moves
        slowly, and each process rebuilding its own costs a few reads per scope and period."""
        now = time.monotonic()
        hit = self._trending.get(scope)
        if hit is not None and hit[0] > now:
            return hit[1]
        rows = await self._build_trending(scope)
        if len(self._trending) >= TRENDING_SCOPES:
            self._trending = {s: v for s, v in self._trending.items() if v[0] > now}
        if len(self._trending) < TRENDING_SCOPES:
            self._trending[scope] = (now + self.s.trending_cache_s, rows)
        return rows

    def forget_trending(self) -> None:
        """Drop the cached trending lists (the evaluator's clock is event time, not wall time)."""
        self._trending.clear()

    # --- building ---------------------------------------------------------------------------

    async def build(self, items: Sequence[str]) -> dict[str, View]:
        out: dict[str, View] = {}
        for start in range(0, len(items), BUILD_CHUNK):
            out.update(await self._build_chunk(items[start:start + BUILD_CHUNK]))
        return out

    async def refresh(self, items: Sequence[str]) -> int:
        """Rebuild and store the views of ``items`` (the worker's refresh); returns how many.
        Their merged popularity and labels are re-read from the shards and kept in
        ``view:items`` too: an item's figures change only when it is touched, so other views
        can read them there, one field per item, instead of from every shard."""
        for start in range(0, len(items), BUILD_CHUNK):
            chunk = items[start:start + BUILD_CHUNK]
            fresh = await self._stats_from_shards(chunk)
            await self._keep_stats(fresh)
            await self._store(await self._build_chunk(chunk, fresh), only_if_absent=False)
        return len(items)

    async def _store(self, views: Mapping[str, View], only_if_absent: bool) -> None:
        if not views:
            return
        pipe = self.store.client.pipeline(transaction=False)
        for item, view in views.items():
            pipe.set(self.key(item), orjson.dumps(view), ex=self.ttl_s, nx=only_if_absent)
        await pipe.execute()

    async def _build_chunk(self, items: Sequence[str],
                           known: Mapping[str, ItemStats] | None = None) -> dict[str, View]:
        calls = [(rel, self._read(keys=[shard + "wm"], args=[
                      f"{shard}{rel}:co:", NEIGHBOURS_READ, *items]))
                 for rel, shards in self.shards.items() for shard in shards]
        pairs: dict[str, dict[str, dict[str, float]]] = {item: {} for item in items}
        for (rel, _), per_item in zip(calls, await asyncio.gather(*(c for _, c in calls)),
                                      strict=True):
            for item, flat in zip(items, per_item, strict=True):
                merged = pairs[item].setdefault(rel, {})
                for k in range(0, len(flat), 2):
                    merged[flat[k]] = merged.get(flat[k], 0.0) + float(flat[k + 1])
        involved = set(items)
        for by_rel in pairs.values():
            for rel, merged in by_rel.items():
                # the strongest links by weight, twice the view's size, go on to be normalised
                if len(merged) > 2 * self.s.view_size:
                    by_rel[rel] = merged = dict(sorted(
                        merged.items(), key=lambda kv: -kv[1])[: 2 * self.s.view_size])
                involved.update(merged)
        stats = dict(known or {})
        stats.update(await self._stats(sorted(involved - stats.keys())))
        pops, labels = split_stats(stats)
        return {item: merge_view(item, pairs[item], pops, labels, self.s.bought_together_boost,
                                 self.s.view_size) for item in items}

    async def _stats(self, items: Sequence[str]) -> dict[str, ItemStats]:
        """Merged popularity and labels: from ``view:items`` where the worker keeps them, else
        (and for items it has not refreshed yet) from the shards."""
        if not items:
            return {}
        rows = await self.store.client.hmget(self.store.key("view:items"), list(items))
        found: dict[str, ItemStats] = {}
        for item, row in zip(items, rows, strict=True):
            if row:
                cv, bt, cat, brand = orjson.loads(row)
                found[item] = (cv, bt, cat, brand)
        missing = [item for item in items if item not in found]
        if missing:
            fresh = await self._stats_from_shards(missing)
            await self._keep_stats(fresh)
            found.update(fresh)
        return found

    async def _keep_stats(self, stats: Mapping[str, ItemStats]) -> None:
        mapping = {item: orjson.dumps(row) for item, row in stats.items() if any(row)}
        if mapping:
            await self.store.client.hset(self.store.key("view:items"), mapping=mapping)

    async def _stats_from_shards(self, items: Sequence[str]) -> dict[str, ItemStats]:
        if not items:
            return {}
        pipe = self.store.client.pipeline(transaction=False)
        for rel, shards in self.shards.items():
            for shard in shards:
                pipe.zmscore(f"{shard}{rel}:pop", list(items))
        for shard in self.cat_shards:
            pipe.hmget(shard + "icat", list(items))
        for shard in self.brand_shards:
            pipe.hmget(shard + "ibrand", list(items))
        rows = iter(await pipe.execute())
        pops: dict[str, list[float]] = {item: [0.0, 0.0] for item in items}
        for slot, shards in enumerate(self.shards.values()):
            for _ in shards:
                for item, score in zip(items, next(rows), strict=True):
                    if score is not None:
                        pops[item][slot] += score
        labels: dict[str, list[str | None]] = {item: [None, None] for item in items}
        for slot, shards in enumerate((self.cat_shards, self.brand_shards)):
            for _ in shards:
                for item, value in zip(items, next(rows), strict=True):
                    if value:
                        labels[item][slot] = value
        return {item: (pops[item][0], pops[item][1], labels[item][0], labels[item][1])
                for item in items}

    async def _build_trending(self, scope: str | None) -> list[list[Any]]:
        n = self.s.trending_size
        pipe = self.store.client.pipeline(transaction=False)
        level = category_levels(scope)[-1] if scope is not None else None
        if level is None:
            for rel, shards in self.shards.items():
                for shard in shards:
                    pipe.zrevrange(f"{shard}{rel}:pop", 0, n - 1, withscores=True)
        else:
            width = n if level == scope else n * 10
            for shard in self.shards[CO_VIEWED]:
                pipe.zrevrange(f"{shard}{CO_VIEWED}:popcat:{level}", 0, width - 1,
                               withscores=True)
        totals: dict[str, float] = {}
        for rows in await pipe.execute():
            for item, score in rows:
                totals[item] = totals.get(item, 0.0) + score
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
        _, labels = split_stats(await self._stats([item for item, _ in ranked]))
        if scope is not None and level != scope:
            ranked = [(i, s) for i, s in ranked if in_category(labels[i][0], scope)]
        return [[item, score, *labels[item]] for item, score in ranked[:n]]


class ViewRefresher:
    """The worker's side: remembers the items its batches touched and rebuilds their views every
    ``view_refresh_s``, at most ``view_refresh_max`` a round (oldest first; the rest wait)."""

    def __init__(self, views: NeighbourViews, settings: RecommendSettings) -> None:
        self.views = views
        self.s = settings
        self.dirty: dict[str, None] = {}   # insertion-ordered set
        #: user -> [(item, event time)] of their latest clicks and cart adds seen here
        self.recent: dict[str, list[tuple[str, int]]] = {}
        self.session_ms = settings.session_window_minutes * 60_000

    def observe(self, topic: str, events: Sequence[dict[str, Any]]) -> None:
        """Called with every applied batch's valid events. Besides the event's item, the user's
        last ``SESSION_ITEMS`` items within the session window are rebuilt: each just gained a
        link to this item ("viewed this, then that")."""
        for event in events:
            if topic in ("clicks", "carts") and "item_id" in event:
                item, user, t = event["item_id"], event["user_id"], event["event_time_ms"]
                self.dirty[item] = None
                recent = self.recent.pop(user, [])
                for other, seen in recent:
                    if other != item and abs(t - seen) <= self.session_ms:
                        self.dirty[other] = None
                self.recent[user] = [(item, t), *(r for r in recent if r[0] != item)
                                     ][:SESSION_ITEMS]
                if len(self.recent) > USERS_TRACKED:   # drop the least recently active half
                    self.recent = dict(list(self.recent.items())[USERS_TRACKED // 2:])
            elif topic == "orders" and event.get("event_type") == "purchase":
                for line in event["lines"][: self.s.max_lines_linked]:
                    self.dirty[line["item_id"]] = None

    async def hand_over(self) -> None:
        """The worker's side: add the touched items to ``view:dirty`` for the projector
        (``engine views``) and forget them here. Kept for the next call if Redis is away."""
        if not self.dirty:
            return
        items = list(self.dirty)
        self.dirty.clear()
        try:
            for start in range(0, len(items), 1000):
                await self.views.store.client.sadd(self.views.dirty_key,
                                                   *items[start:start + 1000])
        except TRANSIENT_REDIS_ERRORS as exc:
            metrics.REDIS_ERRORS.inc()
            self.dirty = dict.fromkeys([*items, *self.dirty])
            log.warning("%d touched items not handed to the view projector: Redis unavailable "
                        "(%s)", len(items), exc)

    async def tick(self) -> None:
        """Rebuild up to ``view_refresh_max`` touched items here (the offline evaluator)."""
        if not self.dirty:
            return
        batch = list(self.dirty)[: self.s.view_refresh_max]
        for item in batch:
            del self.dirty[item]
        try:
            metrics.VIEWS_REFRESHED.inc(await self.views.refresh(batch))
        except TRANSIENT_REDIS_ERRORS as exc:   # keep them for the next round
            metrics.REDIS_ERRORS.inc()
            self.dirty = dict.fromkeys([*batch, *self.dirty])
            log.warning("%d recommendation views not refreshed: Redis unavailable (%s)",
                        len(batch), exc)
        metrics.VIEW_BACKLOG.set(len(self.dirty))


async def project(views: NeighbourViews, settings: RecommendSettings,
                  rounds: int | None = None) -> None:
    """``engine views``: every ``view_refresh_s``, take up to ``view_refresh_max`` items from
    ``view:dirty`` and rebuild their views. Any number of projectors can share the set (SPOP
    hands each item to one). A projector killed mid-round loses that round's items: their views
    stay as they were until the items are touched again (or expire)."""
    done = 0
    while rounds is None or done < rounds:
        started = time.monotonic()
        try:
            items = await views.store.client.spop(views.dirty_key, settings.view_refresh_max)
            if items:
                metrics.VIEWS_REFRESHED.inc(await views.refresh(sorted(items)))
            metrics.VIEW_BACKLOG.set(await views.store.client.scard(views.dirty_key))
        except TRANSIENT_REDIS_ERRORS as exc:
            metrics.REDIS_ERRORS.inc()
            log.warning("view projector: Redis unavailable (%s); retrying", exc)
        done += 1
        await asyncio.sleep(max(settings.view_refresh_s - (time.monotonic() - started), 0.0))
