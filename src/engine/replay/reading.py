"""Reading the data set files: the Record type, CSV rows, timestamps, limits and merging.

Shared by the per-data-set modules (``storefronts``, ``competitors``); see ``sources`` for the
registry the CLI uses.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

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


def row_error(path: Path, number: int, exc: Exception) -> ReplayError:
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


def take(records: Iterable[Record], limit: int | None) -> Iterator[Record]:
    if limit is not None and limit < 0:
        raise ReplayError(f"limit must be >= 0, got {limit}")
    return iter(records) if limit is None else islice(records, limit)



def merged(*iterables: Iterable[Record]) -> Iterator[Record]:
    """Interleave time-ordered sources by (event_time_ms, position of the source).

    ``heapq.merge`` breaks ties by argument order, so pass the catalogue first to have each
    item's catalogue record precede the events of its source.
    """
    return heapq.merge(*iterables, key=attrgetter("event_time_ms"))
