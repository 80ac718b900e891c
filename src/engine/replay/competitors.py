"""The competitor price feeds: Kaggle "Retail Price Optimization" and Project Hammer."""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from operator import attrgetter
from pathlib import Path
from typing import Any

from engine.replay.reading import (
    CURRENCY,
    Record,
    memoised,
    month_start_ms,
    read_csv,
    require_file,
    row_error,
    take,
    utc_ms,
)

# --- Kaggle "Retail Price Optimization" competitor columns ----------------------------------

_KAGGLE_COMPETITORS = ("comp_1", "comp_2", "comp_3")
_KAGGLE_COLUMNS = ("product_id", "month_year", *_KAGGLE_COMPETITORS)


def competitor_prices(path_kaggle: Path | str, limit: int | None = None,
                      skipped: Counter[str] | None = None) -> Iterator[Record]:
    """One ``competitor-prices`` event per (row, ``comp_1..3``) with a non-empty price.

    The event time is the first day of ``month_year`` (dd/mm/yyyy), 00:00 UTC: the data are
    monthly. Currency BRL is assumed (see ``CURRENCY_NOTES``). A zero price is emitted as is
    (the validator decides); an empty cell is skipped and counted as
    ``competitor_prices.empty_price`` in ``skipped``.
    """
    path = require_file(path_kaggle)
    return take(_kaggle_sorted(path, skipped if skipped is not None else Counter()), limit)


def _kaggle_sorted(path: Path, skipped: Counter[str]) -> Iterator[Record]:
    records = []
    for number, (product, month_year, *prices) in read_csv(path, _KAGGLE_COLUMNS):
        try:
            time_ms = month_start_ms(month_year)
            for competitor, price in zip(_KAGGLE_COMPETITORS, prices, strict=True):
                if not price.strip():
                    skipped["competitor_prices.empty_price"] += 1
                    continue
                event = {"event_id": f"retail_price:{number}:{competitor}",
                         "event_time_ms": time_ms, "item_id": product, "competitor": competitor,
                         "price": float(price), "currency": CURRENCY["competitor_prices"]}
                records.append(Record("competitor-prices", product, event, time_ms))
        except ValueError as exc:
            raise row_error(path, number, exc) from None
    records.sort(key=attrgetter("event_time_ms"))
    yield from records


# --- Project Hammer grocery shelf prices ----------------------------------------------------

_HAMMER_COLUMNS = ("nowtime", "current_price", "vendor", "product_name", "stock_status",
                   "is_sale")
_IN_STOCK = {"in_stock": True, "out_of_stock": False}
_BOOLEAN = {"True": True, "False": False}


def hammer_item_id(product_name: str) -> str:
    """A stable, whitespace-free item id for a Hammer product name (48 bits of SHA-1)."""
    return "hammer-" + hashlib.sha1(product_name.encode(), usedforsecurity=False).hexdigest()[:12]


class _HammerTable:
    """The Hammer rows in column arrays (about 30 bytes a row instead of about 1 KB as dicts).

    Names and vendors are interned to small integers; ``flags`` packs in_stock (known, value)
    and on_sale (known, value) into four bits.
    """

    def __init__(self) -> None:
        self.time_ms = array("q")
        self.row = array("I")
        self.price = array("d")
        self.product = array("I")
        self.vendor = array("I")
        self.flags = array("B")
        self.products: dict[str, int] = {}
        self.vendors: dict[str, int] = {}

    def add(self, number: int, values: tuple[str, ...], parse: Callable[[str], int]) -> None:
        nowtime, price, vendor, name, stock, sale = values
        in_stock, on_sale = _IN_STOCK.get(stock), _BOOLEAN.get(sale)
        flags = (0 if in_stock is None else 1 | 2 * in_stock)
        flags |= (0 if on_sale is None else 4 | 8 * on_sale)
        self.price.append(float(price))
        self.time_ms.append(parse(nowtime))
        self.row.append(number)
        self.product.append(self.products.setdefault(name, len(self.products)))
        self.vendor.append(self.vendors.setdefault(vendor, len(self.vendors)))
        self.flags.append(flags)


def hammer(path: Path | str, limit: int | None = None,
           skipped: Counter[str] | None = None) -> Iterator[Record]:
    """Project Hammer shelf prices -> ``competitor-prices`` (vendor = competitor, CAD).

    ``item_id`` is ``hammer_item_id(product_name)`` (the data has no product id). The file is
    not time-sorted, so it is read once into compact arrays and sorted; ``limit`` then takes
    the earliest events. A row with an empty price is skipped and counted as
    ``hammer.empty_price`` in ``skipped``.
    """
    path = require_file(path)
    return take(_hammer_sorted(path, skipped if skipped is not None else Counter()), limit)


def _hammer_sorted(path: Path, skipped: Counter[str]) -> Iterator[Record]:
    table, parse = _HammerTable(), memoised(utc_ms)
    for number, values in read_csv(path, _HAMMER_COLUMNS):
        if not values[1].strip():
            skipped["hammer.empty_price"] += 1
            continue
        try:
            table.add(number, values, parse)
        except ValueError as exc:
            raise row_error(path, number, exc) from None
    names = list(table.products)
    item_ids = [hammer_item_id(name) for name in names]
    vendors = list(table.vendors)
    for i in sorted(range(len(table.row)), key=table.time_ms.__getitem__):
        yield _hammer_record(table, i, item_ids, vendors)


def _hammer_record(table: _HammerTable, i: int, item_ids: list[str], vendors: list[str]
                   ) -> Record:
    item_id, time_ms, flags = item_ids[table.product[i]], table.time_ms[i], table.flags[i]
    event: dict[str, Any] = {"event_id": f"hammer:{table.row[i]}", "event_time_ms": time_ms,
                             "item_id": item_id, "competitor": vendors[table.vendor[i]],
                             "price": table.price[i], "currency": CURRENCY["hammer"]}
    if flags & 1:
        event["in_stock"] = bool(flags & 2)
    if flags & 4:
        event["on_sale"] = bool(flags & 8)
    return Record("competitor-prices", item_id, event, time_ms)

