"""Replay wired to settings: catalogue first, then the chosen data sets in event-time order."""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import Settings
from engine.replay.catalog import derive_catalog
from engine.replay.inventory import opening_stock
from engine.replay.publish import ReplayStats, publish
from engine.replay.sources import Record, merged, open_source, source_names


def build_records(settings: Settings, sources: Sequence[str], *, limit: int | None = None,
                  catalog: bool = True, inventory: bool = False) -> list[Record]:
    """The replay's records in event-time order: the derived catalogue first, the data sets,
    and with ``inventory`` the derived opening stock (``replay.inventory``)."""
    names = source_names(list(sources))
    root = settings.replay.datasets_path
    streams = [open_source(n, root, regions=settings.replay.rees46_regions, limit=limit)
               for n in names]
    catalogue = derive_catalog(root, names) if catalog else []
    records = list(merged(catalogue, *streams))
    if inventory:
        records = list(merged(opening_stock(records, settings.regions), records))
    return records


def replay_datasets(settings: Settings, sources: Sequence[str], *, limit: int | None = None,
                    rate: float | None = None, speedup: float | None = None,
                    catalog: bool = True) -> ReplayStats:
    records = build_records(settings, sources, limit=limit, catalog=catalog)
    return publish(records, bootstrap=settings.kafka.url,
                   kafka_options=settings.kafka.kafka_python_options(), rate=rate,
                   speedup=speedup, total=len(records))
