"""A demand simulator fitted to real data, for ``engine evaluate pricing``.

Demand response (``fit_demand``): the Kaggle "Retail Price Optimization" table has, per product
and month, our unit price, three competitors' prices and the quantity sold. Per category, a
log-linear model with a fixed effect per product is fitted by least squares on the
within-product variation:

    log q = a_product + b_category x log p + c_category x log(p / mean competitor price)

Elasticities are kept inside [-4, -0.2] (a category whose few rows say that demand rises with
price is treated as barely elastic, not rewarded for raising prices). Monthly quantities are
spread over 30 days.

Competitor paths (``competitor_paths``): the shapes of the most variable real shelf-price
series from Project Hammer (one vendor and product each, daily last price), divided by their
mean; each simulated
product replays one shape scaled to its own mean competitor price. The scaling, and the unit
cost (``COST_RATIO`` of the mean own price, as in the derived catalogue), are DERIVED.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ReplayError
from engine.replay.catalog import COST_RATIO, MIN_MARGIN

ELASTICITY_RANGE = (-4.0, -0.2)
DAYS_PER_MONTH = 30.0


@dataclass(frozen=True)
class Product:
    item_id: str
    category: str
    list_price: float       # the mean of our own observed prices
    unit_cost: float        # DERIVED: COST_RATIO x list price
    min_margin: float
    competitor_mean: float
    intercept: float        # a_product
    own_elasticity: float   # b_category
    gap_elasticity: float   # c_category

    def daily_demand(self, price: float, competitor: float) -> float:
        """Expected units per day at ``price`` with the competitor at ``competitor``."""
        log_q = (self.intercept + self.own_elasticity * math.log(price)
                 + self.gap_elasticity * math.log(price / competitor))
        return math.exp(log_q) / DAYS_PER_MONTH


def _rows(path: Path) -> Iterator[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            yield from csv.DictReader(f)
    except FileNotFoundError:
        raise ReplayError(f"data file not found: {path}") from None


def fit_demand(path: Path | str) -> list[Product]:
    """One ``Product`` per product id of the Kaggle table (see the module docstring)."""
    by_product: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    category: dict[str, str] = {}
    for row in _rows(Path(path)):
        comps = [float(row[c]) for c in ("comp_1", "comp_2", "comp_3") if float(row[c] or 0) > 0]
        qty, price = float(row["qty"]), float(row["unit_price"])
        if qty <= 0 or price <= 0 or not comps:
            continue
        by_product[row["product_id"]].append((price, float(np.mean(comps)), qty))
        category[row["product_id"]] = row["product_category_name"]
    fitted: dict[str, tuple[float, float]] = {}
    for cat in sorted(set(category.values())):
        xs, ys = [], []
        for pid, rows in by_product.items():
            if category[pid] != cat or len(rows) < 2:
                continue
            a = np.array([[math.log(p), math.log(p / c)] for p, c, _ in rows])
            y = np.log([q for _, _, q in rows])
            xs.append(a - a.mean(axis=0))
            ys.append(y - y.mean())
        b, c = (np.linalg.lstsq(np.vstack(xs), np.concatenate(ys), rcond=None)[0]
                if xs else (ELASTICITY_RANGE[1], 0.0))
        fitted[cat] = (float(np.clip(b, *ELASTICITY_RANGE)), float(np.clip(c, -4.0, 0.0)))
    out = []
    for pid in sorted(by_product):
        rows = by_product[pid]
        b, c = fitted[category[pid]]
        intercept = float(np.mean([math.log(q) - b * math.log(p) - c * math.log(p / cm)
                                   for p, cm, q in rows]))
        list_price = float(np.mean([p for p, _, _ in rows]))
        out.append(Product(pid, category[pid], round(list_price, 2),
                           round(list_price * COST_RATIO, 2), MIN_MARGIN,
                           float(np.mean([cm for _, cm, _ in rows])), intercept, b, c))
    return out


def competitor_paths(path: Path | str, days: int, count: int) -> list[np.ndarray]:
    """``count`` daily price shapes (mean 1) of ``days`` days: the in-stock series of the Project
    Hammer file that vary most."""
    series: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    try:
        with gzip.open(path, "rt", newline="") as f:
            for row in csv.DictReader(f):
                if row["stock_status"] == "out_of_stock" or not row["current_price"]:
                    continue
                series[(row["vendor"], row["product_name"])][row["nowtime"][:10]] = float(
                    row["current_price"])
    except FileNotFoundError:
        raise ReplayError(f"data file not found: {path}") from None
    candidates = []
    for key, by_day in sorted(series.items()):
        values = np.array([by_day[d] for d in sorted(by_day)][:days])
        if len(values) == days and values.min() > 0:
            shape = values / values.mean()
            candidates.append((-float(shape.std()), key, shape))
    # the most variable series: a flat competitor teaches nothing about following one
    shapes = [shape for _, _, shape in sorted(candidates, key=lambda c: c[:2])[:count]]
    if not shapes:
        raise ReplayError(f"no competitor price series of {days} days in {path}")
    return shapes
