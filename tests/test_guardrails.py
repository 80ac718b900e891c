"""Price guardrails as pure functions (engine.core.guardrails), with property-based tests:
whatever the optimiser proposes, the bounds, the step limit, the interval and overrides hold."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from engine.core.guardrails import (
    MAX_PRICE,
    Override,
    Rules,
    Terms,
    bounds,
    competitor_target,
    decide,
    lowest_competitor,
    screen_competitor_price,
)

MIN = 60_000
prices = st.floats(min_value=0.05, max_value=10_000, allow_nan=False)
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
optional_prices = st.none() | prices


@st.composite
def terms(draw: st.DrawFn) -> Terms:
    return Terms(unit_cost=draw(optional_prices), min_margin=draw(fractions),
                 list_price=draw(optional_prices), price_floor=draw(optional_prices),
                 price_ceiling=draw(optional_prices), map_price=draw(optional_prices))


rules = st.builds(Rules, max_step=st.floats(min_value=0.01, max_value=0.5),
                  min_interval_ms=st.integers(0, 3_600_000),
                  cap_at_list_price=st.booleans())


@given(current=prices, proposed=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
       t=terms(), r=rules)
def test_the_price_is_always_within_the_bounds(current: float, proposed: float, t: Terms,
                                               r: Rules) -> None:
    decision = decide(current, proposed, t, r, now_ms=10 * MIN)
    floor, ceiling = bounds(t, r)
    if decision.reasons == ("held:inconsistent_terms",):
        assert math.ceil(floor * 100 - 1e-6) > math.floor(ceiling * 100 + 1e-6)
        assert decision.price == current and not decision.changed
        return
    if decision.reasons == ("held:step_below_a_cent",):
        assert decision.price == current and current * r.max_step < 0.01
        return
    assert floor - 1e-9 <= decision.price <= ceiling + 1e-9
    assert decision.price == round(decision.price, 2)   # whole cents


@given(current=prices, proposed=prices, cap=prices, t=terms(), r=rules)
def test_a_competitor_cap_pulls_the_price_down_but_never_through_the_bounds(
        current: float, proposed: float, cap: float, t: Terms, r: Rules) -> None:
    decision = decide(current, proposed, t, r, now_ms=10 * MIN, competitor_cap=cap)
    assume(not decision.reasons[0].startswith("held:"))
    floor, ceiling = bounds(t, r)
    assert floor - 1e-9 <= decision.price <= ceiling + 1e-9
    low_step = current * (1 - r.max_step)
    # not above the competitor, unless the floor or the step limit keeps it there
    assert decision.price <= cap + 1e-9 or decision.price <= max(floor, low_step) + 0.01


@given(current=prices, proposed=prices, r=rules)
def test_without_bounds_in_the_way_a_change_is_at_most_one_step(current: float,
                                                                proposed: float,
                                                                r: Rules) -> None:
    decision = decide(current, proposed, Terms(), r, now_ms=10 * MIN)
    assume("clamped:floor" not in decision.reasons)
    assert abs(decision.price - current) <= r.max_step * current + 1e-9
    if decision.reasons == ("proposed",):
        assert decision.price == round(proposed, 2)


@given(current=prices, proposed=prices, t=terms(), r=rules,
       since=st.integers(0, 3_600_000))
def test_no_change_within_the_minimum_interval(current: float, proposed: float, t: Terms,
                                               r: Rules, since: int) -> None:
    now = 100 * MIN
    decision = decide(current, proposed, t, r, now_ms=now, last_change_ms=now - since)
    if since < r.min_interval_ms:
        assert decision == decide(current, current, t, r, now, now - since)
        assert decision.price == current and decision.reasons == ("held:min_interval",)


@given(current=prices, proposed=prices, t=terms(), r=rules, forced=prices,
       left=st.integers(-MIN, MIN))
def test_an_override_wins_until_it_expires(current: float, proposed: float, t: Terms,
                                           r: Rules, forced: float, left: int) -> None:
    now = 100 * MIN
    decision = decide(current, proposed, t, r, now_ms=now, last_change_ms=now,
                      override=Override(forced, expires_ms=now + left))
    if left > 0:
        assert decision.price == round(forced, 2) and decision.reasons == ("override",)
    else:
        assert decision.reasons != ("override",)


def test_floor_is_cost_plus_margin_map_and_catalogue_floor() -> None:
    t = Terms(unit_cost=10.0, min_margin=0.2, map_price=11.5, price_floor=9.0,
              list_price=20.0, price_ceiling=25.0)
    assert bounds(t, Rules()) == (12.0, 20.0)
    assert bounds(t, Rules(cap_at_list_price=False)) == (12.0, 25.0)
    assert bounds(Terms(), Rules()) == (0.0, MAX_PRICE)
    d = decide(15.0, 1.0, t, Rules(max_step=0.5), now_ms=0)
    assert (d.price, d.reasons) == (12.0, ("clamped:step", "clamped:floor"))
    d = decide(15.0, 15.5, t, Rules(), now_ms=0)
    assert (d.price, d.changed, d.reasons) == (15.5, True, ("proposed",))


def test_inconsistent_terms_hold_the_price() -> None:
    d = decide(15.0, 14.0, Terms(unit_cost=20.0, list_price=18.0), Rules(), now_ms=0)
    assert (d.price, d.changed, d.reasons) == (15.0, False, ("held:inconsistent_terms",))


@pytest.mark.parametrize(("price", "last", "reason"), [
    (0.0, None, "not_positive"), (-3.0, 10.0, "not_positive"), (math.nan, None, "not_finite"),
    (math.inf, 10.0, "not_finite"), (1000.0, 10.0, "outlier_jump"), (0.1, 10.0, "outlier_jump"),
    (12.0, 10.0, None), (5.0, None, None)])
def test_competitor_outliers_are_rejected_with_a_reason(price: float, last: float | None,
                                                        reason: str | None) -> None:
    assert screen_competitor_price(price, last, Rules(outlier_ratio=3.0)) == reason


def test_competitor_rules_match_beat_ignore_and_stale_feeds() -> None:
    seen = {"acme": (0, 10.0), "bigbox": (50 * MIN, 12.0), "dodgy": (50 * MIN, 8.0)}
    now = 60 * MIN
    fresh_only = Rules(competitor_rule="match", competitor_stale_ms=30 * MIN,
                       ignored_competitors=frozenset({"dodgy"}))
    assert competitor_target(seen, now, fresh_only) == 12.0       # acme is stale, dodgy ignored
    assert competitor_target(seen, now, Rules(competitor_rule="match")) == 8.0
    assert competitor_target(seen, now, Rules()) is None          # "model": an input only
    assert lowest_competitor(seen, now, Rules()) == ("dodgy", 8.0)
    beat = Rules(competitor_rule="beat", beat_by=0.05)
    assert competitor_target(seen, now, beat) == pytest.approx(7.6)
    assert competitor_target(seen, now, Rules(competitor_rule="ignore")) is None
    assert lowest_competitor(seen, now, Rules(competitor_rule="ignore")) is None
    silent = 10 * 86_400_000                                      # the feed fell silent
    assert competitor_target(seen, silent, Rules(competitor_rule="match")) is None
