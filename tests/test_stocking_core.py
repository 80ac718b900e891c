"""The stocking decision as pure functions: signal, transfer source, rate limit, clearing, rows."""

from __future__ import annotations

import orjson
import pytest

from engine.core.forecast import MS_PER_DAY, Forecaster, ForecastParams
from engine.core.stocking import (
    Centre,
    ItemStock,
    StockingPolicy,
    assess,
    centre_demand,
    item_row,
    load_item,
    load_parents,
    parent_rows,
)

MONDAY = 1_291_593_600_000          # 2010-12-06 00:00 UTC
HOUR = 3_600_000
POLICY = StockingPolicy(
    centres={"default": Centre("dc-intl", 7), "uk": Centre("dc-uk", 2),
             "fr": Centre("dc-eu", 3), "de": Centre("dc-eu", 3)},
    service_level=0.95, cover_days=7, signal_interval_ms=HOUR)


def _history(fc: Forecaster, item: str = "mug", regions: tuple[str, ...] = ("uk",),
             per_day: float = 10.0, days: int = 28) -> int:
    for day in range(days):
        for region in regions:
            fc.observe(item, "kitchen", region, MONDAY + day * MS_PER_DAY + 10 * HOUR, per_day)
            fc.observe("plate", "kitchen", region, MONDAY + day * MS_PER_DAY + 11 * HOUR, 2)
    return MONDAY + days * MS_PER_DAY + 12 * HOUR


def test_short_centre_opens_a_signal_with_a_source_that_has_surplus() -> None:
    fc = Forecaster()
    t = _history(fc)
    st = ItemStock(category="kitchen")
    st.stock("dc-uk", 5, 0, t)
    st.stock("dc-intl", 400, 10, t)
    signal = assess(fc, "mug", st, {"uk"}, "dc-uk", t, POLICY)
    assert signal is not None and signal["status"] == "open"
    assert signal["dc"] == "dc-uk" and signal["region"] == "uk" and signal["horizon_days"] == 2
    demand = centre_demand(fc, "mug", "kitchen", {"uk"}, "dc-uk", POLICY, t, 2)
    assert signal["forecast"]["upper"] == pytest.approx(demand.upper, abs=1e-3)
    assert demand.lower <= demand.mean <= demand.upper
    assert signal["forecast"]["upper"] > 5            # why it is short
    # the target covers the lead time plus cover days: about 9 days of 10 a day, less 5 held
    assert 60 <= signal["suggested_transfer_qty"] <= 160
    # orders come ten units at a time, so two days without one are possible (about 13 %)
    assert signal["source_dc"] == "dc-intl" and 0.75 < signal["confidence"] < 1
    assert signal["signal_id"].startswith("stk-") and signal["event_id"] == \
        signal["signal_id"] + ":0"
    assert st.open["dc-uk"]["signal_id"] == signal["signal_id"]


def test_signals_opened_at_one_event_time_by_different_events_have_different_ids() -> None:
    """Replayed data repeats event times (and an item's signal can clear and open again at one
    time): the opening event is part of the id; the same event gives the same id."""
    ids = []
    for cause in ("orders:0:17:0", "orders:0:17:0", "orders:2:5:1"):
        fc = Forecaster()
        t = _history(fc)
        st = ItemStock(category="kitchen")
        st.stock("dc-uk", 5, 0, t)
        signal = assess(fc, "mug", st, {"uk"}, "dc-uk", t, POLICY, cause)
        assert signal is not None
        ids.append(signal["signal_id"])
    assert ids[0] == ids[1] != ids[2]


def test_unknown_stock_decides_nothing_and_a_covered_centre_opens_nothing() -> None:
    fc = Forecaster()
    t = _history(fc)
    st = ItemStock(category="kitchen")
    assert assess(fc, "mug", st, {"uk"}, "dc-uk", t, POLICY) is None
    st.stock("dc-uk", 500, 0, t)
    assert assess(fc, "mug", st, {"uk"}, "dc-uk", t, POLICY) is None
    assert st.open == {}


def test_no_surplus_anywhere_says_replenish_from_supplier() -> None:
    fc = Forecaster()
    t = _history(fc, regions=("uk", "fr"))
    st = ItemStock(category="kitchen")
    st.stock("dc-uk", 0, 0, t)
    st.stock("dc-eu", 20, 0, t)          # needs its own stock for France
    signal = assess(fc, "mug", st, {"uk", "fr"}, "dc-uk", t, POLICY)
    assert signal is not None and signal["source_dc"] is None
    assert "replenish from the supplier" in signal["reason"]


def test_a_centre_serving_two_regions_adds_their_demand() -> None:
    fc = Forecaster()
    t = _history(fc, regions=("uk", "fr", "de"))
    one = centre_demand(fc, "mug", "kitchen", {"fr"}, "dc-eu", POLICY, t, 3)
    both = centre_demand(fc, "mug", "kitchen", {"uk", "fr", "de"}, "dc-eu", POLICY, t, 3)
    assert both.regions == ("de", "fr")
    assert both.mean == pytest.approx(2 * one.mean, rel=0.05)
    assert both.upper < 2 * one.upper            # spreads add in variance, not in quantiles


def test_rate_limit_holds_updates_and_reopening_but_never_clearing() -> None:
    fc = Forecaster()
    t = _history(fc)
    st = ItemStock(category="kitchen")
    st.stock("dc-uk", 5, 0, t)
    st.stock("dc-intl", 1000, 0, t)
    first = assess(fc, "mug", st, {"uk"}, "dc-uk", t, POLICY)
    assert first is not None
    # a burst of orders within the hour: the quantity changes, the signal is held
    for k in range(5):
        fc.observe("mug", "kitchen", "uk", t + (k + 1) * 60_000, 60)
    assert assess(fc, "mug", st, {"uk"}, "dc-uk", t + 10 * 60_000, POLICY) is None
    # the first evaluation after the interval publishes the update, same signal
    later = assess(fc, "mug", st, {"uk"}, "dc-uk", t + HOUR, POLICY)
    assert later is not None and later["signal_id"] == first["signal_id"]
    assert later["event_id"].endswith(":1")
    assert later["suggested_transfer_qty"] > first["suggested_transfer_qty"]
    # stock arrives a minute later: cleared at once (not rate-limited)
    st.stock("dc-uk", 5000, 0, t + HOUR + 60_000)
    cleared = assess(fc, "mug", st, {"uk"}, "dc-uk", t + HOUR + 60_000, POLICY)
    assert cleared is not None and cleared["status"] == "cleared"
    assert cleared["signal_id"] == first["signal_id"] and cleared["suggested_transfer_qty"] == 0
    assert cleared["source_dc"] is None and "dc-uk" not in st.open
    # stock gone again within the hour: re-opening waits for the interval, then a new signal
    st.stock("dc-uk", 0, 0, t + HOUR + 120_000)
    assert assess(fc, "mug", st, {"uk"}, "dc-uk", t + HOUR + 120_000, POLICY) is None
    reopened = assess(fc, "mug", st, {"uk"}, "dc-uk", t + 2 * HOUR + 60_000, POLICY)
    assert reopened is not None and reopened["status"] == "open"
    assert reopened["signal_id"] != first["signal_id"]


def test_small_changes_of_quantity_publish_nothing_new() -> None:
    fc = Forecaster()
    t = _history(fc)
    st = ItemStock(category="kitchen")
    st.stock("dc-uk", 5, 0, t)
    first = assess(fc, "mug", st, {"uk"}, "dc-uk", t, POLICY)
    assert first is not None
    assert assess(fc, "mug", st, {"uk"}, "dc-uk", t + 2 * HOUR, POLICY) is None
    fc.observe("mug", "kitchen", "uk", t + 3 * HOUR, 10)      # one more ordinary order
    assert assess(fc, "mug", st, {"uk"}, "dc-uk", t + 3 * HOUR, POLICY) is None   # < 25 %
    fc.observe("mug", "kitchen", "uk", t + 4 * HOUR, 400)     # a wholesale order
    update = assess(fc, "mug", st, {"uk"}, "dc-uk", t + 4 * HOUR, POLICY)
    assert update is not None and update["suggested_transfer_qty"] > 1.25 * first[
        "suggested_transfer_qty"]


def test_older_stock_level_is_ignored() -> None:
    st = ItemStock()
    assert st.stock("dc-uk", 10, 2, 1000)
    assert not st.stock("dc-uk", 99, 0, 999)
    assert st.available("dc-uk") == 12


def test_rows_round_trip_through_json_to_the_same_decision() -> None:
    fc = Forecaster()
    t = _history(fc, regions=("uk", "fr"))
    fc.interested("mug", "kitchen", "uk", t - HOUR, views=30, carts=4)
    st = ItemStock(category="kitchen")
    st.stock("dc-uk", 5, 0, t)
    st.stock("dc-eu", 500, 0, t)
    row = orjson.loads(orjson.dumps(item_row(fc, "mug", st, {"uk", "fr"})))
    pairs = [("kitchen", "uk"), ("kitchen", "fr")]
    stored = [orjson.dumps(row).decode() if row else None
              for c, r in pairs for row in parent_rows(fc, c, r)]
    again = Forecaster()
    load_parents(again, pairs, stored)
    st2, regions = load_item(again, "mug", row)
    assert regions == {"uk", "fr"}
    a = assess(fc, "mug", st, {"uk", "fr"}, "dc-uk", t, POLICY)
    b = assess(again, "mug", st2, regions, "dc-uk", t, POLICY)
    assert a is not None and b is not None
    assert a["forecast"] == pytest.approx(b["forecast"], rel=1e-4)
    assert a["suggested_transfer_qty"] == b["suggested_transfer_qty"]


def test_views_and_cart_adds_raise_the_short_horizon_forecast() -> None:
    fc = Forecaster(ForecastParams(lead_half_life_hours=12))
    for day in range(28):       # the region learns units per view (0.3) and per cart add (2)
        at = MONDAY + day * MS_PER_DAY
        for item, units in (("mug", 10), ("plate", 2)):
            fc.interested(item, "kitchen", "uk", at + 9 * HOUR, views=20, carts=3)
            fc.observe(item, "kitchen", "uk", at + 10 * HOUR, units)
    t = MONDAY + 28 * MS_PER_DAY + 12 * HOUR
    for k in range(40):          # a new item takes off: 40 views and 10 cart adds, no order yet
        fc.interested("bowl", "kitchen", "uk", t - (40 - k) * 60_000, views=1, carts=0.25)
    hot = fc.forecast("bowl", "kitchen", "uk", t, 1)
    without = fc.forecast("bowl", "kitchen", "uk", t, 1, leading=False)
    # 10 cart adds x 2 units each, spread over the interest's life: well above its pooled rate
    assert hot.lead_units > 5 and hot.mean > 10 * without.mean
    # the excess lasts about the interest's mean life, so a month adds little more than a week
    week, month = fc.forecast("bowl", "kitchen", "uk", t, 7), fc.forecast("bowl", "kitchen",
                                                                          "uk", t, 28)
    assert month.lead_units < 1.05 * week.lead_units
    # an item selling steadily at its interest's rate gets no extra
    steady = fc.forecast("mug", "kitchen", "uk", t, 1)
    assert steady.lead_units == 0.0


def test_a_source_appearing_is_published_at_once() -> None:
    fc = Forecaster()
    t = _history(fc)
    st = ItemStock(category="kitchen")
    st.stock("dc-uk", 5, 0, t)
    first = assess(fc, "mug", st, {"uk"}, "dc-uk", t, POLICY)
    assert first is not None and first["source_dc"] is None
    st.stock("dc-intl", 5000, 0, t + 1000)       # the surplus abroad becomes known
    update = assess(fc, "mug", st, {"uk"}, "dc-uk", t + 1000, POLICY)
    assert update is not None and update["source_dc"] == "dc-intl"
    assert update["signal_id"] == first["signal_id"]
    st.stock("dc-eu", 9000, 0, t + 2000)         # another source: rate-limited as usual
    assert assess(fc, "mug", st, {"uk"}, "dc-uk", t + 2000, POLICY) is None
