"""The pricing evaluation on the real data: the demand fit, the competitor paths and the
policies' guardrail accounting (a short run; the full table is in the closing notes)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.config import Settings
from engine.core.guardrails import Rules
from engine.core.pricing import PricingParams
from engine.pricing.evaluate import POLICIES, evaluate, simulate
from engine.pricing.simulator import ELASTICITY_RANGE, competitor_paths, fit_demand


@pytest.fixture(scope="module")
def data(base_settings: Settings) -> tuple[Path, Path]:
    root = base_settings.replay.datasets_path / "competitor_prices"
    return root / "retail_price_competitors.csv", root / "project_hammer_grocery_prices.csv.gz"


def test_demand_is_fitted_per_category_and_falls_with_price(data: tuple[Path, Path]) -> None:
    products = fit_demand(data[0])
    assert len(products) == 52
    for p in products:
        assert ELASTICITY_RANGE[0] <= p.own_elasticity <= ELASTICITY_RANGE[1]
        assert p.daily_demand(p.list_price * 0.9, p.competitor_mean) > \
            p.daily_demand(p.list_price * 1.1, p.competitor_mean)
        assert p.unit_cost < p.list_price


def test_competitor_paths_are_real_shapes_around_one(data: tuple[Path, Path]) -> None:
    paths = competitor_paths(data[1], days=30, count=4)
    assert len(paths) == 4
    for shape in paths:
        assert len(shape) == 30 and shape.mean() == pytest.approx(1.0) and shape.std() > 0


def test_policies_are_reproducible_and_only_the_engine_is_guarded(
        data: tuple[Path, Path]) -> None:
    products = fit_demand(data[0])[:6]
    paths = competitor_paths(data[1], days=30, count=6)
    rules, params = Rules(), PricingParams()
    runs = {name: simulate(products, paths, 30, 7, name, rules, params) for name in POLICIES}
    assert runs["engine"].violations == 0 and runs["static"].violations == 0
    assert runs["match_lowest"].violations > 0   # following a competitor below cost + margin
    assert simulate(products, paths, 30, 7, "engine", rules, params) == runs["engine"]
    result = evaluate(data[0], data[1], 10, [1], rules, params)
    assert set(result["policies"]) == set(POLICIES)
    assert set(result["policies"]["engine"]) == {"profit", "revenue", "units", "violations"}


def test_the_command_prints_the_documented_json(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["evaluate", "pricing", "--days", "5", "--seeds", "1", "--json"]) == 0
    policies = orjson.loads(capsys.readouterr().out)["policies"]
    assert set(policies) == {"static", "match_lowest", "engine"}
    assert all(set(p) == {"profit", "revenue", "units", "violations"} for p in policies.values())
    assert main(["evaluate", "pricing", "--seeds", "x"]) == 2
