"""The pricing core as pure functions: features, the pooled conversion model, candidate prices
inside the guardrails, Thompson sampling and deterministic decision ids."""

from __future__ import annotations

import math

import pytest

from engine.core.guardrails import Rules, Terms, bounds
from engine.core.pricing import (
    ConversionModel,
    PricingParams,
    calibrated_prior,
    choose_price,
    decision_id,
    decision_seed,
    features,
    nearest_arm,
    price_arms,
)

T0 = 1_569_888_000_000   # 2019-10-01 00:00 UTC, a Tuesday


def test_features_describe_price_competitor_and_time() -> None:
    x = features("dvd-1", 9.0, 10.0, 8.0, T0 + 6 * 3_600_000)
    assert x["log_price_to_list"] == pytest.approx(math.log(0.9))
    assert x["gap_to_competitor"] == pytest.approx(0.125)
    assert x["hour_sin"] == pytest.approx(1.0) and x["weekend"] == 0.0
    assert x["item=dvd-1"] == 1.0
    saturday = features("dvd-1", 9.0, None, None, T0 + 4 * 86_400_000)
    assert saturday["weekend"] == 1.0 and "gap_to_competitor" not in saturday
    assert saturday["log_price_to_list"] == 0.0


def test_the_model_learns_that_cheaper_converts_and_round_trips_as_numbers() -> None:
    params = PricingParams(learning_rate=0.1)
    model = ConversionModel(params)
    for i in range(300):   # purchases come at the low price; views alone at the high one
        model.learn(features("a", 8.0, 10.0, None, T0 + i), bought=i % 3 == 0)
        model.learn(features("a", 12.0, 10.0, None, T0 + i), bought=False)
    low = model.probability(features("a", 8.0, 10.0, None, T0))
    high = model.probability(features("a", 12.0, 10.0, None, T0))
    assert low > high
    copy = ConversionModel(params, model.weights, model.intercept)
    assert copy.probability(features("a", 8.0, 10.0, None, T0)) == pytest.approx(low)
    # another item of the category starts from the category's behaviour
    assert model.probability(features("b", 8.0, 10.0, None, T0)) > \
        model.probability(features("b", 12.0, 10.0, None, T0))


def test_price_arms_are_fixed_points_inside_the_bounds() -> None:
    terms = Terms(unit_cost=8.0, min_margin=0.1, price_ceiling=13.0)
    arms = price_arms(10.0, terms, Rules(cap_at_list_price=False), spacing=0.1, levels=4)
    assert arms == [9.0, 10.0, 11.0, 12.0, 13.0]   # 6.00-8.00 are below 8.80, 14.00 above 13
    assert min(bounds(terms, Rules())) <= arms[0]
    assert nearest_arm(10.4, arms) == 10.0 and nearest_arm(10.5, arms) == 10.0
    assert nearest_arm(10.51, arms) == 11.0


def test_the_prior_is_the_items_rate_moved_by_the_models_price_effect() -> None:
    model = ConversionModel(PricingParams(learning_rate=0.1))
    for i in range(300):
        model.learn(features("a", 8.0, 10.0, None, T0), bought=i % 3 == 0)
        model.learn(features("a", 12.0, 10.0, None, T0), bought=False)
    at = {p: features("a", p, 10.0, None, T0) for p in (8.0, 10.0, 12.0)}
    prior = calibrated_prior(model, at, current=10.0, views=1_000, purchases=20)
    assert prior[10.0] == pytest.approx(20.5 / 1_025)   # the item's own rate at the current
    assert prior[8.0] > prior[10.0] > prior[12.0]
    fresh = calibrated_prior(ConversionModel(PricingParams()), at, 10.0, 0, 0)
    assert list(fresh.values()) == pytest.approx([0.5 / 25] * 3)   # no data: a weak 2 % prior


def test_thompson_sampling_follows_the_evidence_and_is_reproducible() -> None:
    params = PricingParams(prior_strength=10.0)
    prior = {9.0: 0.05, 10.0: 0.05, 11.0: 0.05}
    seen = {9.0: (2_000, 300), 10.0: (2_000, 100), 11.0: (2_000, 20)}
    choice = choose_price([9.0, 10.0, 11.0], prior, seen, views_per_day=100, unit_cost=5.0,
                          params=params, seed=decision_seed("a", T0))
    assert choice.price == 9.0   # 15 % at a 4.00 margin beats 5 % at 5.00 and 1 % at 6.00
    assert choice.expected_demand == pytest.approx(100 * (0.5 + 300) / (10 + 2_000))
    assert choice.expected_value == pytest.approx(choice.expected_demand * 4.0)
    again = choose_price([9.0, 10.0, 11.0], prior, seen, 100, 5.0, params,
                         decision_seed("a", T0))
    assert again == choice
    revenue = choose_price([9.0, 10.0, 11.0], prior, seen, 100, 5.0,
                           PricingParams(objective="revenue"), decision_seed("a", T0))
    assert revenue.expected_value == pytest.approx(revenue.expected_demand * revenue.price)


def test_with_no_evidence_the_choice_explores_among_the_candidates_only() -> None:
    picks = {choose_price([9.5, 10.0, 10.5], {}, {}, 50, 5.0, PricingParams(),
                          decision_seed("x", T0 + i)).price for i in range(50)}
    assert picks <= {9.5, 10.0, 10.5} and len(picks) > 1


def test_decision_ids_are_deterministic_and_distinct() -> None:
    a = decision_id("a", T0, 10.0, 9.5)
    assert a == decision_id("a", T0, 10.0, 9.5) and a.startswith("pd-")
    assert len({a, decision_id("a", T0 + 1, 10.0, 9.5), decision_id("b", T0, 10.0, 9.5),
                decision_id("a", T0, None, 9.5), decision_id("a", T0, 10.0, 9.51)}) == 5
