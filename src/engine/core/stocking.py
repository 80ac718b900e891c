"""Anticipatory stocking, the live decision per item and distribution centre (pure).

Demand is forecast per item x region (``core.forecast``); each region is served by one
distribution centre with a lead time (config ``[regions]``). For a centre, the item's demand is
the sum over the regions it serves (means and variances add; the interval is the log-normal of
the sum). The decision, each time a signal about the item touches a centre (an order or a view
or cart add in one of its regions, or a stock level there):

- **short**: the upper quantile (``service_level``) of the demand over the centre's lead time is
  above what it has available (on hand + in transit). Stock ordered now arrives after the lead
  time, so this is the last moment to act before the orders do.
- the **transfer** brings it to the upper quantile over the lead time plus ``cover_days``; the
  **source** is the other centre with the largest surplus over its own need (available minus the
  same target), and the quantity is capped at that surplus. With no surplus anywhere the signal
  says so (``source_dc`` null: replenish from the supplier).
- **confidence** is the probability that demand over the lead time exceeds what is available.
- **rate limit**: a centre's signal for an item is opened, or re-published with a new source or a
  quantity that moved by more than ``update_change``, at most once per ``signal_interval`` of
  event time; a held change is made by the first
  evaluation after it. One exception: a signal that had no source is re-published as soon as a
  centre with surplus appears (stock levels and orders come on different topics, so the first
  signal can precede the news of the surplus).
- **cleared**: as soon as the centre covers the upper quantile again (stock arrived, or demand
  fell), the open signal is published once more with status ``cleared``. Clearing is not
  rate-limited (a stale alarm costs a planner's time); re-opening is, so a level hovering at the
  threshold cannot flap faster than the interval.

Nothing is decided for a centre whose stock the engine has never been told: the forecast is
there (GET /v1/items/{id}/forecast) but a transfer needs a stock level to compare with.
Signal ids are deterministic (item, centre and the event time the signal opened), so a replay
publishes the same signals.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.core.forecast import (
    ALL,
    Forecaster,
    Interest,
    Sums,
    lognormal_exceeds,
    lognormal_quantile,
)

DEFAULT_REGION = "default"


@dataclass(frozen=True)
class Centre:
    dc: str
    lead_time_days: float


@dataclass(frozen=True)
class StockingPolicy:
    #: region -> its centre; regions not listed use ``DEFAULT_REGION``'s
    centres: Mapping[str, Centre]
    service_level: float = 0.95
    cover_days: float = 7.0
    signal_interval_ms: int = 3_600_000
    #: an open signal is re-published only when its quantity moves by more than this fraction
    #: (or its source changes)
    update_change: float = 0.25
    model_version: str = "stocking-gp/1"

    def centre(self, region: str) -> Centre:
        return self.centres.get(region) or self.centres[DEFAULT_REGION]


@dataclass(frozen=True)
class Demand:
    """An item's demand at one centre over a horizon, summed over the regions it serves."""

    mean: float
    variance: float
    lower: float
    upper: float
    #: probability that no order arrives at all
    p_none: float
    regions: tuple[str, ...]


@dataclass
class ItemStock:
    """One item's stocking state (besides its forecast series): stock per centre, and the
    signals open and last published per centre."""

    category: str = ""
    #: dc -> [on_hand, in_transit, event_time_ms of the level]
    inventory: dict[str, list[int]] = field(default_factory=dict)
    #: dc -> the open signal as last published
    open: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: dc -> event time of the last signal published for it (open, update or cleared)
    published: dict[str, int] = field(default_factory=dict)

    def stock(self, dc: str, on_hand: int, in_transit: int, t: int) -> bool:
        """Record a level; an older one than the level held is ignored (False)."""
        held = self.inventory.get(dc)
        if held is not None and held[2] > t:
            return False
        self.inventory[dc] = [on_hand, in_transit, t]
        return True

    def available(self, dc: str) -> int | None:
        held = self.inventory.get(dc)
        return held[0] + held[1] if held is not None else None


def centre_demand(fc: Forecaster, item: str, category: str, regions: Iterable[str], dc: str,
                  policy: StockingPolicy, t: int, horizon_days: float) -> Demand:
    mean = variance = 0.0
    p_none = 1.0
    served = tuple(sorted(r for r in regions if policy.centre(r).dc == dc))
    for region in served:
        f = fc.forecast(item, category, region, t, horizon_days)
        mean += f.mean
        variance += f.variance
        p_none *= f.p_none
    interval = fc.params.interval
    lower = 0.0 if p_none >= (1 - interval) / 2 else lognormal_quantile(mean, variance,
                                                                          (1 - interval) / 2)
    return Demand(mean, variance, lower, need(mean, variance, p_none, policy.service_level),
                  p_none, served)


def need(mean: float, variance: float, p_none: float, service_level: float) -> float:
    """The service-level quantile of demand: 0 when no order at all is that likely."""
    if mean <= 0 or p_none >= service_level:
        return 0.0
    return lognormal_quantile(mean, variance, service_level)


def signal_id(item: str, dc: str, opened_ms: int, opened_by: str = "") -> str:
    """A signal's id: its item, centre and opening time, and the input event that opened it
    (an item's signals can open and clear at one event time, and replayed data repeats event
    times: without the event, two signals would share an id). The same input opens the same
    signal again when a batch runs again, so the id is the same then."""
    digest = hashlib.blake2b(f"{item}\x00{dc}\x00{opened_ms}\x00{opened_by}".encode(),
                             digest_size=10)
    return "stk-" + digest.hexdigest()


def assess(fc: Forecaster, item: str, st: ItemStock, regions: Iterable[str], dc: str, t: int,
           policy: StockingPolicy, cause: str = "") -> dict[str, Any] | None:
    """Decide for ``item`` at centre ``dc`` at event time ``t`` (on the input event ``cause``);
    returns the signal to publish on ``stocking-signals`` (and updates ``st``), or None."""
    available = st.available(dc)
    if available is None:
        return None
    regions = tuple(regions)
    lead = lead_time(policy, dc, regions)
    demand = centre_demand(fc, item, st.category, regions, dc, policy, t, lead)
    short = math.ceil(demand.upper - 1e-9) > available
    current = st.open.get(dc)
    if not short:
        if current is None:
            return None
        out = _signal(item, dc, t, policy, demand, lead, st, current["signal_id"], "cleared",
                      0, None, f"covered: {available} available >= {_fmt(demand.upper)} "
                      f"(upper {policy.service_level:.0%} forecast over {_fmt(lead)} days)",
                      current["seq"] + 1)
        del st.open[dc]
        st.published[dc] = t
        return out["signal"]

    target = math.ceil(centre_demand(fc, item, st.category, regions, dc, policy, t,
                                     lead + policy.cover_days).upper - 1e-9)
    wanted = max(target - available, 1)
    source, spare = _source(fc, item, st, regions, dc, t, policy)
    qty = min(wanted, spare) if source is not None else wanted
    if current is not None and current["source_dc"] == source and abs(
            qty - current["suggested_transfer_qty"]) <= policy.update_change * max(
            current["suggested_transfer_qty"], 1):
        return None                                   # nothing new enough to say
    found_source = current is not None and current["source_dc"] is None and source is not None
    if t - st.published.get(dc, -policy.signal_interval_ms) < policy.signal_interval_ms \
            and not found_source:
        return None                                   # rate-limited: the next evaluation says it
    sid = current["signal_id"] if current is not None else signal_id(item, dc, t, cause)
    reason = (f"upper {policy.service_level:.0%} forecast over the {_fmt(lead)}-day lead time "
              f"{_fmt(demand.upper)} > {available} available; target {target} covers "
              f"{_fmt(lead + policy.cover_days)} days")
    if source is None:
        reason += "; no centre has surplus: replenish from the supplier"
    elif spare < wanted:
        reason += f"; {source} can spare {spare} of the {wanted} needed"
    out = _signal(item, dc, t, policy, demand, lead, st, sid, "open", qty, source, reason,
                  current["seq"] + 1 if current is not None else 0)
    st.open[dc] = {"signal_id": sid, "seq": out["seq"], "suggested_transfer_qty": qty,
                   "source_dc": source, "opened_ms": current["opened_ms"] if current else t}
    st.published[dc] = t
    return out["signal"]


def lead_time(policy: StockingPolicy, dc: str, regions: Iterable[str]) -> float:
    """A centre's lead time for an item: the longest of the regions it serves for it, else
    the configured one of any region it serves, else the default's."""
    times = [policy.centre(r).lead_time_days for r in regions if policy.centre(r).dc == dc]
    if times:
        return max(times)
    return next((c.lead_time_days for c in policy.centres.values() if c.dc == dc),
                policy.centres[DEFAULT_REGION].lead_time_days)


def _source(fc: Forecaster, item: str, st: ItemStock, regions: tuple[str, ...], dc: str,
            t: int, policy: StockingPolicy) -> tuple[str | None, int]:
    """The other centre with the most stock beyond its own target, and how much that is."""
    best, spare = None, 0
    for other in sorted(st.inventory):
        if other == dc:
            continue
        lead = lead_time(policy, other, regions)
        own = centre_demand(fc, item, st.category, regions, other, policy, t,
                            lead + policy.cover_days)
        surplus = (st.available(other) or 0) - math.ceil(own.upper - 1e-9)
        if surplus > spare:
            best, spare = other, surplus
    return best, spare


def _signal(item: str, dc: str, t: int, policy: StockingPolicy, demand: Demand, lead: float,
            st: ItemStock, sid: str, status: str, qty: int, source: str | None, reason: str,
            seq: int) -> dict[str, Any]:
    on_hand, in_transit, _ = st.inventory[dc]
    available = on_hand + in_transit
    # the log-normal is matched to the demand's unconditional mean and variance, no-order
    # chance included
    confidence = lognormal_exceeds(demand.mean, demand.variance, available + 0.5)
    body: dict[str, Any] = {
        "event_id": f"{sid}:{seq}", "event_time_ms": t, "signal_id": sid, "status": status,
        "item_id": item, "dc": dc, "horizon_days": lead,
        "forecast": {"mean": _round(demand.mean), "lower": _round(demand.lower),
                     "upper": _round(demand.upper)},
        "on_hand": on_hand, "in_transit": in_transit, "suggested_transfer_qty": qty,
        "source_dc": source, "reason": reason[:1000],
        "confidence": round(min(max(confidence, 0.0), 1.0), 4),
        "model_version": policy.model_version}
    if len(demand.regions) == 1:
        body["region"] = demand.regions[0]
    return {"seq": seq, "signal": body}


def _round(x: float) -> float:
    return round(x, 3)


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


# --- state rows (JSON in Redis) -------------------------------------------------------------


def item_row(fc: Forecaster, item: str, st: ItemStock, regions: Iterable[str]) -> dict[str, Any]:
    """An item's row: its category, forecast series and interest per region, stock, signals."""
    series, interest = {}, {}
    for region in regions:
        sums = fc.series.get(("item", item, region))
        if sums is not None:
            series[region] = sums.dump()
        lead = fc.interest.get((item, region))
        if lead is not None:
            interest[region] = lead.dump()
    return {"cat": st.category, "s": series, "i": interest, "inv": st.inventory,
            "open": st.open, "pub": st.published}


def load_item(fc: Forecaster, item: str, row: Mapping[str, Any] | None) -> tuple[ItemStock,
                                                                                 set[str]]:
    """Put an item's series into ``fc``; returns its stocking state and regions."""
    if not row:
        return ItemStock(), set()
    for region, dumped in row["s"].items():
        fc.series[("item", item, region)] = Sums.load(dumped)
    for region, dumped in row["i"].items():
        fc.interest[(item, region)] = Interest.load(dumped)
    return ItemStock(row["cat"], row["inv"], row["open"], row["pub"]), set(row["s"])


def parent_fields(category: str, region: str) -> tuple[str, str]:
    """The fields of a (category, region) series and of a region's series (ids never hold a
    newline, so the fields cannot collide)."""
    return f"c\n{region}\n{category}", f"r\n{region}"


def parent_names(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The ``stp`` fields of (category, region) pairs: the category's, then the region's."""
    return [name for category, region in pairs for name in parent_fields(category, region)]


def load_parents(fc: Forecaster, pairs: Sequence[tuple[str, str]],
                 rows: Sequence[str | bytes | None]) -> None:
    """Put the parents of (category, region) pairs into ``fc`` from the JSON rows of their
    ``parent_names`` (None: not stored yet)."""
    for n, (category, region) in enumerate(pairs):
        cat_row, region_row = rows[2 * n], rows[2 * n + 1]
        if cat_row:
            cat = orjson.loads(cat_row)
            fc.series[("category", category, region)] = Sums.load(cat["s"])
            fc.members[(category, region)] = int(cat["n"])
        if region_row:
            reg = orjson.loads(region_row)
            fc.series[("region", ALL, region)] = Sums.load(reg["s"])
            fc.members[(ALL, region)] = int(reg["n"])
            fc.weekdays[region] = list(reg["w"])
            fc.interest[(ALL, region)] = Interest.load(reg["i"])


def parent_rows(fc: Forecaster, category: str, region: str
                ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    cat = fc.series.get(("category", category, region))
    reg = fc.series.get(("region", ALL, region))
    interest = fc.interest.get((ALL, region)) or Interest()
    return ({"s": cat.dump(), "n": fc.members.get((category, region), 0)} if cat else None,
            {"s": reg.dump(), "n": fc.members.get((ALL, region), 0),
             "w": fc.weekdays.get(region, [0.0] * 7),
             "i": interest.dump()} if reg else None)
