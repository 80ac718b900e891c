"""Activity state: what every input event adds to the shared picture of items, users and stock.

Pure: a validated event in, a list of state operations out (no I/O). The operations are applied by
``state/apply_batch.lua`` inside one shard (one input partition), together with the partition's
watermark, so each event counts exactly once however often Kafka delivers it. The three
decisions (recommendations, stocking, prices) read this state and add their own operations.

Every key is relative to the shard prefix ``<ns>:{<topic>:<partition>}:``; state/KEYS.md maps
them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: (op code, key relative to the shard, field or member, value) — see state/apply_batch.lua.
Op = tuple[str, str, str, str]
Event = dict[str, Any]

#: How many recent item interactions are kept per user (bounded memory per user).
RECENT_ITEMS = 50
#: Search queries are tallied lower-cased and cut to this length.
QUERY_CHARS = 100


def _num(x: float | int) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


def _int(x: float | int) -> str:
    """JSON Schema's "integer" admits 4.0; Redis's integer commands do not."""
    return str(int(x))


def _stamped(event: Event, value: str) -> str:
    """A value tagged with its event time, for ``hsetlatest`` (latest by event time wins)."""
    return f"{event['event_time_ms']}|{value}"


def common_ops(event: Event) -> list[Op]:
    """What every valid event counts in its shard, whatever its topic (internal ones too)."""
    return _common(event)


def _common(event: Event) -> list[Op]:
    return [
        ("hincrby", "stats", "valid", "1"),
        ("hsetmax", "stats", "event_time_max", _int(event["event_time_ms"])),
    ]


def _user(event: Event, item: str | None) -> list[Op]:
    user = event.get("user_id")
    if user is None:
        return []
    ops: list[Op] = [("hsetmax", f"user:{user}", "last_event_ms", _int(event["event_time_ms"]))]
    if item is not None:
        ops.append(("lpushcap", f"user:{user}:recent", f"{event['event_type']}:{item}",
                    str(RECENT_ITEMS)))
    return ops


def _clicks(event: Event) -> list[Op]:
    kind = event["event_type"]
    if kind == "search":
        query = event["query"].strip().lower()[:QUERY_CHARS]
        return [("zincrby", "searches", query, "1"), *_user(event, None)]
    item = event["item_id"]
    ops: list[Op] = [("hincrby", f"item:{item}", kind, "1")]
    if kind == "rating":
        ops.append(("hincrby", f"item:{item}", "rating_sum", _int(event["rating"])))
    return ops + _user(event, item)


def _carts(event: Event) -> list[Op]:
    kind = event["event_type"]
    if kind == "checkout":
        return [("hincrby", "stats", "checkouts", "1"), *_user(event, None)]
    item, qty = event["item_id"], event["quantity"]
    return [("hincrby", f"item:{item}", f"cart_{kind}", _int(qty)), *_user(event, item)]


def _orders(event: Event) -> list[Op]:
    returned = event["event_type"] == "return"
    sign = -1 if returned else 1
    region = event["region"]
    ops: list[Op] = []
    for line in event["lines"]:
        item, qty = line["item_id"], int(line["quantity"])
        revenue = qty * line["unit_price"]
        ops += [
            ("hincrby", f"item:{item}", "units_returned" if returned else "units_sold", str(qty)),
            ("hincrbyfloat", f"item:{item}", "revenue", _num(float(sign * revenue))),
            ("zincrby", f"demand:{region}", item, str(sign * qty)),
        ]
        if event.get("user_id") is not None and not returned:
            ops.append(("lpushcap", f"user:{event['user_id']}:recent", f"purchase:{item}",
                        str(RECENT_ITEMS)))
    ops.append(("hincrby", "stats", "returns" if returned else "orders", "1"))
    if event.get("user_id") is not None:
        ops.append(("hsetmax", f"user:{event['user_id']}", "last_event_ms",
                    _int(event["event_time_ms"])))
        if not returned:   # the customer's purchase record (returning customers, BG/NBD)
            ops += [("custbuy", f"cust:{event['user_id']}", "", _int(event["event_time_ms"])),
                    ("hset", f"cust:{event['user_id']}", "region", region),
                    ("hsetmax", "rclock", region, _int(event["event_time_ms"]))]
    return ops


def _competitor_prices(event: Event) -> list[Op]:
    value = _stamped(event, _num(event["price"]))
    return [("hsetlatest", f"comp:{event['item_id']}", event["competitor"], value)]


def _inventory(event: Event) -> list[Op]:
    levels = _stamped(event, f"{_int(event['on_hand'])}|{_int(event.get('in_transit', 0))}")
    # by item (all centres), and by centre (a recommendation reads a list of items at once)
    return [("hsetlatest", f"inv:{event['item_id']}", event["dc"], levels),
            ("hsetlatest", f"stock:{event['dc']}", event["item_id"], levels)]


_META_FIELDS = ("title", "category", "brand", "unit_cost", "list_price", "currency",
                "min_margin", "price_floor", "price_ceiling", "map_price")


def _catalog(event: Event) -> list[Op]:
    key = f"meta:{event['item_id']}"
    return [("hset", key, f, _num(event[f]) if not isinstance(event[f], str) else event[f])
            for f in _META_FIELDS if f in event]


_BY_TOPIC: dict[str, Callable[[Event], list[Op]]] = {
    "clicks": _clicks,
    "carts": _carts,
    "orders": _orders,
    "competitor-prices": _competitor_prices,
    "inventory": _inventory,
    "catalog": _catalog,
}

INPUT_TOPICS = tuple(_BY_TOPIC)


def ops_for(topic: str, event: Event) -> list[Op]:
    """The state operations one valid event of ``topic`` implies."""
    return _common(event) + _BY_TOPIC[topic](event)


def dead_letter_ops(reason: str) -> list[Op]:
    """A dead-lettered record still advances the watermark and is counted, exactly once."""
    return [("hincrby", "dlq", reason, "1"), ("hincrby", "stats", "dead_lettered", "1")]
