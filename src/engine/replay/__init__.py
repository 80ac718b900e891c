"""Replay the real public data sets as contract-valid events, in event-time order.

``sources`` maps each data set to events (pure: files in, records out), ``catalog`` derives the
catalogue none of them ships, ``publish`` paces records onto Kafka. A typical replay::

    names = source_names("rees46,online_retail")
    streams = [open_source(n, datasets_dir, regions=regions) for n in names]
    stats = publish(merged(derive_catalog(datasets_dir, names), *streams),
                    bootstrap="localhost:9092", kafka_options={})
"""

from engine.replay.catalog import DERIVED_FIELDS, derive_catalog
from engine.replay.publish import ReplayStats, publish
from engine.replay.sources import (
    SOURCES,
    Record,
    competitor_prices,
    derive_region,
    hammer,
    merged,
    online_retail,
    open_source,
    rees46,
    source_names,
)

__all__ = [
    "DERIVED_FIELDS",
    "SOURCES",
    "Record",
    "ReplayStats",
    "competitor_prices",
    "derive_catalog",
    "derive_region",
    "hammer",
    "merged",
    "online_retail",
    "open_source",
    "publish",
    "rees46",
    "source_names",
]
