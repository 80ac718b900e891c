"""Pricing, the pure part: how likely a view is to turn into a purchase at a given price, and
which of a few nearby prices to charge (no I/O; the worker stage and the evaluator drive it).

Conversion model: River's ``LogisticRegression`` on features of the price shown and its context
(price relative to list, gap to the lowest fresh competitor, time of day and week), one model per
category so that items pool what they learn; each item also has its own indicator feature, whose
weight starts at 0 (the category's behaviour) and, held back by L2, moves only as the item's own
data accumulates. Views are negatives and purchases positives, so the model estimates the odds
of a purchase per view up to a constant factor, which cancels when candidate prices are compared.
Parameters are plain numbers (feature -> weight, intercept), stored in Redis as data.

Choice: Thompson sampling over a few fixed price points around the list price
(``price_arms``), so elasticity is learned without wild swings: the guardrails move the price
at most one step towards the point chosen. Each candidate's
conversion has a Beta posterior: the model's estimate as a prior worth ``prior_strength`` views,
updated by the views and purchases actually seen at that price. A sample is drawn per candidate
with a generator seeded by the decision's inputs (a replay makes the same choice), and the
candidate with the best sampled profit (or revenue) wins; expected demand and profit are
reported from the posterior means. The guardrails (``core.guardrails``) have the last word.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from river import linear_model, optim

from engine.core.guardrails import CENT, Rules, Terms, bounds

MS_PER_HOUR, MS_PER_DAY = 3_600_000, 86_400_000

Features = dict[str, float]
T = TypeVar("T")


@dataclass(frozen=True)
class PricingParams:
    learning_rate: float = 0.05
    l2: float = 0.001
    prior_strength: float = 20.0
    objective: str = "profit"   # or "revenue"


def features(item: str, price: float, list_price: float | None, competitor: float | None,
             event_time_ms: int) -> Features:
    """The conversion model's inputs for a view (or purchase) of ``item`` at ``price``."""
    hour = (event_time_ms % MS_PER_DAY) / MS_PER_HOUR
    weekday = (event_time_ms // MS_PER_DAY + 3) % 7   # 1970-01-01 was a Thursday (3)
    x: Features = {
        "log_price_to_list": math.log(price / list_price) if list_price else 0.0,
        "hour_sin": math.sin(2 * math.pi * hour / 24),
        "hour_cos": math.cos(2 * math.pi * hour / 24),
        "weekend": 1.0 if weekday >= 5 else 0.0,
        f"item={item}": 1.0,
    }
    if competitor:
        x["gap_to_competitor"] = (price - competitor) / competitor
    return x


class ConversionModel:
    """One category's model; ``weights``/``intercept`` round-trip through Redis as numbers."""

    def __init__(self, params: PricingParams, weights: Mapping[str, float] | None = None,
                 intercept: float = 0.0) -> None:
        self._lr = linear_model.LogisticRegression(optimizer=optim.SGD(params.learning_rate),
                                                   l2=params.l2,
                                                   intercept_lr=params.learning_rate)
        for name, value in (weights or {}).items():
            self._lr._weights[name] = value
        self._lr.intercept = intercept

    def learn(self, x: Features, bought: bool) -> None:
        self._lr.learn_one(x, bought)

    def learn_weighted(self, x: Features, bought: bool, weight: float) -> None:
        """One observation standing for ``weight`` of the views (a day's share, say)."""
        if weight > 0:
            self._lr.learn_one(x, bought, w=weight)

    def learn_item(self, name: str, weight: float, x: Features, bought: bool, w: float = 1.0
                   ) -> float:
        """Learn with an item's own weight lent to the model (the live engine keeps it in the
        item's state, so a category's model stays small); returns the item's new weight."""
        self._lr._weights[name] = weight
        if w > 0:
            self._lr.learn_one(x, bought, w=w)
        return float(self._lr._weights.pop(name, weight))

    def with_item(self, name: str, weight: float, use: Callable[[ConversionModel], T]) -> T:
        """``use(self)`` with the item's weight lent to the model."""
        self._lr._weights[name] = weight
        try:
            return use(self)
        finally:
            self._lr._weights.pop(name, None)

    def probability(self, x: Features) -> float:
        return float(self._lr.predict_proba_one(x)[True])

    @property
    def weights(self) -> dict[str, float]:
        return {name: float(w) for name, w in dict(self._lr._weights).items()}

    @property
    def intercept(self) -> float:
        return float(self._lr.intercept)


@functools.lru_cache(maxsize=65_536)
def price_arms(list_price: float, terms: Terms, rules: Rules, spacing: float, levels: int
               ) -> list[float]:
    """The fixed price points an item explores: list price x (1 + k x spacing) for k in
    -levels..levels, kept where the bounds allow. Fixed points let evidence accumulate per
    point, where prices relative to a drifting current price would each start from nothing."""
    floor, ceiling = bounds(terms, rules)
    arms = {round(list_price * (1.0 + k * spacing), 2) for k in range(-levels, levels + 1)}
    return sorted(a for a in arms   # cached: callers must not edit the list
                  if a >= CENT and floor - 1e-9 <= a <= ceiling + 1e-9)


def nearest_arm(price: float, arms: Sequence[float]) -> float:
    return min(arms, key=lambda a: (abs(a - price), a))


def calibrated_prior(model: ConversionModel, at: Mapping[float, Features], current: float,
                     views: int, purchases: int) -> dict[float, float]:
    """Conversion at each price: the item's own observed rate (with a weak 2 % prior worth 25
    views) moved by the model's *relative* effect of each price against the current one. The
    pooled model says how conversion changes with price; the item's data says its level."""
    # purchases can outnumber the views seen (orders from channels without a clickstream)
    rate = min((purchases + 0.5) / (views + 25.0), 0.95)
    base = math.log(rate / (1.0 - rate))
    ref = _logit(model.probability(at[current]))
    return {price: _sigmoid(base + _logit(model.probability(x)) - ref)
            for price, x in at.items()}


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True)
class Choice:
    price: float
    expected_demand: float    # purchases per day at that price (posterior mean)
    expected_value: float     # profit (or revenue) per day at that price (posterior mean)
    candidates: tuple[tuple[float, float, float], ...]   # (price, mean conversion, sample)


def choose_price(candidates: Sequence[float], prior: Mapping[float, float],
                 seen: Mapping[float, tuple[int, int]], views_per_day: float,
                 unit_cost: float | None, params: PricingParams, seed: int) -> Choice:
    """Thompson sampling: ``prior`` maps a candidate to the model's conversion estimate, ``seen``
    to (views, purchases) observed at that price."""
    rng = random.Random(seed)
    cost = unit_cost or 0.0
    best: tuple[float, float, float, float] | None = None   # (sampled value, price, mean, demand)
    rows = []
    for price in candidates:
        p0 = min(max(prior.get(price, 0.0), 1e-6), 1 - 1e-6)
        views, bought = seen.get(price, (0, 0))
        a = params.prior_strength * p0 + bought
        b = params.prior_strength * (1 - p0) + max(views - bought, 0)
        mean, sample = a / (a + b), rng.betavariate(a, b)
        unit_value = price - cost if params.objective == "profit" else price
        rows.append((price, mean, sample))
        value = sample * views_per_day * unit_value
        if best is None or value > best[0]:
            best = (value, price, mean, mean * views_per_day)
    assert best is not None, "choose_price needs at least one candidate"
    _, price, mean, demand = best
    unit_value = price - cost if params.objective == "profit" else price
    return Choice(price, demand, demand * unit_value, tuple(rows))


def decision_seed(item: str, event_time_ms: int) -> int:
    """The sampling seed of a decision: the same inputs draw the same samples on any replay."""
    return int.from_bytes(hashlib.sha256(f"{item}|{event_time_ms}".encode()).digest()[:8],
                          "big")


def decision_id(item: str, event_time_ms: int, old_price: float | None, new_price: float
                ) -> str:
    """Deterministic: a replay republishing a change gives it the same id, so consumers can
    drop the duplicate."""
    text = f"{item}|{event_time_ms}|{old_price}|{new_price:.2f}"
    return "pd-" + hashlib.sha256(text.encode()).hexdigest()[:32]
