"""Demand forecasts as pure functions (engine.core.forecast): forgetting, pooling towards the
parent, the weekday profile and the interval of intermittent demand."""

from __future__ import annotations

import pytest

from engine.core.forecast import MS_PER_DAY, Forecaster, ForecastParams

MONDAY = 4 * MS_PER_DAY          # 1970-01-05 was a Monday


def test_a_steady_seller_is_forecast_near_its_rate() -> None:
    f = Forecaster(ForecastParams(half_life_days=14, pool_days=7))
    for day in range(60):
        f.observe("a", "toys", "uk", MONDAY + day * MS_PER_DAY + 3_600_000, 10)
    fc = f.forecast("a", "toys", "uk", MONDAY + 60 * MS_PER_DAY, 7)
    assert fc.mean == pytest.approx(70, rel=0.1)
    assert fc.low < fc.mean < fc.high


def test_a_new_item_borrows_from_its_category_and_is_not_taken_for_a_fast_seller() -> None:
    f = Forecaster()
    for day in range(30):
        for item in ("a", "b", "c"):
            f.observe(item, "toys", "uk", MONDAY + day * MS_PER_DAY, 4)
    t = MONDAY + 30 * MS_PER_DAY
    f.observe("new", "toys", "uk", t, 20)                   # one big first order today
    fc = f.forecast("new", "toys", "uk", t + 1, 7)
    assert fc.mean < 20 * 7                                  # not 20 a day from now on
    assert fc.rates[1] > 0                                   # the category's share per item
    unknown = f.forecast("never-sold", "toys", "uk", t + 1, 7)
    assert unknown.mean == pytest.approx(7 * fc.rates[1], rel=0.3)


def test_weekday_profile_and_zero_inside_the_interval_of_slow_sellers() -> None:
    f = Forecaster()
    for week in range(8):
        for weekday in range(5):                             # never on weekends
            f.observe("a", "toys", "uk", MONDAY + (week * 7 + weekday) * MS_PER_DAY, 5)
        f.observe("slow", "toys", "uk", MONDAY + week * 7 * MS_PER_DAY, 1)
    friday = MONDAY + (8 * 7 + 4) * MS_PER_DAY
    assert f.profile("uk")[5:] == [0.0, 0.0]                  # the raw shares
    profile = f.profile("uk", friday)     # with a day of the region's average on each weekday
    assert 0 < profile[5] == profile[6] < 0.1 < 1.3 < profile[0]
    assert sum(profile) == pytest.approx(7)
    weekend = f.forecast("a", "toys", "uk", friday, 2)       # Saturday and Sunday
    weekdays = f.forecast("a", "toys", "uk", friday + 2 * MS_PER_DAY, 2)
    assert weekend.median == 0 and weekend.mean < 0.1 * weekdays.mean
    slow = f.forecast("slow", "toys", "uk", friday - MS_PER_DAY, 1)   # Friday alone
    assert slow.low == 0 and slow.high > 0


def test_a_region_new_to_the_engine_has_no_empty_weekdays() -> None:
    f = Forecaster()
    f.observe("a", "toys", "uk", MONDAY + 10 * 3_600_000, 5)        # its first sale, a Monday
    f.observe("a", "toys", "uk", MONDAY + MS_PER_DAY, 5)
    later = f.forecast("a", "toys", "uk", MONDAY + 2 * MS_PER_DAY, 2)   # Thursday and Friday
    assert later.mean > 0.2 * f.forecast("a", "toys", "uk", MONDAY + 2 * MS_PER_DAY, 7).mean


def test_an_item_named_later_moves_to_its_category() -> None:
    """Orders before the catalogue record count under "" until it names the category: then
    the item's membership moves, and the new category's rate is shared among its own items."""
    f = Forecaster()
    f.observe("x", "", "north", MONDAY, 3)
    f.observe("y", "shoes", "north", MONDAY, 3)
    f.recategorise("x", "", "shoes", {"north"})
    assert f.members[("", "north")] == 0 and f.members[("shoes", "north")] == 2
    assert f.members[("*", "north")] == 2          # "" and shoes: categories counted once
    f.recategorise("y", "shoes", "boots", {"north"})
    assert f.members[("boots", "north")] == 1 and f.members[("*", "north")] == 3
