"""Recommendations, the read side: live lists from Redis state for the API and the evaluator.

Reads merge the shards of the topics a relation is written from (``cv``: clicks and carts,
``bt``: orders), in a few pipelined round trips: the user's history, the seeds' neighbours, the
candidates' popularity, then labels and stock for the rules. Scoring is in ``core.recommend``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.config import Settings
from engine.contracts import Catalogue
from engine.core.recommend import (
    BOUGHT_TOGETHER,
    CO_VIEWED,
    Candidate,
    category_levels,
    diversify,
    excluded_purchase,
    explain,
    in_category,
    recency_weight,
    score_candidates,
)
from engine.recommend.personal import user_scores
from engine.store import StateStore

MODEL_VERSION = "reco-cooc-cosine/1"
RELATION_TOPICS = {CO_VIEWED: ("clicks", "carts"), BOUGHT_TOGETHER: ("orders",)}
#: Neighbours read per seed and shard before merging.
NEIGHBOURS_READ = 25
#: Candidates kept for the rules' reads (labels, stock, personal model): k times this, at least
#: CANDIDATES_MIN; more when a category filter will drop some.
CANDIDATE_FACTOR, CANDIDATES_MIN, CATEGORY_FACTOR = 3, 30, 10


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    reason: dict[str, Any]


@dataclass(frozen=True)
class Result:
    items: list[Recommendation]
    model_version: str
    state_event_time_ms: int | None


class Recommender:
    def __init__(self, store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
        self.store = store
        self.s = settings.recommend
        self.settings = settings
        self.shards = {rel: [(t, p) for t in topics for p in range(catalogue.topics[t].partitions)]
                       for rel, topics in RELATION_TOPICS.items()}
        self.click_partitions = catalogue.topics["clicks"].partitions
        self.click_shards = [("clicks", p) for p in range(self.click_partitions)]
        self.inventory_shards = [("inventory", p)
                                 for p in range(catalogue.topics["inventory"].partitions)]

    def _key(self, shard: tuple[str, int], name: str) -> str:
        return self.store.shard(*shard) + name

    # --- reads ------------------------------------------------------------------------------

    async def _history(self, user: str) -> dict[str, dict[str, float]]:
        """rel -> item -> latest event time, merged over the user's shards."""
        pipe = self.store.client.pipeline(transaction=False)
        order = []
        for rel, shards in self.shards.items():
            for shard in shards:
                pipe.zrange(self._key(shard, f"{rel}:hist:{user}"), 0, -1, withscores=True)
                order.append(rel)
        out: dict[str, dict[str, float]] = {rel: {} for rel in self.shards}
        for rel, rows in zip(order, await pipe.execute(), strict=True):
            for item, t in rows:
                out[rel][item] = max(out[rel].get(item, 0.0), t)
        return out

    async def _neighbours(self, seeds: Iterable[str]) -> dict[str, dict[str, dict[str, float]]]:
        pipe = self.store.client.pipeline(transaction=False)
        order = []
        for rel, shards in self.shards.items():
            for seed in seeds:
                for shard in shards:
                    pipe.zrevrange(self._key(shard, f"{rel}:co:{seed}"), 0, NEIGHBOURS_READ - 1,
                                   withscores=True)
                    order.append((rel, seed))
        out: dict[str, dict[str, dict[str, float]]] = {rel: {} for rel in self.shards}
        for (rel, seed), rows in zip(order, await pipe.execute(), strict=True):
            merged = out[rel].setdefault(seed, {})
            for item, weight in rows:
                merged[item] = merged.get(item, 0.0) + weight
        return out

    async def _popularity(self, items: Sequence[str]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {rel: {} for rel in self.shards}
        if not items:
            return out
        pipe = self.store.client.pipeline(transaction=False)
        order = []
        for rel, shards in self.shards.items():
            for shard in shards:
                pipe.zmscore(self._key(shard, f"{rel}:pop"), list(items))
                order.append(rel)
        for rel, scores in zip(order, await pipe.execute(), strict=True):
            for item, score in zip(items, scores, strict=True):
                if score is not None:
                    out[rel][item] = out[rel].get(item, 0.0) + score
        return out

    async def _labels(self, items: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """item -> (category, brand), from what click events said about it."""
        if not items:
            return {}
        pipe = self.store.client.pipeline(transaction=False)
        for shard in self.click_shards:
            pipe.hmget(self._key(shard, "icat"), list(items))
            pipe.hmget(self._key(shard, "ibrand"), list(items))
        rows = await pipe.execute()
        cats: dict[str, str] = {}
        brands: dict[str, str] = {}
        for i in range(0, len(rows), 2):
            for item, cat, brand in zip(items, rows[i], rows[i + 1], strict=True):
                if cat:
                    cats[item] = cat
                if brand:
                    brands[item] = brand
        return {item: (cats.get(item), brands.get(item)) for item in items}

    async def _trending(self, category: str | None, n: int) -> list[tuple[str, float]]:
        """Decayed popularity merged over shards: of all items (views to purchases), or of a
        category (``cv:popcat:<level>``, kept for the first three levels of a category path;
        deeper filters read their third level and keep the matching items)."""
        pipe = self.store.client.pipeline(transaction=False)
        if category is None:
            for rel, shards in self.shards.items():
                for shard in shards:
                    pipe.zrevrange(self._key(shard, f"{rel}:pop"), 0, n - 1, withscores=True)
        else:
            level = category_levels(category)[-1]
            width = n if level == category else n * 10
            for shard in self.shards[CO_VIEWED]:
                pipe.zrevrange(self._key(shard, f"{CO_VIEWED}:popcat:{level}"), 0, width - 1,
                               withscores=True)
        totals: dict[str, float] = {}
        for rows in await pipe.execute():
            for item, score in rows:
                totals[item] = totals.get(item, 0.0) + score
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
        if category is not None and category_levels(category)[-1] != category:
            labels = await self._labels([item for item, _ in ranked])
            ranked = [(i, s) for i, s in ranked if in_category(labels[i][0], category)]
        return ranked[:n]

    async def _out_of_stock(self, items: Sequence[str], user: str) -> set[str]:
        """Items with no stock on hand or in transit at the user's distribution centre."""
        pipe = self.store.client.pipeline(transaction=False)
        for shard in self.click_shards:
            pipe.hget(self._key(shard, f"user:{user}"), "region")
        region = next((r for r in await pipe.execute() if r), None)
        if region is None or not items:
            return set()
        dc = self.settings.region(region).dc
        pipe = self.store.client.pipeline(transaction=False)
        for shard in self.inventory_shards:
            for item in items:
                pipe.hget(self._key(shard, f"inv:{item}"), dc)
        rows = await pipe.execute()
        latest: dict[str, tuple[int, bool]] = {}
        for i, stamped in enumerate(rows):
            if stamped:
                item = items[i % len(items)]
                ts, on_hand, in_transit = (int(x) for x in stamped.split("|"))
                if item not in latest or ts >= latest[item][0]:
                    latest[item] = (ts, on_hand + in_transit == 0)
        return {item for item, (_, empty) in latest.items() if empty}

    async def _state_time(self) -> int | None:
        pipe = self.store.client.pipeline(transaction=False)
        for shard in self.click_shards:
            pipe.hget(self._key(shard, "stats"), "event_time_max")
        times = [int(t) for t in await pipe.execute() if t]
        return max(times) if times else None

    # --- public -----------------------------------------------------------------------------

    async def similar(self, item: str, k: int) -> Result:
        """Customers who viewed/bought this also viewed/bought; items without links yet get
        their category's trending items (reason ``similar_to``)."""
        neighbours = await self._neighbours([item])
        candidates = {c for rel in neighbours.values() for c in rel.get(item, {})}
        pops = await self._popularity([item, *candidates])
        scored = score_candidates({item: 1.0}, neighbours, pops, self.s.bought_together_boost)
        scored.pop(item, None)
        picks = [(c.item, c.score, explain(c)) for c in self._rank(scored)]
        category, brand = (await self._labels([item]))[item]
        if len(picks) < k and category is not None:
            taken = {i for i, _, _ in picks} | {item}
            picks += [(other, 0.0, {"type": "similar_to", "items": [item],
                                    "category": category, **({"brand": brand} if brand else {}),
                                    "trending_score": round(score, 6)})
                      for other, score in await self._trending(category, 2 * k + len(taken))
                      if other not in taken]
        return await self._finish(picks, k, set())

    async def for_user(self, user: str, k: int, context_item: str | None = None,
                       category: str | None = None) -> Result:
        """Personal list: neighbours of the user's recent history (and of the context item),
        then the rules; filled with trending items (in the context's or requested category)."""
        history = await self._history(user)
        seen = {**history[CO_VIEWED], **history[BOUGHT_TOGETHER]}
        seeds = self._seeds(seen)
        if context_item:
            seeds[context_item] = self.s.context_weight * max(seeds.values(), default=1.0)
        ranked: list[Candidate] = []
        if seeds:
            neighbours = await self._neighbours(list(seeds))
            candidates = {c for rel in neighbours.values() for by in rel.values() for c in by}
            pops = await self._popularity([*seeds, *candidates])
            scored = score_candidates(seeds, neighbours, pops, self.s.bought_together_boost)
            for seed in seeds:
                scored.pop(seed, None)
            if self.s.recent_items_weight:
                for seed, weight in seeds.items():
                    if seed != context_item:
                        scored.setdefault(seed, Candidate(seed)).add_recent(
                            self.s.recent_items_weight * weight)
            ranked = self._rank(scored)
        keep = max(k * (CATEGORY_FACTOR if category else CANDIDATE_FACTOR), CANDIDATES_MIN)
        ranked = ranked[:keep]
        context_cat = (await self._labels([context_item]))[context_item][0] if context_item \
            else None
        scope = category or context_cat
        taken = {c.item for c in ranked} | set(seen) | ({context_item} if context_item else set())
        fill = [Candidate(item, 0.0) for item, _ in
                await self._trending(scope, 2 * k + min(len(taken), 50))
                if item not in taken][: max(k - len(ranked), 0) + k]
        labels = await self._labels([c.item for c in [*ranked, *fill]])
        bought = set(history[BOUGHT_TOGETHER])
        kept = [*self._apply_rules(ranked, labels, bought, context_cat, category),
                *self._apply_rules(fill, labels, bought, None, category)]
        picks = await self._blend(user, kept, scope)
        return await self._finish(picks, k, await self._out_of_stock(
            [c.item for c in kept], user))

    async def _blend(self, user: str, kept: list[Candidate], scope: str | None
                     ) -> list[tuple[str, float, dict[str, Any]]]:
        """(1 - b) x co-occurrence score (scaled to the best candidate) + b x the personal
        model's prediction (clipped to [0, 1]); the larger part names the reason."""
        b = self.s.mf_blend
        predicted = await user_scores(self.store, self.click_partitions, user,
                                      [c.item for c in kept]) if b else {}
        top = max((c.score for c in kept), default=0.0) or 1.0
        picks = []
        for c in kept:
            cooc = (1 - b) * c.score / top
            mf = b * min(max(predicted.get(c.item, 0.0), 0.0), 1.0)
            if mf > cooc or c.recent > c.score - c.recent:
                signals: dict[str, Any] = {"mf_prediction": round(mf / b, 4) if b else None}
                if c.recent:
                    signals["recently_viewed"] = round(c.recent, 4)
                reason: dict[str, Any] = {"type": "personal_model", "signals": signals}
            elif c.evidence:
                reason = explain(c)
            else:
                reason = {"type": "trending_in", "category": scope or "all"}
            picks.append((c.item, cooc + mf, reason))
        picks.sort(key=lambda p: -p[1])   # stable: equal scores keep the incoming order
        return picks

    async def _finish(self, picks: list[tuple[str, float, dict[str, Any]]], k: int,
                      unavailable: set[str]) -> Result:
        """Stock, then diversity caps over the whole list (fill-ins included), then k."""
        picks = [p for p in picks if p[0] not in unavailable]
        labels = await self._labels([item for item, _, _ in picks])
        chosen = set(diversify([item for item, _, _ in picks], labels, k, self.s.max_per_brand,
                               self.s.max_per_category))
        items = [Recommendation(item, round(score, 6), reason)
                 for item, score, reason in picks if item in chosen]
        return Result(items[:k], MODEL_VERSION, await self._state_time())

    def _seeds(self, seen: dict[str, float]) -> dict[str, float]:
        if not seen:
            return {}
        latest = max(seen.values())
        half_life_ms = self.s.seed_half_life_hours * 3_600_000
        recent = sorted(seen.items(), key=lambda kv: -kv[1])[: self.s.seed_items]
        return {item: recency_weight(latest - t, half_life_ms) for item, t in recent}

    @staticmethod
    def _rank(scored: dict[str, Candidate]) -> list[Candidate]:
        return sorted((c for c in scored.values() if c.score > 0),
                      key=lambda c: (-c.score, c.item))

    def _apply_rules(self, ranked: list[Candidate],
                     labels: dict[str, tuple[str | None, str | None]], bought: set[str],
                     context_cat: str | None, category: str | None) -> list[Candidate]:
        """Drop bought items (unless repurchasable) and items outside the category filter;
        boost items in the context item's category."""
        out = []
        for c in ranked:
            cat = labels.get(c.item, (None, None))[0]
            if c.item in bought and excluded_purchase(cat, self.s.repurchasable_categories):
                continue
            if category is not None and not in_category(cat, category):
                continue
            if context_cat is not None and cat == context_cat:
                c.score *= 1.0 + self.s.context_category_boost
            out.append(c)
        return sorted(out, key=lambda c: -c.score)   # stable: ties keep the incoming order

