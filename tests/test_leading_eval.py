"""The leading-indicator evaluation on the real REES46 slice: the documented JSON, plausible
counts, the same scores on every run, and no difference between the engine with and without
indicators once they are switched off (the numbers are in the closing notes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.config import Settings
from engine.stocking.leading_eval import as_json, evaluate
from engine.stocking.stage import forecast_params

SCORES = {"mae", "total_forecast", "total_actual", "poisson_deviance", "top_k_share"}


def rees46_slice(settings: Settings) -> Path:
    return settings.replay.datasets_path / "rees46" / "events_2019-10-01_first17k.csv.gz"


@pytest.fixture(scope="module")
def result(base_settings: Settings) -> dict[str, Any]:
    return evaluate(base_settings, rees46_slice(base_settings))


def test_the_command_prints_the_documented_json(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["evaluate", "leading", "--horizon-minutes", "30", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert set(out["engine"]) == set(out["engine_without_indicators"]) == SCORES
    assert set(out["baselines"]) == {"last_window", "rate_so_far"}
    # 1 and 3 hours, and the configured lead half-life (12)
    assert set(out["sensitivity"]) == {"1", "3", "12"}
    for scores in (*out["baselines"].values(), *out["sensitivity"].values()):
        assert set(scores) == SCORES
    assert out["sensitivity"]["12"] == out["engine"]


def test_the_counts_are_plausible(result: dict[str, Any]) -> None:
    # origins at 60, 70, ... 140 minutes: the slice spans 170 minutes, the horizon is 30
    assert result["origins"] == 9 and result["horizon_minutes"] == 30
    assert result["purchases"] == 214 and result["events"] < 17_434   # zero prices dead-lettered
    # each series seen before an origin is forecast once per origin (8,669 series in all)
    assert 1_000 < result["forecasts"] < 9 * 8_669
    # horizons of 30 minutes every 10 overlap: a purchase counts in at most 3 of them
    assert 0 < result["purchases_in_horizons"] <= 3 * 214
    models = [result["engine"], result["engine_without_indicators"],
              *result["baselines"].values(), *result["sensitivity"].values()]
    assert {m["total_actual"] for m in models} == {result["purchases_in_horizons"]}
    for m in models:
        assert m["mae"] > 0 and m["poisson_deviance"] > 0 and 0 <= m["top_k_share"] <= 1


def test_two_runs_give_the_same_scores(base_settings: Settings,
                                       result: dict[str, Any]) -> None:
    assert evaluate(base_settings, rees46_slice(base_settings)) == result


def test_without_indicators_the_two_engines_agree(base_settings: Settings,
                                                  result: dict[str, Any]) -> None:
    # with the configured half-life the indicators change the forecasts ...
    assert result["engine"] != result["engine_without_indicators"]
    # ... and switched off (lead half-life 0) they must change nothing, to the last bit
    params = dataclasses.replace(forecast_params(base_settings.stocking),
                                 lead_half_life_hours=0.0)
    off = evaluate(base_settings, rees46_slice(base_settings), params=params)
    assert off["engine"] == off["engine_without_indicators"]
    assert as_json(off)["sensitivity"]["0"] == as_json(off)["engine"]


def test_a_bad_horizon_or_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["evaluate", "leading", "--horizon-minutes", "0"]) == 2
    assert main(["evaluate", "leading", "--data", "/nonexistent.csv"]) == 2
    assert "no such file" in capsys.readouterr().err
