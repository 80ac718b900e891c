"""``engine evaluate pricing``: pricing policies against the fitted demand simulator.

Every policy prices the same 52 products over the same simulated days, with the same competitor
paths and the same random demand draws (``seeds``): units sold on a day are Poisson with the
simulator's expected demand at the price charged and the competitor's price that day.

- ``static``: the list price (the mean of the product's own observed prices), never changed;
- ``match_lowest``: the competitor's price of the day, whatever it is;
- ``engine``: the live pricing code (``core.repricing.Repricer``, which the worker's stage
  runs: the pooled River conversion model, Thompson sampling over nearby prices, the
  guardrails of ``core.guardrails``), learning from the views and purchases it causes. Each
  product gets a steady stream of views (ten times its expected daily units at the list
  price, at least 20) that convert with the simulator's probability.

Every price charged is checked against the guardrails (floor = cost x (1 + margin), ceiling,
maximum step per change); a breach counts as a violation for that policy. For the engine every
change it makes is checked, including one the day's own demand triggers (a simulated day has
one price, the one its first decision set; such a change takes effect the next day). The data
set's "list price" is only the mean of the prices it observed, so the command runs with
``cap_at_list_price`` off and a DERIVED ceiling of ``CEILING_FACTOR`` x that price: otherwise no
policy could ever charge more than the static one.

The engine explores fixed price points (``ARM_SPACING`` apart around the list price) and learns
per point; its prior for a point is the item's own conversion moved by the category model's
relative price effect (``core.pricing.calibrated_prior``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.core.guardrails import Rules, Terms, bounds
from engine.core.pricing import ConversionModel, PricingParams
from engine.core.repricing import ItemPricing, PricingConfig, Repricer
from engine.pricing.simulator import Product, competitor_paths, fit_demand

POLICIES = ("static", "match_lowest", "engine")
MS_PER_DAY = 86_400_000
START_MS = 1_704_067_200_000   # 2024-01-01, the simulated calendar's first day
#: DERIVED: the simulated ceiling, as a multiple of the list price (the data set has none).
CEILING_FACTOR = 1.5
VIEWS_PER_UNIT, MIN_VIEWS = 10, 20
#: The engine's price points: list price x (1 + k x ARM_SPACING), k = -ARM_LEVELS..ARM_LEVELS.
ARM_SPACING, ARM_LEVELS = 0.1, 4


@dataclass
class Totals:
    profit: float = 0.0
    revenue: float = 0.0
    units: int = 0
    violations: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {"profit": round(self.profit, 2), "revenue": round(self.revenue, 2),
                "units": self.units, "violations": self.violations}


def terms_of(product: Product) -> Terms:
    return Terms(unit_cost=product.unit_cost, min_margin=product.min_margin,
                 list_price=product.list_price,
                 price_ceiling=round(product.list_price * CEILING_FACTOR, 2))


def breaches(previous: float, price: float, terms: Terms, rules: Rules) -> int:
    """How many guardrails a price change breaks (bounds, step)."""
    floor, ceiling = bounds(terms, rules)
    broken = int(price < floor - 1e-9) + int(price > ceiling + 1e-9)
    return broken + int(abs(price - previous) > rules.max_step * previous + 0.005)


class EnginePolicy:
    """The live pricing code itself (``core.repricing.Repricer``, as the worker's pricing stage
    runs it), fed each simulated day as the stage would receive it: the competitor's price of
    the day (screened, then a decision), then the day's views and purchases at the price
    charged (learned)."""

    def __init__(self, params: PricingParams, rules: Rules) -> None:
        self.rules = rules
        self.repricer = Repricer(PricingConfig(
            rules=rules, params=params, arm_spacing=ARM_SPACING, arm_levels=ARM_LEVELS,
            low_cover_days=0.0, high_cover_days=0.0))   # the simulator has no stock
        self.states: dict[str, ItemPricing] = {}
        self.models: dict[str, ConversionModel] = {}
        #: every change the engine made since the last ``take_changes``: (old, new)
        self.changes: list[tuple[float, float]] = []

    def _step(self, product: Product, signal: dict[str, Any]) -> None:
        state = self.states.setdefault(product.item_id, ItemPricing())
        model = self.models.setdefault(product.category,
                                       ConversionModel(self.repricer.c.params))
        change = self.repricer.step(product.item_id, state, model, signal, self.rules).change
        if change is not None and change["old_price"] is not None:
            self.changes.append((change["old_price"], change["new_price"]))

    def take_changes(self) -> list[tuple[float, float]]:
        taken, self.changes = self.changes, []
        return taken

    def start(self, product: Product, t: int) -> float:
        """The catalogue record a day before the first: the item's first price."""
        terms = terms_of(product)
        self._step(product, {"kind": "catalog", "event_time_ms": t - MS_PER_DAY,
                             "category": product.category, "list_price": product.list_price,
                             "unit_cost": product.unit_cost, "min_margin": product.min_margin,
                             "price_ceiling": terms.price_ceiling})
        price = self.states[product.item_id].price
        assert price is not None, f"{product.item_id}: inconsistent simulated terms"
        return price

    def price(self, product: Product, competitor: float, t: int) -> float:
        self._step(product, {"kind": "competitor", "event_time_ms": t, "competitor": "rival",
                             "price": competitor})
        price = self.states[product.item_id].price
        assert price is not None
        return price

    def learn(self, product: Product, price: float, t: int, views: int, units: int) -> None:
        self._step(product, {"kind": "view", "event_time_ms": t + 1, "quantity": views,
                             "price": price})
        if units:
            self._step(product, {"kind": "purchase", "event_time_ms": t + 2,
                                 "quantity": units, "price": price})


def simulate(products: Sequence[Product], paths: Sequence[np.ndarray], days: int, seed: int,
             policy: str, rules: Rules, params: PricingParams) -> Totals:
    totals = Totals()
    engine = EnginePolicy(params, rules) if policy == "engine" else None
    rng = np.random.default_rng(seed)
    for i, product in enumerate(products):
        path = paths[i % len(paths)] * product.competitor_mean
        terms = terms_of(product)
        views = max(MIN_VIEWS, round(VIEWS_PER_UNIT * product.daily_demand(
            product.list_price, product.competitor_mean)))
        price = engine.start(product, START_MS) if engine is not None else product.list_price
        for day in range(days):
            t = START_MS + day * MS_PER_DAY
            competitor = float(path[day])
            previous = price
            if policy == "match_lowest":
                price = round(competitor, 2)
            elif engine is not None:
                price = engine.price(product, competitor, t)
            if engine is not None:   # every change it made, including those the day's
                totals.violations += sum(   # demand caused after the price was charged
                    breaches(old, new, terms, rules) for old, new in engine.take_changes())
            else:
                totals.violations += breaches(previous, price, terms, rules) if day else 0
            expected = min(product.daily_demand(price, competitor), float(views))
            units = int(min(rng.poisson(expected), views))
            if engine is not None:
                engine.learn(product, price, t, views, units)
            totals.units += units
            totals.revenue += units * price
            totals.profit += units * (price - product.unit_cost)
    return totals


def evaluate(kaggle_path: Path, hammer_path: Path, days: int, seeds: Sequence[int],
             rules: Rules, params: PricingParams) -> dict[str, Any]:
    products = fit_demand(kaggle_path)
    paths = competitor_paths(hammer_path, days, len(products))
    out: dict[str, Totals] = {name: Totals() for name in POLICIES}
    for seed in seeds:
        for name in POLICIES:
            run = simulate(products, paths, days, seed, name, rules, params)
            acc = out[name]
            acc.profit += run.profit
            acc.revenue += run.revenue
            acc.units += run.units
            acc.violations += run.violations
    return {"policies": {name: totals.as_dict() for name, totals in out.items()},
            "products": len(products), "days": days, "seeds": list(seeds),
            "competitor_paths": len(paths)}


def render(result: dict[str, Any]) -> str:
    lines = [f"Pricing policies on the fitted demand simulator: {result['products']} products, "
             f"{result['days']} days, seeds {result['seeds']}",
             f"{'policy':<14}{'profit':>14}{'revenue':>14}{'units':>10}{'violations':>12}"]
    for name, t in result["policies"].items():
        lines.append(f"{name:<14}{t['profit']:>14,.2f}{t['revenue']:>14,.2f}{t['units']:>10,}"
                     f"{t['violations']:>12,}")
    return "\n".join(lines)

