"""The activity core is pure: events in, state operations out."""

from __future__ import annotations

import orjson
import pytest

from engine.contracts import load_catalogue
from engine.core.activity import INPUT_TOPICS, RECENT_ITEMS, dead_letter_ops, ops_for

CATALOGUE = load_catalogue()
KNOWN_OPS = {"hincrby", "hincrbyfloat", "hset", "hsetmax", "hsetlatest", "zincrby", "lpushcap",
             "custbuy", "hdel"}


def _valid(topic: str) -> list[dict]:
    path = CATALOGUE.root / "examples" / f"{topic}.valid.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_every_input_topic_has_a_core() -> None:
    assert set(INPUT_TOPICS) == {t.name for t in CATALOGUE.inputs}


@pytest.mark.parametrize("topic", INPUT_TOPICS)
def test_ops_are_well_formed_strings(topic: str) -> None:
    for event in _valid(topic):
        ops = ops_for(topic, event)
        assert ("hincrby", "stats", "valid", "1") in ops
        for op in ops:
            assert len(op) == 4 and op[0] in KNOWN_OPS
            assert all(isinstance(part, str) for part in op)


def test_view_counts_item_and_remembers_recent_item() -> None:
    event = _valid("clicks")[0]
    ops = ops_for("clicks", event)
    assert ("hincrby", f"item:{event['item_id']}", "view", "1") in ops
    assert ("lpushcap", f"user:{event['user_id']}:recent", f"view:{event['item_id']}",
            str(RECENT_ITEMS)) in ops


def test_search_tallies_normalised_query() -> None:
    event = {"event_id": "s", "event_type": "search", "event_time_ms": 1, "user_id": "u",
             "query": "  Blu-Ray PLAYER "}
    assert ("zincrby", "searches", "blu-ray player", "1") in ops_for("clicks", event)


def test_rating_adds_stars() -> None:
    event = _valid("clicks")[3]
    ops = ops_for("clicks", event)
    assert ("hincrby", "item:dvd-42", "rating_sum", "5") in ops
    assert ("hincrby", "item:dvd-42", "rating", "1") in ops


def test_order_lines_add_units_revenue_and_regional_demand() -> None:
    order = _valid("orders")[0]
    ops = ops_for("orders", order)
    assert ("hincrby", "item:85123A", "units_sold", "6") in ops
    assert ("hincrbyfloat", "item:85123A", "revenue", repr(6 * 2.55)) in ops
    assert ("zincrby", "demand:united-kingdom", "85123A", "6") in ops


def test_return_subtracts_demand_and_revenue() -> None:
    ret = _valid("orders")[1]
    ops = ops_for("orders", ret)
    assert ("hincrby", "item:85123A", "units_returned", "6") in ops
    assert ("zincrby", "demand:united-kingdom", "85123A", "-6") in ops
    assert ("hincrbyfloat", "item:85123A", "revenue", repr(-6 * 2.55)) in ops


def test_guest_order_touches_no_user_key() -> None:
    guest = _valid("orders")[2]
    assert not any(op[1].startswith("user:") for op in ops_for("orders", guest))


def test_latest_values_for_competitors_inventory_catalog() -> None:
    comp = _valid("competitor-prices")[0]
    assert ("hsetlatest", "comp:bed1", "comp_1", "1493596800000|89.9") in ops_for(
        "competitor-prices", comp)
    inv = _valid("inventory")[0]
    assert ("hsetlatest", "inv:dvd-42", "dc-uk", "1569888000000|120|40") in ops_for(
        "inventory", inv)
    cat = _valid("catalog")[0]
    assert ("hset", "meta:dvd-42", "category", "media.video.dvd") in ops_for("catalog", cat)


def test_dead_letter_ops_count_reason() -> None:
    assert dead_letter_ops("too_large") == [("hincrby", "dlq", "too_large", "1"),
                                            ("hincrby", "stats", "dead_lettered", "1")]


def test_integral_floats_become_redis_integers() -> None:
    """JSON Schema accepts 4.0 as an integer; Redis's HINCRBY does not."""
    rating = _valid("clicks")[3] | {"rating": 4.0, "event_time_ms": 1569888000000.0}
    ops = ops_for("clicks", rating)
    assert ("hincrby", "item:dvd-42", "rating_sum", "4") in ops
    assert ("hsetmax", "stats", "event_time_max", "1569888000000") in ops
    cart = _valid("carts")[0] | {"quantity": 2.0}
    assert ("hincrby", "item:dvd-42", "cart_add", "2") in ops_for("carts", cart)
    order = _valid("orders")[0]
    order = order | {"lines": [order["lines"][0] | {"quantity": 6.0}]}
    assert ("hincrby", "item:85123A", "units_sold", "6") in ops_for("orders", order)
    stock = _valid("inventory")[0] | {"on_hand": 5.0, "in_transit": 1.0}
    assert ("hsetlatest", "inv:dvd-42", "dc-uk", "1569888000000|5|1") in ops_for(
        "inventory", stock)
