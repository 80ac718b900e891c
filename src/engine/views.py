"""Read-side views over Redis state, shared by the HTTP API and the demo summary.

Shards are merged here (see store.py): counters add up across the partitions of a topic.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from engine.config import Settings, item_stages_enabled
from engine.contracts import Catalogue
from engine.core.compose import PRICE_SIGNALS
from engine.latency import LatencyHistogram
from engine.store import StateStore


def expected_partitions(settings: Settings, catalogue: Catalogue) -> set[str]:
    """The partitions live workers must cover ("topic:partition"): every consumed topic's, less
    the item-keyed signals' when no item stage (pricing, stocking) is on to consume them."""
    out = catalogue.input_partitions()
    if not item_stages_enabled(settings):
        out = {tp for tp in out if tp.rpartition(":")[0] != PRICE_SIGNALS}
    return out


async def pipeline_stats(store: StateStore, catalogue: Catalogue) -> dict[str, Any]:
    """Per input topic: events applied, dead-lettered (by reason) and the applied offsets."""
    topics: dict[str, Any] = {}
    dlq_total: dict[str, int] = {}
    for spec in catalogue.inputs:
        stats = await store.merged_counts(spec.name, spec.partitions, "stats")
        dlq = await store.merged_counts(spec.name, spec.partitions, "dlq")
        marks = [await store.watermark(spec.name, p) for p in range(spec.partitions)]
        topics[spec.name] = {
            "valid": int(stats.get("valid", 0)),
            "dead_lettered": int(stats.get("dead_lettered", 0)),
            "dlq": {reason: int(n) for reason, n in sorted(dlq.items())},
            "watermarks": marks,
        }
        for reason, n in dlq.items():
            dlq_total[reason] = dlq_total.get(reason, 0) + int(n)
    return {
        "events_in": sum(t["valid"] + t["dead_lettered"] for t in topics.values()),
        "valid": sum(t["valid"] for t in topics.values()),
        "dead_lettered": sum(t["dead_lettered"] for t in topics.values()),
        "dlq": dict(sorted(dlq_total.items())),
        "topics": topics,
    }


async def event_to_state_latency(store: StateStore) -> LatencyHistogram:
    """The workers' shared histogram of record timestamp -> state written (milliseconds)."""
    fields = await store.client.hgetall(store.key("metrics:event_to_state"))
    return LatencyHistogram.from_fields(fields)


async def live_workers(store: StateStore, stale_after_s: float) -> list[dict[str, Any]]:
    now_ms = time.time() * 1000
    beats = await store.client.hgetall(store.key("workers"))
    workers = []
    for worker_id, raw in beats.items():
        beat = orjson.loads(raw)
        if now_ms - beat["heartbeat_ms"] <= stale_after_s * 1000:
            workers.append({"id": worker_id, **beat})
    return workers


async def item_activity(store: StateStore, catalogue: Catalogue, item_id: str
                        ) -> dict[str, Any]:
    """Everything the engine knows about one item, merged across shards."""
    def parts(topic: str) -> int:
        return catalogue.topics[topic].partitions

    counts: dict[str, float] = {}
    for topic in ("clicks", "carts", "orders"):
        for field, value in (await store.merged_counts(topic, parts(topic),
                                                       f"item:{item_id}")).items():
            counts[field] = counts.get(field, 0.0) + value
    meta = await store.merged_latest("catalog", parts("catalog"), f"meta:{item_id}")
    competitors = latest_by_event_time(await store.shard_hashes(
        "competitor-prices", parts("competitor-prices"), f"comp:{item_id}"))
    stock = latest_by_event_time(await store.shard_hashes(
        "inventory", parts("inventory"), f"inv:{item_id}"))
    return {
        "item_id": item_id,
        "counts": {k: (int(v) if float(v).is_integer() else round(v, 2))
                   for k, v in sorted(counts.items())},
        "catalog": meta,
        "competitor_prices": {name: {"price": float(value), "event_time_ms": ts}
                              for name, (ts, value) in sorted(competitors.items())},
        "inventory": {dc: {"on_hand": int(value.split("|")[0]),
                           "in_transit": int(value.split("|")[1]), "event_time_ms": ts}
                      for dc, (ts, value) in sorted(stock.items())},
    }


def latest_by_event_time(shards: list[dict[str, str]]) -> dict[str, tuple[int, str]]:
    """Merge ``hsetlatest`` hashes ("<event_time_ms>|<value>") across shards: latest wins."""
    out: dict[str, tuple[int, str]] = {}
    for shard in shards:
        for field, stamped in shard.items():
            ts_text, _, value = stamped.partition("|")
            ts = int(ts_text)
            if field not in out or ts >= out[field][0]:
                out[field] = (ts, value)
    return out
