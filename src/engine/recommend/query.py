"""Recommendations, the read side: live lists for the API and the evaluator.

A personal query costs three or four pipelined round trips: the user's live state from the
user's own shards (history, region, personal vector; a handful of reads), the pre-scored
neighbour views of the user's seed items (``recommend.neighbours``), the cached trending list,
and the personal model's item vectors with stock at the user's centre. Scoring and the rules
are pure functions in ``core.recommend``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.config import Settings
from engine.contracts import Catalogue
from engine.core.recommend import (
    BOUGHT_TOGETHER,
    CO_VIEWED,
    Candidate,
    diversify,
    excluded_purchase,
    explain,
    in_category,
    recency_weight,
    score_candidates,
)
from engine.recommend.neighbours import (
    RELATION_TOPICS,
    Labels,
    NeighbourViews,
    View,
    shards_of,
    view_labels,
)
from engine.recommend.personal import dot_scores
from engine.store import StateStore

MODEL_VERSION = "reco-cooc-cosine/2"
#: Candidates kept for the rules and the personal model: k times this, at least
#: CANDIDATES_MIN; more when a category filter will drop some.
CANDIDATE_FACTOR, CANDIDATES_MIN, CATEGORY_FACTOR = 3, 30, 10
#: How long the state's latest event time, reported with every list, is reused.
STATE_TIME_CACHE_S = 0.25

Pick = tuple[str, float, dict[str, Any]]


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


@dataclass(frozen=True)
class UserState:
    #: relation -> item -> latest event time, merged over the user's shards
    history: dict[str, dict[str, float]]
    region: str | None
    #: (shard prefix, encoded vector) of the personal model, if the user has one
    vector: tuple[str, str] | None
    state_time: int | None


def similarities(views: Mapping[str, View]) -> dict[str, dict[str, dict[str, float]]]:
    """relation -> seed -> neighbour -> similarity, from the seeds' views."""
    out: dict[str, dict[str, dict[str, float]]] = {CO_VIEWED: {}, BOUGHT_TOGETHER: {}}
    for seed, view in views.items():
        out[CO_VIEWED][seed] = {row[0]: row[1] for row in view["n"] if row[1] > 0}
        out[BOUGHT_TOGETHER][seed] = {row[0]: row[2] for row in view["n"] if row[2] > 0}
    return out


class Recommender:
    def __init__(self, store: StateStore, catalogue: Catalogue, settings: Settings,
                 views: NeighbourViews | None = None) -> None:
        self.store = store
        self.s = settings.recommend
        self.settings = settings
        self.views = views or NeighbourViews(store, catalogue, settings.recommend)
        self.catalogue = catalogue
        self.click_shards = shards_of(store, catalogue, ["clicks"])
        self.inventory_shards = shards_of(store, catalogue, ["inventory"])
        self._state_time_cache: tuple[float, int | None] = (0.0, None)

    def _shards(self, topic: str, key: str) -> list[str]:
        """Where ``key``'s records of ``topic`` are: its partition's shard (``user_shards =
        "keyed"``, see streams/topics.toml), or every shard of the topic."""
        if self.s.user_shards == "keyed":
            return [self.store.shard(topic, self.catalogue.partition_of(topic, key))]
        return shards_of(self.store, self.catalogue, [topic])

    # --- reads ------------------------------------------------------------------------------

    async def _user_state(self, user: str) -> UserState:
        shards = {rel: [s for t in topics for s in self._shards(t, user)]
                  for rel, topics in RELATION_TOPICS.items()}
        click_shards = self._shards("clicks", user)
        pipe = self.store.client.pipeline(transaction=False)
        for rel, rel_shards in shards.items():
            for shard in rel_shards:
                pipe.zrange(f"{shard}{rel}:hist:{user}", 0, -1, withscores=True)
        for shard in click_shards:
            pipe.hget(f"{shard}user:{user}", "region")
            pipe.hget(shard + "mf:u", user)
        rows = iter(await pipe.execute())
        history: dict[str, dict[str, float]] = {rel: {} for rel in shards}
        for rel, rel_shards in shards.items():
            for _ in rel_shards:
                for item, t in next(rows):
                    history[rel][item] = max(history[rel].get(item, 0.0), t)
        region, vector = None, None
        for shard in click_shards:
            found_region, found_vector = next(rows), next(rows)
            region = region or found_region
            if found_vector and vector is None:
                vector = (shard, found_vector)
        return UserState(history, region, vector, await self._state_time())

    async def _state_time(self) -> int | None:
        """The latest event time in state, re-read at most every STATE_TIME_CACHE_S."""
        expires, cached = self._state_time_cache
        if time.monotonic() < expires:
            return cached
        pipe = self.store.client.pipeline(transaction=False)
        for shard in self.click_shards:
            pipe.hget(shard + "stats", "event_time_max")
        times = [int(t) for t in await pipe.execute() if t]
        latest = max(times) if times else None
        self._state_time_cache = (time.monotonic() + STATE_TIME_CACHE_S, latest)
        return latest

    async def _model_and_stock(self, state: UserState, items: Sequence[str]
                               ) -> tuple[dict[str, float], set[str]]:
        """The personal model's scores for ``items``, and those of them with no stock on hand
        or in transit at the user's distribution centre (when inventory is known)."""
        use_model = bool(self.s.mf_blend and state.vector)
        if not items or not (use_model or state.region):
            return {}, set()
        pipe = self.store.client.pipeline(transaction=False)
        if use_model and state.vector:
            pipe.hmget(state.vector[0] + "mf:i", list(items))
        if state.region:
            dc = self.settings.region(state.region).dc
            for shard in self.inventory_shards:   # keyed by item: a centre's items spread
                pipe.hmget(f"{shard}stock:{dc}", list(items))
        rows = await pipe.execute()
        predicted = dot_scores(state.vector[1], items, rows.pop(0)) \
            if use_model and state.vector else {}
        latest: dict[str, tuple[int, bool]] = {}
        for shard_rows in rows:
            for item, stamped in zip(items, shard_rows, strict=True):
                if stamped:
                    ts, on_hand, in_transit = (int(x) for x in stamped.split("|"))
                    if item not in latest or ts >= latest[item][0]:
                        latest[item] = (ts, on_hand + in_transit == 0)
        return predicted, {item for item, (_, empty) in latest.items() if empty}

    # --- public -----------------------------------------------------------------------------

    async def similar(self, item: str, k: int) -> Result:
        """Customers who viewed/bought this also viewed/bought; items without links yet get
        their category's trending items (reason ``similar_to``)."""
        views, state_time = await asyncio.gather(self.views.get([item]), self._state_time())
        view = views.get(item, {"cat": None, "brand": None, "n": []})
        scored = score_candidates({item: 1.0}, similarities({item: view}),
                                  self.s.bought_together_boost)
        scored.pop(item, None)
        picks: list[Pick] = [(c.item, c.score, explain(c)) for c in self._rank(scored)]
        labels = view_labels([view])
        category, brand = view["cat"], view["brand"]
        if len(picks) < k and category is not None:
            taken = {i for i, _, _ in picks} | {item}
            trending = await self.views.trending(category)
            labels.update({row[0]: (row[2], row[3]) for row in trending})
            picks += [(row[0], 0.0, {"type": "similar_to", "items": [item],
                                     "category": category, **({"brand": brand} if brand else {}),
                                     "trending_score": round(row[1], 6)})
                      for row in trending if row[0] not in taken]
        return self._finish(picks, k, set(), labels, state_time)

    async def for_user(self, user: str, k: int, context_item: str | None = None,
                       category: str | None = None) -> Result:
        """Personal list: neighbours of the user's recent history (and of the context item),
        then the rules; filled with trending items (in the context's or requested category)."""
        state = await self._user_state(user)
        seen = {**state.history[CO_VIEWED], **state.history[BOUGHT_TOGETHER]}
        seeds = self._seeds(seen)
        if context_item:
            seeds[context_item] = self.s.context_weight * max(seeds.values(), default=1.0)
        views = await self.views.get(list(seeds))
        labels = view_labels(views.values())
        labels.update({item: (view["cat"], view["brand"]) for item, view in views.items()})
        ranked: list[Candidate] = []
        if seeds:
            scored = score_candidates(seeds, similarities(views), self.s.bought_together_boost)
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
        context_cat = views[context_item]["cat"] if context_item in views else None
        scope = category or context_cat
        taken = {c.item for c in ranked} | set(seen) | ({context_item} if context_item else set())
        trending = await self.views.trending(scope)
        labels.update({row[0]: (row[2], row[3]) for row in trending})
        fill = [Candidate(row[0], 0.0) for row in trending
                if row[0] not in taken][: max(k - len(ranked), 0) + k]
        bought = set(state.history[BOUGHT_TOGETHER])
        kept = [*self._apply_rules(ranked, labels, bought, context_cat, category),
                *self._apply_rules(fill, labels, bought, None, category)]
        predicted, unavailable = await self._model_and_stock(state, [c.item for c in kept])
        picks = self._blend(kept, predicted, scope)
        return self._finish(picks, k, unavailable, labels, state.state_time)

    def _blend(self, kept: list[Candidate], predicted: dict[str, float], scope: str | None
               ) -> list[Pick]:
        """(1 - b) x co-occurrence score (scaled to the best candidate) + b x the personal
        model's prediction (clipped to [0, 1]); the larger part names the reason."""
        b = self.s.mf_blend
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

    def _finish(self, picks: list[Pick], k: int, unavailable: set[str],
                labels: dict[str, Labels], state_time: int | None) -> Result:
        """Stock, then diversity caps over the whole list (fill-ins included), then k."""
        picks = [p for p in picks if p[0] not in unavailable]
        chosen = set(diversify([item for item, _, _ in picks], labels, k, self.s.max_per_brand,
                               self.s.max_per_category))
        items = [Recommendation(item, round(score, 6), reason)
                 for item, score, reason in picks if item in chosen]
        return Result(items[:k], MODEL_VERSION, state_time)

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

    def _apply_rules(self, ranked: list[Candidate], labels: dict[str, Labels],
                     bought: set[str], context_cat: str | None, category: str | None
                     ) -> list[Candidate]:
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
