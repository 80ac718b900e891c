"""Replay wired to settings: catalogue first, then the chosen data sets in event-time order."""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import Settings
from engine.replay.catalog import derive_catalog
from engine.replay.publish import ReplayStats, publish
from engine.replay.sources import Record, merged, open_source, source_names


def build_records(settings: Settings, sources: Sequence[str], *, limit: int | None = None,
                  catalog: bool = True) -> list[Record]:
    names = source_names(list(sources))
    root = settings.replay.datasets_path
    streams = [open_source(n, root, regions=settings.replay.rees46_regions, limit=limit)
               for n in names]
    catalogue = derive_catalog(root, names) if catalog else []
    return list(merged(catalogue, *streams))


def replay_datasets(settings: Settings, sources: Sequence[str], *, limit: int | None = None,
                    rate: float | None = None, speedup: float | None = None,
                    catalog: bool = True) -> ReplayStats:
    records = build_records(settings, sources, limit=limit, catalog=catalog)
    return publish(records, bootstrap=settings.kafka.url,
                   kafka_options=settings.kafka.kafka_python_options(), rate=rate,
                   speedup=speedup, total=len(records))
