"""Recommendations, the pure part: what an event adds to the model, and how candidates score.

Model (all state is numbers in Redis, see state/KEYS.md):
- Item-to-item co-occurrence in two relations: ``cv`` (co-viewed: views, wish-list adds,
  ratings and cart adds of one user within ``session_window_minutes``) and ``bt`` (bought
  together: purchases of one customer within ``purchase_window_days``, lines of one order
  included). Each pair is weighted by the type weight of the later event.
- Event-time decay by forward decay: a weight added at event time t is stored multiplied by
  ``g(t) = exp((t - epoch) / tau)``. Sums stay additive (so exactly-once replay gives the same
  state), and every score, popularity included, carries the same factor, so ratios and rankings
  are those of weights decayed to any common "now" — without a wall clock.
- Normalisation: cosine, ``C(i,j) / sqrt(P(i) P(j))`` with P the item's decayed interaction
  weight. Raw counts make every list the bestsellers; lift (``C / (P(i) P(j))``) over-rewards
  rare items seen once together; cosine sits between, is symmetric and bounded, and is the
  long-standing choice for item-to-item lists (Linden et al., Amazon, 2003).
- Bounded memory: at most ``neighbours_per_item`` neighbours per item and relation are kept
  (lowest pruned), and ``history_size`` items per user and relation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.config import RecommendSettings
from engine.core.activity import Event, Op

MS_PER_DAY = 86_400_000
CO_VIEWED, BOUGHT_TOGETHER = "cv", "bt"


class RecommendCore:
    """Event -> state operations for the recommendation model (pure)."""

    def __init__(self, settings: RecommendSettings) -> None:
        self.s = settings
        self.epoch_ms = settings.decay_epoch_ms
        self.tau_ms = settings.half_life_days * MS_PER_DAY / math.log(2)
        self.session_ms = int(settings.session_window_minutes * 60_000)
        self.purchase_ms = int(settings.purchase_window_days * MS_PER_DAY)

    def growth(self, event_time_ms: float) -> float:
        """The forward-decay factor g(t)."""
        return math.exp((event_time_ms - self.epoch_ms) / self.tau_ms)

    def weight(self, topic: str, event: Event) -> float:
        s = self.s
        kind = str(event.get("event_type", ""))
        if topic == "clicks":
            if kind == "rating":
                return s.weight_rating if event["rating"] >= 3 else s.weight_rating_low
            return {"view": s.weight_view, "wishlist": s.weight_wishlist}.get(kind, 0.0)
        if topic == "carts":
            return s.weight_cart if kind == "add" else 0.0
        if topic == "orders":
            return s.weight_purchase if kind == "purchase" else 0.0
        return 0.0

    def ops(self, topic: str, event: Event) -> list[Op]:
        if topic == "orders":
            return self._order(event)
        if topic not in ("clicks", "carts") or "item_id" not in event:
            return []
        w = self.weight(topic, event)
        if w <= 0:
            return []
        item, t = event["item_id"], int(event["event_time_ms"])
        ops = self._interaction(CO_VIEWED, event["user_id"], item, t, w, self.session_ms)
        if event.get("category"):
            # trending per category, and per parent category for filters on a prefix
            ops += [("zincrby", f"{CO_VIEWED}:popcat:{level}", item, ops[1][3])
                    for level in category_levels(event["category"])]
        ops += _labels(item, event)
        if event.get("region"):
            ops.append(("hset", f"user:{event['user_id']}", "region", event["region"]))
        return ops

    def _order(self, event: Event) -> list[Op]:
        if event["event_type"] != "purchase":
            return []
        owner = event.get("user_id") or f"order:{event['order_id']}"
        t, w = int(event["event_time_ms"]), self.s.weight_purchase
        ops: list[Op] = []
        for line in event["lines"][: self.s.max_lines_linked]:
            ops += self._interaction(BOUGHT_TOGETHER, owner, line["item_id"], t, w,
                                     self.purchase_ms)
            if line.get("category"):
                ops.append(("hset", "icat", line["item_id"], line["category"]))
        return ops

    def _interaction(self, rel: str, user: str, item: str, t: int, w: float, window_ms: int
                     ) -> list[Op]:
        score = repr(w * self.growth(t))
        s = self.s
        spec = (f"{t}|{score}|{window_ms}|{s.history_size}|{s.partners_per_event}|"
                f"{s.neighbours_per_item}|{rel}:co:")
        return [("covisit", f"{rel}:hist:{user}", item, spec),
                ("zincrby", f"{rel}:pop", item, score)]


def category_levels(category: str, depth: int = 3) -> list[str]:
    """"a.b.c.d" -> ["a", "a.b", "a.b.c"]: the levels a category filter can name (a bounded
    number, so one view costs at most `depth` trending updates)."""
    parts = category.split(".")
    return [".".join(parts[: i + 1]) for i in range(min(len(parts), depth))]


def _labels(item: str, event: Event) -> list[Op]:
    ops: list[Op] = []
    if event.get("category"):
        ops.append(("hset", "icat", item, event["category"]))
    if event.get("brand"):
        ops.append(("hset", "ibrand", item, event["brand"]))
    return ops


# --- scoring (pure) ------------------------------------------------------------------------


def cosine(pair: float, pop_a: float, pop_b: float) -> float:
    """C(a,b) / sqrt(P(a) P(b)); 0 when either popularity is unknown."""
    if pair <= 0 or pop_a <= 0 or pop_b <= 0:
        return 0.0
    return pair / math.sqrt(pop_a * pop_b)


def recency_weight(age_ms: float, half_life_ms: float) -> float:
    """A seed's influence: 1 for the latest interaction, halving every half-life of age."""
    return float(0.5 ** (max(age_ms, 0.0) / half_life_ms))


@dataclass(slots=True)
class Candidate:
    item: str
    score: float = 0.0
    #: (relation, seed item) -> contribution, for the explanation
    evidence: dict[tuple[str, str], float] = field(default_factory=dict)
    #: the part of the score that comes from the user having seen the item recently
    recent: float = 0.0

    def add_recent(self, amount: float) -> None:
        self.recent += amount
        self.score += amount

    def add(self, relation: str, seed: str, amount: float) -> None:
        if amount > 0:
            self.score += amount
            key = (relation, seed)
            self.evidence[key] = self.evidence.get(key, 0.0) + amount


def score_candidates(seeds: Mapping[str, float],
                     sims: Mapping[str, Mapping[str, Mapping[str, float]]], bt_boost: float
                     ) -> dict[str, Candidate]:
    """Sum over seeds j of seed weight x similarity(j, c), per relation (bt boosted).

    ``sims[rel][seed]`` maps candidate -> similarity (cosine, from the seed's view).
    """
    out: dict[str, Candidate] = {}
    for rel, by_seed in sims.items():
        factor = bt_boost if rel == BOUGHT_TOGETHER else 1.0
        for seed, weight in seeds.items():
            for item, sim in by_seed.get(seed, {}).items():
                out.setdefault(item, Candidate(item)).add(rel, seed, weight * factor * sim)
    return out


REASON_BY_RELATION = {CO_VIEWED: "co_viewed_with", BOUGHT_TOGETHER: "bought_together_with"}


def explain(candidate: Candidate, limit: int = 3) -> dict[str, Any]:
    """The strongest relation and the seed items behind it, machine-readable."""
    by_rel: dict[str, float] = {}
    for (rel, _), amount in candidate.evidence.items():
        by_rel[rel] = by_rel.get(rel, 0.0) + amount
    rel = max(by_rel, key=lambda r: by_rel[r])
    seeds = sorted(((a, s) for (r, s), a in candidate.evidence.items() if r == rel),
                   reverse=True)
    return {"type": REASON_BY_RELATION[rel], "items": [s for _, s in seeds[:limit]]}


def in_category(category: str | None, wanted: str) -> bool:
    """Category paths are dot separated; a filter matches the category and its children."""
    return category is not None and (category == wanted or category.startswith(wanted + "."))


def diversify(ranked: Iterable[str], labels: Mapping[str, tuple[str | None, str | None]],
              k: int, max_per_brand: int, max_per_category: int) -> list[str]:
    """Greedy caps: keep the ranking, skip an item whose brand or category is already full."""
    brands: dict[str, int] = {}
    cats: dict[str, int] = {}
    out: list[str] = []
    for item in ranked:
        category, brand = labels.get(item, (None, None))
        if max_per_brand and brand and brands.get(brand, 0) >= max_per_brand:
            continue
        if max_per_category and category and cats.get(category, 0) >= max_per_category:
            continue
        out.append(item)
        if brand:
            brands[brand] = brands.get(brand, 0) + 1
        if category:
            cats[category] = cats.get(category, 0) + 1
        if len(out) == k:
            break
    return out


def excluded_purchase(category: str | None, repurchasable: Iterable[str]) -> bool:
    """A bought item is excluded unless its category is listed as repurchasable."""
    return not any(in_category(category, c) for c in repurchasable)
