"""The derived opening stock: one ``inventory`` event per item and distribution centre.

No data set reports stock, and the stocking stage decides nothing for a centre whose stock it
has never been told. So the replay can *derive* an opening snapshot (DERIVED, listed in the
README with the catalogue's derived fields): each centre starts with what its regions bought of
the item in the first ``OPENING_COVER_DAYS`` days of the replayed orders, a week of cover at
the opening rate, stamped just before the item's first order. Nothing replenishes it, so a
centre whose demand grows past its opening week is the one the engine should flag.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.config import Region
from engine.replay.reading import Record

OPENING_COVER_DAYS = 7
MS_PER_DAY = 86_400_000


def opening_stock(records: Iterable[Record], regions: Mapping[str, Region]) -> list[Record]:
    """Inventory events for every item x centre that sold in the orders' first week."""
    first_ms: int | None = None
    units: dict[tuple[str, str], int] = {}
    first_sale: dict[str, int] = {}
    for r in records:
        if r.topic != "orders" or r.event["event_type"] != "purchase":
            continue
        t = r.event_time_ms
        first_ms = t if first_ms is None else first_ms
        if t - first_ms >= OPENING_COVER_DAYS * MS_PER_DAY:
            continue
        dc = (regions.get(r.event["region"]) or regions["default"]).dc
        for line in r.event["lines"]:
            if line["quantity"] > 0 and line["unit_price"] > 0:
                key = (line["item_id"], dc)
                units[key] = units.get(key, 0) + int(line["quantity"])
                first_sale.setdefault(line["item_id"], t)
    out = []
    for (item, dc), on_hand in sorted(units.items()):
        t = first_sale[item] - 1
        out.append(Record("inventory", item, {
            "event_id": f"inventory:opening:{dc}:{item}", "event_time_ms": t, "item_id": item,
            "dc": dc, "on_hand": min(on_hand, 1_000_000_000), "in_transit": 0}, t))
    out.sort(key=lambda r: r.event_time_ms)
    return out
