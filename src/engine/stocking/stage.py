"""The live stocking stage: item signals -> demand forecasts, stock and stocking signals.

It is a second processor stage on the internal item-keyed topic ``price-signals`` (which the
worker fills from every input: order lines, views and cart adds carry their region, inventory
levels their centre, the catalogue the category). An item's signals all land in one partition,
so its forecast series per region, its stock per centre and its open signals live in one row of
that partition's shard (``st``), written with the shard's watermark: exactly once.

Pooling: the category and region series an item borrows from (``stp``) are kept per partition
too, so each is estimated from the quarter (with 4 partitions) of the catalogue that hashes
there; a parent's rate is divided among the items counted with it in the same partition, so the
share an item borrows is the same in expectation. This keeps every write of a batch in one shard
(one script call, no cross-slot writes on Redis Cluster).

Signals are computed in offset order from the state read at the start of the batch and
published to ``stocking-signals`` (keyed by centre) before the batch is applied: a crash
cannot lose one, and what a crashed batch published is read back on assignment
(``engine.published``) so that its run again does not publish it twice. Re-sent forwarded
signals are recognised by their source position (``stsrc``) like the pricing stage's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from engine import metrics
from engine.config import Settings, StockingSettings
from engine.core.activity import Op
from engine.core.compose import PRICE_SIGNALS
from engine.core.forecast import Forecaster, ForecastParams
from engine.core.stocking import (
    DEFAULT_REGION,
    Centre,
    ItemStock,
    StockingPolicy,
    assess,
    item_row,
    load_item,
    load_parents,
    parent_fields,
    parent_names,
    parent_rows,
)
from engine.pricing.stage import DUPLICATE, MALFORMED, YIELD_EVERY, SourceMarks
from engine.published import Published, Send, Tail
from engine.store import StateStore

log = logging.getLogger(__name__)

STOCKING_SIGNALS = "stocking-signals"
#: Signal kinds the stage reads (the others are pricing's).
KINDS = frozenset({"purchase", "view", "cart", "stock", "catalog"})


#: A signal the stage failed on (an engine bug, logged): skipped and counted.
UNPROCESSABLE = "unprocessable"
#: Units one signal may carry (the input schemas' own limit).
MAX_QUANTITY = 1_000_000_000


def forecast_params(s: StockingSettings) -> ForecastParams:
    return ForecastParams(half_life_days=s.half_life_days, pool_days=s.pool_days,
                          interval=s.interval, lead_half_life_hours=s.lead_half_life_hours)


def stocking_policy(settings: Settings) -> StockingPolicy:
    s = settings.stocking
    return StockingPolicy(
        centres={name: Centre(r.dc, r.lead_time_days) for name, r in settings.regions.items()},
        service_level=s.service_level, cover_days=s.cover_days,
        signal_interval_ms=round(s.signal_interval_minutes * 60_000),
        update_change=s.update_change, model_version=s.model_version)


def published_signals(partitions: int, tail: Tail | None) -> Published:
    """The stage's publications on ``stocking-signals`` (``partitions`` of them). They are
    keyed by centre, so a shard's signals can go to any partition: all are read back."""
    return Published(STOCKING_SIGNALS, partitions, "stpub", "event_id", tail)


def open_field(item: str, dc: str) -> str:
    """The field of an open signal in ``sto`` (item ids never hold a newline)."""
    return f"{item}\n{dc}"


class StockingStage:
    """The processor stage of ``price-signals`` for stocking (see the module docstring)."""

    def __init__(self, settings: Settings, send: Send, published: Published | None = None
                 ) -> None:
        self.params = forecast_params(settings.stocking)
        self.policy = stocking_policy(settings)
        self.send = send
        #: without a tail reader, a batch that runs again publishes its signals again
        self.published = published or published_signals(0, None)

    def _step(self, fc: Forecaster, st: ItemStock, regions: set[str], signal: dict[str, Any],
              last_pair: dict[tuple[str, str], int], offset: int
              ) -> list[tuple[str, dict[str, Any]]]:
        """One signal: update the item's series, stock or category, then decide for the centres
        it touches; returns the (centre, signal) to publish."""
        item, kind, t = signal["item_id"], signal["kind"], int(signal["event_time_ms"])
        dc = None
        if kind == "catalog":
            category = signal.get("category") or st.category
            if category != st.category:
                fc.recategorise(item, st.category, category, regions)
                for region in regions:
                    last_pair[(st.category, region)] = offset
                    last_pair[(category, region)] = offset
                st.category = category
        elif kind == "stock":
            if not st.stock(signal["dc"], signal["on_hand"], int(signal.get("in_transit", 0)), t):
                return []                      # older than the level held: nothing changes
            dc = signal["dc"]
        elif signal.get("region"):
            region = signal["region"]
            quantity = int(signal.get("quantity", 1))
            if kind == "purchase":
                fc.observe(item, st.category, region, t, quantity)
            else:
                fc.interested(item, st.category, region, t,
                              views=quantity if kind == "view" else 0,
                              carts=quantity if kind == "cart" else 0)
            if ("item", item, region) in fc.series:   # not with indicators off and no order
                regions.add(region)
                last_pair[(st.category, region)] = offset
            dc = self.policy.centre(region).dc
        if dc is None:
            return []
        # a stock level also changes which centre can be the source of the others' signals
        centres = [dc, *sorted(set(st.open) - {dc})] if kind == "stock" else [dc]
        out = []
        for centre in centres:
            decided = assess(fc, item, st, regions, centre, t, self.policy,
                             str(signal.get("event_id", "")))
            if decided is not None:
                out.append((centre, decided))
        return out

    async def ops(self, store: StateStore, topic: str, partition: int,
                  events: Sequence[tuple[int, dict[str, Any]]]) -> dict[int, list[Op]]:
        if topic != PRICE_SIGNALS or not events:
            return {}
        shard = store.shard(topic, partition)
        signals = [(offset, sig) for offset, record in events for sig in record["signals"]
                   if sig.get("kind") in KINDS]
        if not signals:
            return {}
        items = sorted({sig["item_id"] for _, sig in signals})
        pipe = store.client.pipeline(transaction=False)
        pipe.hmget(shard + "st", items)
        marks = SourceMarks.read(pipe, shard + "stsrc", signals)
        replies = await pipe.execute()
        marks.load(replies[1:])
        fc = Forecaster(self.params)
        stocks: dict[str, ItemStock] = {}
        regions: dict[str, set[str]] = {}
        for item, row in zip(items, replies[0], strict=True):
            stocks[item], regions[item] = load_item(fc, item, orjson.loads(row) if row else None)
        # the parents this batch can touch: each item's categories x its regions
        cats = {item: {st.category} for item, st in stocks.items()}
        regs = {item: set(r) for item, r in regions.items()}
        for _, sig in signals:
            if sig["kind"] == "catalog" and sig.get("category"):
                cats[sig["item_id"]].add(sig["category"])
            if sig.get("region"):
                regs[sig["item_id"]].add(sig["region"])
        pairs = sorted({(c, r) for item in items for c in cats[item] for r in regs[item]})
        if pairs:
            load_parents(fc, pairs, await store.client.hmget(shard + "stp",
                                                             parent_names(pairs)))

        out: dict[int, list[Op]] = {}
        last_item: dict[str, int] = {}
        last_pair: dict[tuple[str, str], int] = {}
        published: list[tuple[bytes | None, bytes, int | None]] = []
        ids: list[str] = []
        t_max = -1
        for n, (offset, signal) in enumerate(signals):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)   # the pricing stage writes other keys meanwhile
            ops = out.setdefault(offset, [])
            seen = marks.count(signal, offset)
            if seen == DUPLICATE:
                continue
            if seen == MALFORMED or not _well_formed(signal):
                ops.append(("hincrby", "ststats", MALFORMED, "1"))
                continue
            item, t = signal["item_id"], int(signal["event_time_ms"])
            t_max = max(t_max, t)
            last_item[item] = offset
            try:
                decided = self._step(fc, stocks[item], regions[item], signal, last_pair, offset)
            except Exception:   # an engine bug must cost one signal, not the partition
                log.exception("stocking: signal %s of item %s skipped", signal.get("event_id"),
                              item)
                ops.append(("hincrby", "ststats", UNPROCESSABLE, "1"))
                continue
            for centre, signal_out in decided:
                status, body = signal_out["status"], orjson.dumps(signal_out)
                published.append((centre.encode(), body, None))
                ids.append(signal_out["event_id"])
                field = open_field(item, centre)
                if status == "open":
                    ops.append(("hset", "sto", field, body.decode()))
                else:
                    ops.append(("hdel", "sto", field, ""))
                ops.append(("hincrby", "ststats", status, "1"))
                metrics.STOCKING_SIGNALS.labels(status).inc()
        # rows are written once per batch, with the last record that touched them (the batch is
        # applied atomically, so this is the same as writing after every record)
        for item, offset in last_item.items():
            out[offset].append(("hset", "st", item, _dumps(
                item_row(fc, item, stocks[item], regions[item]))))
        for (category, region), offset in last_pair.items():
            cat_row, region_row = parent_rows(fc, category, region)
            cat_field, region_field = parent_fields(category, region)
            if cat_row is not None:
                out[offset].append(("hset", "stp", cat_field, _dumps(cat_row)))
            if region_row is not None:
                out[offset].append(("hset", "stp", region_field, _dumps(region_row)))
        marks.write(out, "stsrc")
        if t_max >= 0:
            out[signals[-1][0]].append(("hsetmax", "ststats", "event_time_max", str(t_max)))
        # on the broker before the state moves on: a crash cannot lose them
        sent = await self.published.publish(self.send, published, ids)
        out[signals[-1][0]] += self.published.marks(sent > 0)
        return out


def _well_formed(signal: dict[str, Any]) -> bool:
    """What a step needs beyond the schema's common fields (it leaves per-kind fields to the
    stages): a stock level names its centre and count, a demand signal has a sane quantity."""
    kind = signal["kind"]
    if kind == "stock":
        return isinstance(signal.get("dc"), str) and isinstance(signal.get("on_hand"), int)
    quantity = signal.get("quantity", 1)
    return isinstance(quantity, int) and 0 <= quantity <= MAX_QUANTITY


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


__all__ = ["DEFAULT_REGION", "STOCKING_SIGNALS", "StockingStage", "forecast_params",
           "open_field", "published_signals", "stocking_policy"]
