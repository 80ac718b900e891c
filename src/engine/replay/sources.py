"""Turn the real public data sets into contract-shaped events, in event-time order.

Each data set has one function returning an iterator of ``Record``s (topic, key, event,
event_time_ms). The functions check their file eagerly, so a missing file fails at call time
with its path named, and then read lazily. They are pure apart from reading the file: the same
file always gives the same events with the same ``event_id``s, so replaying twice produces
duplicates the engine can recognise.

Real data is *not cleaned* here. A row with a zero price or a negative quantity becomes an event
carrying exactly that value, and the engine's validator dead-letters it with a reason: hiding the
defects would make the dead-letter path look unused and overstate the data quality. Only cells
that cannot form an event at all (an empty price) are skipped, and counted in ``skipped``.

Every file is sorted in memory once (a stable sort, so rows with equal times keep file order);
the files are small, and Project Hammer (488 k rows) is held in compact arrays while sorted.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import heapq
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby, islice
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from engine.errors import ReplayError

#: Currency of each data set. REES46 and Kaggle do not state one: see ``CURRENCY_NOTES``.
CURRENCY = {"rees46": "USD", "online_retail": "GBP", "competitor_prices": "BRL", "hammer": "CAD"}
CURRENCY_NOTES = {
    "rees46": "assumed: the data set states no currency",
    "online_retail": "stated by UCI: a UK retailer invoicing in pounds sterling",
    "competitor_prices": "assumed: the Kaggle set states no currency; it appears derived from "
                         "the Brazilian Olist data (its category names are Olist's), in reais",
    "hammer": "Project Hammer records shelf prices at Canadian grocers",
}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Record:
    """One event ready to publish: ``key`` is the topic's documented key (topics.toml)."""

    topic: str
    key: str
    event: dict[str, Any]
    event_time_ms: int


# --- reading -------------------------------------------------------------------------------


def require_file(path: Path | str) -> Path:
    """Return ``path`` as a Path, or raise ReplayError naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"data file not found: {path}")
    return path


def read_csv(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Yield (1-based data row number, values of ``columns`` in that order) for every row.

    ``csv.reader`` with an ``itemgetter`` is several times faster than ``DictReader``, which
    matters for the 488 k Hammer rows. Read errors become ReplayError naming file and line.
    """
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None) or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise ReplayError(f"{path}: missing column(s) {', '.join(missing)}")
            pick = itemgetter(*(header.index(c) for c in columns))
            for number, row in enumerate(reader, start=1):
                if not row:
                    continue
                if len(row) != len(header):
                    raise ReplayError(f"{path}: data row {number} has {len(row)} cells, "
                                      f"the header {len(header)}")
                values = pick(row)
                yield number, values if isinstance(values, tuple) else (values,)
    except (OSError, EOFError, csv.Error, UnicodeDecodeError) as exc:
        raise ReplayError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None


def _row_error(path: Path, number: int, exc: Exception) -> ReplayError:
    return ReplayError(f"{path}: data row {number}: cannot parse ({exc})")


def utc_ms(text: str) -> int:
    """Milliseconds since the epoch for an ISO timestamp; a naive one is taken as UTC."""
    moment = dt.datetime.fromisoformat(text.removesuffix(" UTC"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - _EPOCH) // _MS


def memoised(parse: Callable[[str], int]) -> Callable[[str], int]:
    """Memoise a timestamp parser for one pass: the files repeat each timestamp many times."""
    cache: dict[str, int] = {}

    def lookup(text: str) -> int:
        value = cache.get(text)
        if value is None:
            value = cache[text] = parse(text)
        return value

    return lookup


def month_start_ms(day_month_year: str) -> int:
    """First day of the month of a ``dd/mm/yyyy`` date, 00:00 UTC, in ms since the epoch."""
    _, month, year = day_month_year.split("/")
    return (dt.datetime(int(year), int(month), 1, tzinfo=dt.UTC) - _EPOCH) // _MS


def _take(records: Iterable[Record], limit: int | None) -> Iterator[Record]:
    if limit is not None and limit < 0:
        raise ReplayError(f"limit must be >= 0, got {limit}")
    return iter(records) if limit is None else islice(records, limit)


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
    return _take(_rees46_sorted(path, tuple(regions)), limit)


def _rees46_sorted(path: Path, regions: tuple[str, ...]) -> Iterator[Record]:
    parse = memoised(utc_ms)
    rows = []
    for number, values in read_csv(path, _REES46_COLUMNS):
        try:
            rows.append((parse(values[0]), number, values))
        except ValueError as exc:
            raise _row_error(path, number, exc) from None
    rows.sort(key=itemgetter(0))
    for time_ms, number, values in rows:
        try:
            yield _rees46_record(time_ms, number, values, regions)
        except ValueError as exc:
            raise _row_error(path, number, exc) from None


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
    return _take(_retail_sorted(path), limit)


def _retail_sorted(path: Path) -> Iterator[Record]:
    parse = memoised(utc_ms)
    events = []
    for invoice, rows in groupby(read_csv(path, _RETAIL_COLUMNS), key=lambda r: r[1][0]):
        group = list(rows)
        try:
            events.append(_retail_record(invoice, group, parse))
        except ValueError as exc:
            raise _row_error(path, group[0][0], exc) from None
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
    return _take(_kaggle_sorted(path, skipped if skipped is not None else Counter()), limit)


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
            raise _row_error(path, number, exc) from None
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
    return _take(_hammer_sorted(path, skipped if skipped is not None else Counter()), limit)


def _hammer_sorted(path: Path, skipped: Counter[str]) -> Iterator[Record]:
    table, parse = _HammerTable(), memoised(utc_ms)
    for number, values in read_csv(path, _HAMMER_COLUMNS):
        if not values[1].strip():
            skipped["hammer.empty_price"] += 1
            continue
        try:
            table.add(number, values, parse)
        except ValueError as exc:
            raise _row_error(path, number, exc) from None
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


# --- combining sources ------------------------------------------------------------------------


def merged(*iterables: Iterable[Record]) -> Iterator[Record]:
    """Interleave time-ordered sources by (event_time_ms, position of the source).

    ``heapq.merge`` breaks ties by argument order, so pass the catalogue first to have each
    item's catalogue record precede the events of its source.
    """
    return heapq.merge(*iterables, key=attrgetter("event_time_ms"))


class Source(NamedTuple):
    """A registered data set: its file relative to the data sets folder, and how to open it."""

    path: str
    open: Callable[..., Iterator[Record]]


SOURCES: dict[str, Source] = {
    "rees46": Source(
        "rees46/events_2019-10-01_first17k.csv.gz",
        lambda path, *, regions, limit=None, skipped=None: rees46(path, regions, limit)),
    "online_retail": Source(
        "online_retail/online_retail_2010-12_2011-01.csv.gz",
        lambda path, *, regions, limit=None, skipped=None: online_retail(path, limit)),
    "competitor_prices": Source(
        "competitor_prices/retail_price_competitors.csv",
        lambda path, *, regions, limit=None, skipped=None: competitor_prices(path, limit, skipped)),
    "hammer": Source(
        "competitor_prices/project_hammer_grocery_prices.csv.gz",
        lambda path, *, regions, limit=None, skipped=None: hammer(path, limit, skipped)),
}


def source_names(spec: str | Sequence[str]) -> list[str]:
    """Parse ``rees46,online_retail`` (or a list); unknown names raise ReplayError."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SOURCES]
    if unknown or not names:
        raise ReplayError(f"unknown source(s) {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(SOURCES)}")
    return names


def open_source(name: str, datasets_dir: Path | str, *, regions: Sequence[str] = (),
                limit: int | None = None, skipped: Counter[str] | None = None
                ) -> Iterator[Record]:
    """Open the registered source ``name`` under ``datasets_dir`` (regions: REES46 only)."""
    (name,) = source_names([name])
    spec = SOURCES[name]
    return spec.open(Path(datasets_dir) / spec.path, regions=regions, limit=limit,
                     skipped=skipped)
