"""The derived catalogue: one ``catalog`` event per item seen in the chosen data sets.

None of the data sets ships a product catalogue with costs, and the pricing core needs
``list_price`` and ``unit_cost`` to respect its margin guardrail. So the catalogue is *derived*
from the events themselves, and every derived value is listed in ``DERIVED_FIELDS`` (the README
shows that table): nobody should mistake a 30 % margin assumption for a measured cost.

Each item's record carries the earliest event time of its source, so ``merged(catalog, ...)``
delivers it before that source's first event (the catalogue goes first on ties).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ReplayError
from engine.replay.competitors import hammer_item_id
from engine.replay.reading import (
    CURRENCY,
    Record,
    memoised,
    month_start_ms,
    read_csv,
    require_file,
    utc_ms,
)
from engine.replay.sources import SOURCES, source_names

#: Assumed gross margin: unit_cost = list_price * COST_RATIO (no data set has costs).
COST_RATIO = 0.7
#: Minimum margin over unit cost the pricing guardrail keeps (a policy choice, not data).
MIN_MARGIN = 0.05
#: Online Retail has no categories; the retailer sells mostly gift-ware (UCI description).
ONLINE_RETAIL_CATEGORY = "giftware"

#: Every value the replay makes up rather than reads, with why; rendered in the README.
DERIVED_FIELDS: dict[str, str] = {
    "catalog.list_price": "median of the item's positive observed prices in its source "
                          "(Kaggle: own unit_price; Hammer: all grocers' shelf prices), "
                          "rounded to cents",
    "catalog.unit_cost": "round(list_price * 0.7, 2): no data set has costs, a 30 % gross "
                         "margin is assumed",
    "catalog.min_margin": "0.05 for every item: a policy default, not in any data set",
    "catalog.category (online_retail)": "'giftware' for every item: Online Retail has no "
                                        "categories",
    "catalog.title (competitor_prices)": "the Kaggle product_id: the data set has no names",
    "catalog.event_time_ms": "the earliest event time of the item's source, so the catalogue "
                             "precedes that source's events",
    "region (rees46)": "regions[crc32(user_id) % len(regions)] from config "
                       "replay.rees46_regions: REES46 has no geography",
    "currency (rees46)": "USD, assumed: REES46 states no currency",
    "currency (competitor_prices)": "BRL, assumed: the Kaggle set is derived from the "
                                    "Brazilian Olist data; its currency is not stated",
    "inventory (demo)": "opening stock per item x centre = the units its regions bought in the "
                        "replayed orders' first 7 days (engine demo only; no data set reports "
                        "stock; nothing replenishes it)",
    "region (online_retail)": "the Country slugged: lower case, spaces -> hyphens "
                              "('United Kingdom' -> 'united-kingdom')",
    "event_time_ms (online_retail)": "InvoiceDate read as UTC: the data set gives no time zone",
    "event_time_ms (competitor_prices)": "first day of month_year, 00:00 UTC: the data are "
                                         "monthly",
    "orders.order_id (rees46)": "rees46-{user_session}-{product_id}-{event_time_ms}: one "
                                "order per purchase row, REES46 has no order ids",
    "carts.quantity, orders.lines.quantity (rees46)": "1: REES46 records no quantities",
    "item_id (hammer)": "'hammer-' + first 12 hex digits of sha1(product_name): Hammer has no "
                        "product ids",
    "event_id (all sources)": "source name plus data row (or invoice, row and competitor), "
                              "so a replay repeats the same ids",
}


@dataclass
class _Item:
    """What one pass over a source learns about one item."""

    category: str
    prices: list[float] = field(default_factory=list)
    titles: Counter[str] = field(default_factory=Counter)
    brand: str = ""


@dataclass
class _Scan:
    """Items of one source and the earliest event time seen in it."""

    items: dict[str, _Item] = field(default_factory=dict)
    first_ms: int | None = None

    def see(self, time_ms: int, item_id: str, category: str, price: float,
            title: str = "", brand: str = "") -> None:
        if self.first_ms is None or time_ms < self.first_ms:
            self.first_ms = time_ms
        item = self.items.get(item_id)
        if item is None:
            item = self.items[item_id] = _Item(category=category, brand=brand)
        if price > 0:
            item.prices.append(price)
        if title:
            item.titles[title] += 1


def _scan_rees46(path: Path) -> _Scan:
    scan, parse = _Scan(), memoised(utc_ms)
    columns = ("event_time", "product_id", "category_id", "category_code", "brand", "price")
    for _, (time, product, category_id, code, brand, price) in read_csv(path, columns):
        scan.see(parse(time), product, code or category_id, float(price), brand=brand)
    return scan


def _scan_online_retail(path: Path) -> _Scan:
    scan, parse = _Scan(), memoised(utc_ms)
    columns = ("InvoiceDate", "StockCode", "Description", "UnitPrice")
    for _, (time, code, description, price) in read_csv(path, columns):
        scan.see(parse(time), code, ONLINE_RETAIL_CATEGORY, float(price),
                 title=description.strip())
    return scan


def _scan_competitor_prices(path: Path) -> _Scan:
    scan = _Scan()
    columns = ("month_year", "product_id", "product_category_name", "unit_price")
    for _, (month_year, product, category, price) in read_csv(path, columns):
        scan.see(month_start_ms(month_year), product, category, float(price), title=product)
    return scan


def _scan_hammer(path: Path) -> _Scan:
    """Prices per product name; the id is hashed once per name, not once per row."""
    scan, parse = _Scan(), memoised(utc_ms)
    columns = ("nowtime", "product_name", "food_category", "current_price")
    for _, (time, name, category, price) in read_csv(path, columns):
        if not price.strip():
            continue
        scan.see(parse(time), name, category, float(price), title=name)
    scan.items = {hammer_item_id(name): item for name, item in scan.items.items()}
    return scan


_SCANNERS: dict[str, Callable[[Path], _Scan]] = {
    "rees46": _scan_rees46,
    "online_retail": _scan_online_retail,
    "competitor_prices": _scan_competitor_prices,
    "hammer": _scan_hammer,
}


def _money(value: float) -> float:
    """Round to cents, unless that would make a tiny positive amount zero."""
    rounded = round(value, 2)
    return rounded if rounded > 0 else value


def _catalog_record(source: str, item_id: str, item: _Item, time_ms: int) -> Record | None:
    if not item.prices:
        return None
    list_price = _money(statistics.median(item.prices))
    event: dict[str, Any] = {"event_id": f"catalog:{source}:{item_id}", "event_time_ms": time_ms,
                             "item_id": item_id}
    if item.titles:
        event["title"] = item.titles.most_common(1)[0][0]
    event["category"] = item.category
    if item.brand:
        event["brand"] = item.brand
    event |= {"list_price": list_price, "unit_cost": _money(list_price * COST_RATIO),
              "min_margin": MIN_MARGIN, "currency": CURRENCY[source]}
    return Record("catalog", item_id, event, time_ms)


def derive_catalog(datasets_dir: Path | str, sources: Sequence[str]) -> list[Record]:
    """Catalogue records for every item with a positive price in ``sources``, time-ordered.

    Items whose every observed price is zero or negative get no record: there is no list price
    to derive, and the engine dead-letters their events anyway. Order: by event time, then by
    the order of ``sources``, then by item id, so the output is deterministic.
    """
    records: list[Record] = []
    for name in source_names(sources):
        path = require_file(Path(datasets_dir) / SOURCES[name].path)
        try:
            scan = _SCANNERS[name](path)
        except ValueError as exc:
            raise ReplayError(f"{path}: cannot derive the catalogue ({exc})") from None
        if scan.first_ms is None:
            continue
        for item_id in sorted(scan.items):
            record = _catalog_record(name, item_id, scan.items[item_id], scan.first_ms)
            if record is not None:
                records.append(record)
    records.sort(key=lambda r: r.event_time_ms)
    return records
