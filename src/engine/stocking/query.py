"""Reads of the stocking state for the API and the CLI: open signals, an item's demand forecast,
a customer's return forecast, and the periodic fit of the returning-customer model.

An item's stocking row lives in one shard of ``price-signals`` (Kafka's default partitioner on
the item id); a customer's purchase statistics in one shard of ``orders`` (on the user id, the
orders topic's key). Forecasts and return forecasts are made at a region's event-time clock
(its latest event applied), never the wall clock, so they agree with a replay.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Sequence
from typing import Any

import orjson

from engine.config import Settings
from engine.contracts import Catalogue
from engine.core.compose import PRICE_SIGNALS
from engine.core.forecast import ALL, Forecaster
from engine.core.returns import BGNBD, Customer, fit
from engine.core.stocking import (
    centre_demand,
    lead_time,
    load_item,
    load_parents,
    parent_names,
)
from engine.stocking.stage import forecast_params, open_field, stocking_policy
from engine.store import StateStore

ORDERS = "orders"
#: Where ``engine stocking fit-returns`` keeps the fitted population and its regional totals.
RETURNS_MODEL_KEY = "returns:model"
#: Horizons (days) of the regional expected-purchase totals the fit stores.
REGION_HORIZONS = (7, 30)


class StockingReader:
    def __init__(self, store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
        self.store = store
        self.catalogue = catalogue
        self.settings = settings
        self.policy = stocking_policy(settings)
        self.params = forecast_params(settings.stocking)

    def _item_shard(self, item_id: str) -> str:
        return self.store.shard(PRICE_SIGNALS, self.catalogue.partition_of(PRICE_SIGNALS,
                                                                           item_id))

    # --- open signals --------------------------------------------------------------------

    async def open_signals(self, dc: str | None, item: str | None, limit: int
                           ) -> list[dict[str, Any]]:
        """Open signals, most confident first (then newest), filtered by centre and item."""
        if item is not None:   # the item's open centres are in its row
            shard = self._item_shard(item)
            raw = await self.store.client.hget(shard + "st", item)
            centres = sorted(orjson.loads(raw)["open"]) if raw else []
            centres = [c for c in centres if dc is None or c == dc]
            bodies = await self.store.client.hmget(shard + "sto", [open_field(item, c)
                                                                   for c in centres]) \
                if centres else []
            found = [orjson.loads(b) for b in bodies if b]
        else:
            # every shard's open signals: bounded by the catalogue x centres, and a signal is
            # deleted when cleared; a planner's list reads them all to rank them
            rows = await self.store.shard_hashes(PRICE_SIGNALS,
                                                 self.catalogue.topics[PRICE_SIGNALS].partitions,
                                                 "sto")
            found = [orjson.loads(body) for row in rows for name, body in row.items()
                     if dc is None or name.rpartition("\n")[2] == dc]
        return heapq.nsmallest(limit, found, key=lambda s: (
            -s.get("confidence", 0.0), -s["event_time_ms"], s["item_id"], s["dc"]))

    # --- an item's forecast --------------------------------------------------------------

    async def forecast(self, item: str, region: str | None, horizon_days: float | None
                       ) -> dict[str, Any] | None:
        """The item's demand forecast per region (or in one region), its centres' demand over
        their lead times against their stock; None when the engine has no row for the item."""
        shard = self._item_shard(item)
        pipe = self.store.client.pipeline(transaction=False)
        pipe.hget(shard + "st", item)
        pipe.hget(shard + "ststats", "event_time_max")
        raw, clock = await pipe.execute()
        if raw is None:
            return None
        fc = Forecaster(self.params)
        st, regions = load_item(fc, item, orjson.loads(raw))
        asked = [region] if region is not None else sorted(regions)
        # the parents of the regions asked for and of those the item's centres serve
        pairs = [(st.category, r) for r in sorted(set(asked) | regions)]
        if pairs:
            load_parents(fc, pairs, await self.store.client.hmget(shard + "stp",
                                                                  parent_names(pairs)))
        shard_clock = int(float(clock)) if clock is not None else 0

        def now(regions: Sequence[str]) -> int:
            """Event-time "now" of regions: their latest event in this shard (the shard's
            clock for a region it has no series of). Regions need not share one clock: the
            demo replays data sets years apart."""
            times = [sums.t for r in regions
                     if (sums := fc.series.get(("region", ALL, r))) is not None
                     and sums.t is not None]
            return max(times) if times else shard_clock

        per_region = []
        for r in asked:
            centre = self.policy.centre(r)
            h = horizon_days if horizon_days is not None else centre.lead_time_days
            t = now([r])
            f = fc.forecast(item, st.category, r, t, h)
            per_region.append({
                "region": r, "as_of_ms": t, "dc": centre.dc, "horizon_days": h,
                "mean": _r(f.mean),
                "median": _r(f.median), "lower": _r(f.low), "upper": _r(f.high),
                "p_no_order": _r(f.p_none), "from_interest": _r(f.lead_units),
                "daily_rate": {"item": _r(f.rates[0]), "category_share": _r(f.rates[1]),
                               "region": _r(f.rates[2])},
                "exposure_days": _r(f.exposure_days), "known": r in regions})
        centres = []
        for dc in sorted({self.policy.centre(r).dc for r in regions} | set(st.inventory)):
            lead = lead_time(self.policy, dc, regions)
            served = [r for r in regions if self.policy.centre(r).dc == dc]
            d = centre_demand(fc, item, st.category, regions, dc, self.policy,
                              now(served), lead)
            held = st.inventory.get(dc)
            centres.append({
                "dc": dc, "lead_time_days": lead, "regions": list(d.regions),
                "demand": {"mean": _r(d.mean), "lower": _r(d.lower), "upper": _r(d.upper)},
                "service_level": self.policy.service_level,
                "on_hand": held[0] if held else None, "in_transit": held[1] if held else None,
                "stock_event_time_ms": held[2] if held else None,
                "open_signal": st.open.get(dc, {}).get("signal_id")})
        return {"item_id": item, "category": st.category or None,
                "interval": self.params.interval, "regions": per_region, "centres": centres,
                "model_version": self.settings.stocking.model_version}

    # --- returning customers -------------------------------------------------------------

    def _customer_shards(self, user: str) -> list[str]:
        partitions = self.catalogue.topics[ORDERS].partitions
        if self.settings.recommend.user_shards == "keyed":
            return [self.store.shard(ORDERS, self.catalogue.partition_of(ORDERS, user))]
        return [self.store.shard(ORDERS, p) for p in range(partitions)]

    async def model(self) -> tuple[BGNBD, dict[str, Any]]:
        """The population parameters: the last fit on this engine's customers, else config."""
        raw = await self.store.client.get(self.store.key(RETURNS_MODEL_KEY))
        if raw:
            stored = orjson.loads(raw)
            return BGNBD(*stored["params"]), stored
        return BGNBD(*self.settings.stocking.return_params), {"source": "config"}

    async def return_forecast(self, user: str, horizon_days: float) -> dict[str, Any] | None:
        shards = self._customer_shards(user)
        pipe = self.store.client.pipeline(transaction=False)
        for shard in shards:
            pipe.hgetall(shard + f"cust:{user}")
        found = [(shard, row) for shard, row in zip(shards, await pipe.execute(), strict=True)
                 if row]
        if not found:
            return None
        shard, row = found[0]
        customer = Customer(int(row["first"]), int(row["last"]), int(row["x"]))
        model, meta = await self.model()
        # "now" in event time: the latest purchase in the customer's region (regions need not
        # share one clock: the demo replays data sets years apart), never before their own
        clock = await self.store.client.hget(shard + "rclock", row.get("region", ""))
        now = max(int(float(clock)) if clock else 0, customer.last_ms)
        x, t_x, big_t = customer.weeks(now)
        h = horizon_days / 7.0
        wait = model.expected_wait(x, big_t)
        p_alive = model.p_alive(x, t_x, big_t)
        return {
            "user_id": user, "region": row.get("region"), "as_of_ms": now,
            "first_purchase_ms": customer.first_ms, "last_purchase_ms": customer.last_ms,
            "repeat_transactions": x, "p_alive": _r(p_alive),
            "horizon_days": horizon_days,
            "p_buy_within_horizon": _r(model.p_buy_within(h, x, t_x, big_t)),
            "expected_purchases_in_horizon": _r(model.expected_purchases(h, x, t_x, big_t)),
            "expected_days_to_next_purchase": None if wait is None else _r(wait * 7.0),
            "model": {"name": "bg-nbd", "params": dict(zip(("r", "alpha", "a", "b"),
                                                           _params(model), strict=True)),
                      "source": meta.get("source", "fit"),
                      "fitted_at_ms": meta.get("fitted_at_ms"),
                      "customers": meta.get("customers")}}

    async def fit_returns(self, max_customers: int = 200_000) -> dict[str, Any]:
        """Fit the BG/NBD population on the customers in the orders shards (each at its region's
        event-time clock) and total their expected purchases by region; stored for the API."""
        partitions = self.catalogue.topics[ORDERS].partitions
        customers: list[tuple[str, Customer]] = []
        for p in range(partitions):
            shard = self.store.shard(ORDERS, p)
            keys = [k async for k in self.store.client.scan_iter(match=_glob(shard) + "cust:*",
                                                                 count=1000)]
            # at most an equal share per partition (a partition's customers are a hash sample)
            keys = keys[:max_customers // partitions]
            for start in range(0, len(keys), 500):
                pipe = self.store.client.pipeline(transaction=False)
                for k in keys[start:start + 500]:
                    pipe.hgetall(k)
                for row in await pipe.execute():
                    if row:
                        customers.append((row.get("region", ""),
                                          Customer(int(row["first"]), int(row["last"]),
                                                   int(row["x"]))))
        if not customers:
            return {"customers": 0}
        # each region's clock is its latest purchase: regions fed by different sources (or time
        # zones of the business) need not share one event-time "now"
        clocks: dict[str, int] = {}
        for region, c in customers:
            clocks[region] = max(clocks.get(region, 0), c.last_ms)
        stats = [c.weeks(clocks[region]) for region, c in customers]
        # seconds of CPU for a large population: off the event loop
        model = await asyncio.to_thread(fit, stats,
                                        start=BGNBD(*self.settings.stocking.return_params))
        by_region: dict[str, dict[str, float]] = {}
        for (region, _), (x, t_x, big_t) in zip(customers, stats, strict=True):
            totals = by_region.setdefault(region, {"customers": 0, "as_of_ms": clocks[region]})
            totals["customers"] += 1
            for h in REGION_HORIZONS:
                name = f"expected_purchases_{h}d"
                totals[name] = totals.get(name, 0.0) + model.expected_purchases(
                    h / 7.0, x, t_x, big_t)
        result = {"params": list(_params(model)), "source": "fit", "customers": len(customers),
                  "fitted_at_ms": int(time.time() * 1000),
                  "regions": {r: {k: v if k in ("customers", "as_of_ms") else _r(v)
                                  for k, v in totals.items()}
                              for r, totals in sorted(by_region.items())}}
        await self.store.client.set(self.store.key(RETURNS_MODEL_KEY), orjson.dumps(result))
        return result


def _params(model: BGNBD) -> Sequence[float]:
    """Six significant digits (a shape parameter can be small; it must never round to 0)."""
    return tuple(float(f"{v:.6g}") for v in (model.r, model.alpha, model.a, model.b))


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _r(x: float) -> float:
    return round(x, 4) if math.isfinite(x) else 0.0


def describe_signal(s: dict[str, Any]) -> str:
    """One readable line per signal (``engine stocking signals``, the demo)."""
    f = s["forecast"]
    source = f"from {s['source_dc']}" if s.get("source_dc") else "from the supplier"
    return (f"{s['status']:<7} {s['dc']:<10} {s['item_id']:<14} "
            f"move {s['suggested_transfer_qty']:>6,} {source:<18} "
            f"need {f['upper']:>8,.1f} over {s['horizon_days']:g} d "
            f"(mean {f['mean']:,.1f}) vs {s['on_hand'] + s.get('in_transit', 0):,} available, "
            f"confidence {s.get('confidence', 0):.2f}")


def describe_fit(result: dict[str, Any]) -> str:
    if not result.get("customers"):
        return "no customers with a purchase yet: nothing to fit"
    r, alpha, a, b = result["params"]
    lines = [f"BG/NBD fitted on {result['customers']:,} customers: r {r}, alpha {alpha} weeks, "
             f"a {a}, b {b}",
             f"{'region':<24}{'customers':>10}{'next 7 d':>12}{'next 30 d':>12}"]
    for region, totals in sorted(result["regions"].items(),
                                 key=lambda kv: (-kv[1]["customers"], kv[0])):
        lines.append(f"{region:<24}{int(totals['customers']):>10,}"
                     f"{totals['expected_purchases_7d']:>12,.1f}"
                     f"{totals['expected_purchases_30d']:>12,.1f}")
    return "\n".join(lines)
