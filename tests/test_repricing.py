"""The live repricing step as pure functions (engine.core.repricing): what each signal does to an
item's state, when a price changes and why, overrides and their expiry, competitor screening,
and that a replay makes the same decisions with the same ids."""

from __future__ import annotations

import orjson
import pytest

from engine.config import load_settings
from engine.core.pricing import ConversionModel
from engine.core.repricing import ItemPricing, Outcome, Repricer, Signal, signals_for
from engine.pricing.stage import forwarded_records, pricing_config

MIN = 60_000
T0 = 1_700_000_000_000
SETTINGS = load_settings()
MATCH = SETTINGS.pricing.rules("any")
MATCH = type(MATCH)(**{**MATCH.__dict__, "competitor_rule": "match"})


def catalog(t: int = T0, list_price: float = 20.0, unit_cost: float = 12.0) -> Signal:
    return {"kind": "catalog", "event_time_ms": t, "item_id": "i", "category": "toys",
            "list_price": list_price, "unit_cost": unit_cost, "min_margin": 0.05,
            "currency": "USD"}


def competitor(t: int, price: float, name: str = "acme", currency: str = "USD") -> Signal:
    return {"kind": "competitor", "event_time_ms": t, "item_id": "i", "competitor": name,
            "price": price, "currency": currency}


class Item:
    """One item's state and its category's model, stepped through signals."""

    def __init__(self, rules: object = MATCH) -> None:
        self.repricer = Repricer(pricing_config(SETTINGS.pricing))
        self.state = ItemPricing()
        self.model = ConversionModel(self.repricer.c.params)
        self.rules = rules

    def step(self, signal: Signal) -> Outcome:
        return self.repricer.step("i", self.state, self.model, signal, self.rules)  # type: ignore[arg-type]


def test_events_become_item_keyed_signals() -> None:
    order = {"event_id": "o1", "event_time_ms": T0, "event_type": "purchase", "order_id": "o1",
             "region": "north", "lines": [{"item_id": "a", "quantity": 2, "unit_price": 3.5},
                                          {"item_id": "b", "quantity": 1, "unit_price": 9.0}]}
    assert [(s["item_id"], s["kind"], s["quantity"]) for s in signals_for("orders", order)] == [
        ("a", "purchase", 2), ("b", "purchase", 1)]
    view = {"event_id": "v", "event_time_ms": T0, "event_type": "view", "user_id": "u",
            "item_id": "a", "price": 3.5}
    assert signals_for("clicks", view) == [{"item_id": "a", "kind": "view", "quantity": 1,
                                            "price": 3.5, "event_time_ms": T0}]
    search = {"event_id": "s", "event_time_ms": T0, "event_type": "search", "user_id": "u",
              "query": "dvd"}
    assert signals_for("clicks", search) == []


def test_signals_are_grouped_by_the_items_partition_with_their_source() -> None:
    from engine.contracts import load_catalogue

    cat = load_catalogue()
    order = {"event_id": "o1", "event_time_ms": T0, "event_type": "purchase", "order_id": "o1",
             "region": "north", "lines": [{"item_id": f"item-{n}", "quantity": 1,
                                           "unit_price": 1.0} for n in range(40)]}
    records = forwarded_records(cat, "orders", [(3, 17, order)])
    assert len(records) <= 4   # one record per destination partition, not one per line
    seen = 0
    for partition, raw in records:
        body = orjson.loads(raw)
        for sig in body["signals"]:
            assert cat.partition_of("price-signals", sig["item_id"]) == partition
            assert (sig["source_topic"], sig["source_partition"], sig["source_offset"]) == (
                "orders", 3, 17)
            seen += 1
    assert seen == 40


def test_the_catalogue_sets_the_first_price_within_the_bounds() -> None:
    item = Item()
    first = item.step({**catalog(list_price=20.0), "price_ceiling": 18.0}).change
    assert first is not None and first["old_price"] is None
    assert first["new_price"] == 18.0 and first["reason"]["trigger"] == "initial"
    assert first["reason"]["guardrails"] == ["clamped:ceiling"]
    # cost 19.5 x 1.05 above the list price, which caps it: no price until the terms agree
    other = Item()
    assert other.step(catalog(list_price=20.0, unit_cost=19.5)).change is None
    assert other.state.price is None and other.state.pending == "catalog"
    mended = other.step(catalog(T0 + MIN, list_price=21.0, unit_cost=19.5)).change
    assert mended is not None and mended["new_price"] == 21.0


def test_a_competitor_drop_is_followed_a_step_at_a_time_and_never_below_the_floor() -> None:
    item = Item()
    item.step(catalog())                                   # 20.00, floor 12.60
    held = item.step(competitor(T0 + 1 * MIN, 15.0))      # within the 10 min interval
    assert held.change is None and item.state.pending == "competitor_price"
    first = item.step({"kind": "view", "event_time_ms": T0 + 11 * MIN, "item_id": "i",
                       "price": 20.0}).change             # the first signal after it
    assert first is not None and first["reason"]["trigger"] == "competitor_price"
    assert first["new_price"] == 18.0                      # 10 % step, towards 15
    assert "clamped:step" in first["reason"]["guardrails"]
    assert first["reason"]["competitor"] == {"name": "acme", "price": 15.0, "rule": "match",
                                             "gap": 0.2}
    second = item.step(competitor(T0 + 22 * MIN, 10.0)).change
    assert second is not None and second["new_price"] == 16.2
    prices = [16.2]
    for k in range(3, 8):
        change = item.step(competitor(T0 + k * 11 * MIN, 10.0)).change
        if change:
            prices.append(change["new_price"])
    assert min(prices) == 12.6 and item.state.price == 12.6   # cost 12 x 1.05: the floor wins


def test_an_override_wins_until_it_expires_then_the_engine_takes_over() -> None:
    item = Item()
    item.step(catalog())
    set_ = item.step({"kind": "override", "event_time_ms": T0 + MIN, "item_id": "i",
                      "price": 9.99, "expires_ms": T0 + 60 * MIN, "by": "pricing-team"}).change
    assert set_ is not None and set_["new_price"] == 9.99     # below the floor: it still wins
    assert set_["reason"]["trigger"] == "override"
    assert set_["reason"]["override"]["by"] == "pricing-team"
    during = item.step(competitor(T0 + 30 * MIN, 25.0))
    assert during.change is None and item.state.price == 9.99
    after = item.step({"kind": "view", "event_time_ms": T0 + 61 * MIN, "item_id": "i",
                       "price": 9.99}).change
    assert after is not None and after["reason"]["trigger"] == "override_expired"
    assert item.state.override is None and after["new_price"] == 12.6  # back inside the bounds


def test_clearing_an_override_hands_the_price_back() -> None:
    item = Item()
    item.step(catalog())
    item.step({"kind": "override", "event_time_ms": T0 + MIN, "item_id": "i", "price": 30.0,
               "expires_ms": T0 + 600 * MIN})
    cleared = item.step({"kind": "override_clear", "event_time_ms": T0 + 20 * MIN,
                         "item_id": "i"}).change
    assert cleared is not None and cleared["reason"]["trigger"] == "override_cleared"
    # the bounds hold whatever the step limit says: straight back under the list price cap
    assert cleared["new_price"] == 20.0 and "clamped:ceiling" in cleared["reason"]["guardrails"]


@pytest.mark.parametrize(("observations", "reasons", "accepted"), [
    ([20.0, 2000.0], [None, "outlier_jump"], 20.0),              # a 100x jump
    ([20.0, 2.0], [None, "outlier_jump"], 20.0),                 # a tenth
    ([20.0, 70.0, 71.0, 70.5], [None, "outlier_jump", "outlier_jump", None], 70.5),  # confirmed
    ([20.0, 70.0, 20.5, 70.0], [None, "outlier_jump", None, "outlier_jump"], 20.5),  # not in a row
])
def test_competitor_outliers_are_rejected_with_a_reason(
        observations: list[float], reasons: list[str | None], accepted: float) -> None:
    item = Item()
    item.step(catalog())
    got = [item.step(competitor(T0 + (k + 1) * MIN, p)).rejected
           for k, p in enumerate(observations)]
    assert got == reasons
    assert item.state.competitors["acme"][1] == accepted
    assert [r[3] for r in item.state.rejected] == [r for r in reversed(reasons) if r]


def test_other_currencies_and_ignored_competitors_do_not_count() -> None:
    item = Item(type(MATCH)(**{**MATCH.__dict__, "ignored_competitors": frozenset({"dodgy"})}))
    item.step(catalog())
    assert item.step(competitor(T0 + MIN, 15.0, currency="EUR")).rejected == "currency_mismatch"
    assert item.step(competitor(T0 + MIN, 1.0, name="dodgy")).rejected is None
    assert item.state.competitors == {}


def test_a_silent_feed_drops_out_instead_of_pinning_the_price() -> None:
    item = Item()
    item.step(catalog())
    item.step(competitor(T0 + 11 * MIN, 19.0))            # capped at 19 (or the model's lower)
    assert item.state.price is not None and item.state.price <= 19.0
    day = 86_400_000
    later = item.step({"kind": "stock", "event_time_ms": T0 + 2 * day, "item_id": "i",
                       "dc": "dc-north", "on_hand": 50}).change
    # two days on the competitor is stale: no cap, the optimiser's choice within one step
    assert later is None or later["reason"]["competitor"] is None


def test_a_signal_missing_what_its_kind_needs_is_skipped_with_a_reason() -> None:
    item = Item()
    assert item.step({"kind": "competitor", "event_time_ms": T0, "item_id": "i"}) == Outcome(
        None, "malformed_signal")


def _run(signals: list[Signal], round_trip: bool) -> list[tuple[str, float]]:
    item = Item(SETTINGS.pricing.rules("toys"))
    out = []
    for signal in signals:
        if round_trip:   # as the stage does between batches: state and model through JSON
            item.state = ItemPricing.from_dict(orjson.loads(orjson.dumps(item.state.as_dict())))
            item.model = ConversionModel(item.repricer.c.params, item.model.weights,
                                         item.model.intercept)
        change = item.step(signal).change
        if change:
            out.append((change["decision_id"], change["new_price"]))
    return out


def test_a_replay_makes_the_same_decisions_with_the_same_ids() -> None:
    signals: list[Signal] = [catalog()]
    for k in range(1, 200):
        t = T0 + k * 7 * MIN
        signals.append({"kind": "view", "event_time_ms": t, "item_id": "i", "quantity": 3})
        if k % 5 == 0:
            signals.append({"kind": "purchase", "event_time_ms": t, "item_id": "i",
                            "quantity": 1, "price": 20.0})
        if k % 17 == 0:
            signals.append(competitor(t, 17.0 + k % 3))
    first = _run(signals, round_trip=False)
    assert len(first) > 3 and len({d for d, _ in first}) == len(first)
    assert _run(signals, round_trip=False) == first
    assert _run(signals, round_trip=True) == first
