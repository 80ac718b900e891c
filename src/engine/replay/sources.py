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

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from engine.errors import ReplayError
from engine.replay.competitors import competitor_prices, hammer, hammer_item_id
from engine.replay.reading import (
    CURRENCY,
    CURRENCY_NOTES,
    Record,
    merged,
    read_csv,
    require_file,
    utc_ms,
)
from engine.replay.storefronts import (
    customer_id,
    derive_region,
    online_retail,
    rees46,
    region_slug,
)

__all__ = [
    "CURRENCY", "CURRENCY_NOTES", "SOURCES", "Record", "Source", "competitor_prices",
    "customer_id", "derive_region", "hammer", "hammer_item_id", "merged", "online_retail",
    "open_source", "read_csv", "rees46", "region_slug", "require_file", "source_names", "utc_ms",
]



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
