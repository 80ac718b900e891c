"""The two storefronts' data: the REES46 clickstream and the UCI Online Retail invoices.

Real data is not cleaned here (see ``sources``): defects reach the engine's validator, which
dead-letters them with a reason.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from engine.errors import ReplayError
from engine.replay.reading import (
    CURRENCY,
    Record,
    memoised,
    read_csv,
    require_file,
    row_error,
    take,
    utc_ms,
)

# --- REES46 clickstream -------------------------------------------------------------------

_REES46_COLUMNS = ("event_time", "event_type", "product_id", "category_id", "category_code",
                   "brand", "price", "user_id", "user_session")


def derive_region(user_id: str, regions: Sequence[str]) -> str:
    """A stable region for a shopper: REES46 has no geography, so hash the user id (CRC-32).

    CRC-32 rather than ``hash()`` because it does not change between processes or Pythons.
    """
    return regions[zlib.crc32(user_id.encode()) % len(regions)]


def rees46(path: Path | str, regions: Sequence[str], limit: int | None = None
           ) -> Iterator[Record]:
    """REES46 views -> ``clicks``, carts -> ``carts`` (add, quantity 1), purchases -> ``orders``.

    Derived, not in the data: ``region`` (``derive_region``), currency USD (assumed), one order
    per purchase row with ``order_id = rees46-{session}-{product}-{event_time_ms}``.
    ``event_id = rees46:{data row number}``. Rows with a non-positive price are emitted as they
    are, so the validator dead-letters them (real data defect, not cleaned here).
    """
    path = require_file(path)
    if not regions:
        raise ReplayError("rees46 needs at least one region (config replay.rees46_regions)")
    return take(_rees46_sorted(path, tuple(regions)), limit)


def _rees46_sorted(path: Path, regions: tuple[str, ...]) -> Iterator[Record]:
    parse = memoised(utc_ms)
    rows = []
    for number, values in read_csv(path, _REES46_COLUMNS):
        try:
            rows.append((parse(values[0]), number, values))
        except ValueError as exc:
            raise row_error(path, number, exc) from None
    rows.sort(key=itemgetter(0))
    for time_ms, number, values in rows:
        try:
            yield _rees46_record(time_ms, number, values, regions)
        except ValueError as exc:
            raise row_error(path, number, exc) from None


def _rees46_record(time_ms: int, number: int, values: tuple[str, ...],
                   regions: tuple[str, ...]) -> Record:
    _, kind, product, category_id, category_code, brand, price, user, session = values
    base: dict[str, Any] = {"event_id": f"rees46:{number}", "event_time_ms": time_ms}
    category = category_code or category_id
    region = derive_region(user, regions)
    if kind == "purchase":
        line = {"item_id": product, "quantity": 1, "unit_price": float(price),
                "category": category}
        event = base | {"event_type": "purchase",
                        "order_id": f"rees46-{session}-{product}-{time_ms}", "user_id": user,
                        "region": region, "currency": CURRENCY["rees46"], "lines": [line]}
        return Record("orders", user, event, time_ms)
    if kind == "view":
        topic, head = "clicks", {"event_type": "view"}
    elif kind == "cart":
        topic, head = "carts", {"event_type": "add"}
    else:
        raise ValueError(f"unknown event_type {kind!r}")
    event = base | head | {"user_id": user, "session_id": session, "item_id": product}
    if topic == "carts":
        event["quantity"] = 1
    event |= {"category": category, "price": float(price), "currency": CURRENCY["rees46"],
              "region": region}
    if brand:
        event["brand"] = brand
    return Record(topic, user, event, time_ms)


# --- UCI Online Retail invoices ------------------------------------------------------------

_RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice",
                   "CustomerID", "Country")


def region_slug(country: str) -> str:
    """``United Kingdom`` -> ``united-kingdom``: the region codes config [regions] lists."""
    return "-".join(country.lower().split())


def customer_id(text: str) -> str | None:
    """``17850.0`` -> ``17850`` (the file stores the id as a float); empty -> None (guest)."""
    text = text.strip()
    return text.removesuffix(".0") or None


def online_retail(path: Path | str, limit: int | None = None) -> Iterator[Record]:
    """One ``orders`` event per invoice (consecutive rows of one InvoiceNo), ``limit`` events.

    ``C`` invoices (cancellations) become ``return``s with positive quantities. A negative
    quantity in any other invoice, and a zero unit price, stay as they are so the validator
    dead-letters the order with a reason (real data defect). The event time is the invoice's
    earliest row time, taken as UTC (the data set gives no zone). Region is the slugged country.
    """
    path = require_file(path)
    return take(_retail_sorted(path), limit)


def _retail_sorted(path: Path) -> Iterator[Record]:
    parse = memoised(utc_ms)
    events = []
    for invoice, rows in groupby(read_csv(path, _RETAIL_COLUMNS), key=lambda r: r[1][0]):
        group = list(rows)
        try:
            events.append(_retail_record(invoice, group, parse))
        except ValueError as exc:
            raise row_error(path, group[0][0], exc) from None
    events.sort(key=attrgetter("event_time_ms"))
    yield from events


def _retail_record(invoice: str, rows: list[tuple[int, tuple[str, ...]]],
                   parse: Callable[[str], int]) -> Record:
    is_return = invoice.startswith("C")
    lines = []
    for _, (_, stock_code, quantity, _, unit_price, _, _) in rows:
        count = int(quantity)
        lines.append({"item_id": stock_code, "quantity": abs(count) if is_return else count,
                      "unit_price": float(unit_price)})
    first = rows[0][1]
    time_ms = min(parse(values[3]) for _, values in rows)
    user = customer_id(first[5])
    event: dict[str, Any] = {"event_id": f"online_retail:{invoice}", "event_time_ms": time_ms,
                             "event_type": "return" if is_return else "purchase",
                             "order_id": invoice}
    if user is not None:
        event["user_id"] = user
    event |= {"region": region_slug(first[6]), "currency": CURRENCY["online_retail"],
              "lines": lines}
    return Record("orders", user or invoice, event, time_ms)

