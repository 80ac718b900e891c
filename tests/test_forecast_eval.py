"""The forecast evaluation on the real Online Retail invoices, through the CLI: the documented
JSON, and scores that are numbers (the full table is in the closing notes)."""

from __future__ import annotations

import orjson
import pytest


def test_the_command_prints_the_documented_json(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["evaluate", "forecast", "--horizon", "7", "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert set(result["engine"]) == {"mase", "wape", "coverage"}
    assert set(result["baselines"]) == {"seasonal_naive", "moving_average"}
    for scores in (result["engine"], *result["baselines"].values()):
        assert scores["mase"] > 0 and scores["wape"] > 0
    assert 0 < result["engine"]["coverage"] <= 1 and result["forecasts"] > 10_000


def test_a_bad_horizon_or_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["evaluate", "forecast", "--horizon", "0"]) == 2
    assert main(["evaluate", "forecast", "--data", "/nonexistent.csv"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_returns_on_cdnow_beat_the_naive_rate(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["evaluate", "returns", "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["customers"] == 23_570 and result["weeks"] == 39
    assert result["engine"]["mae"] < result["baselines"]["naive_rate"]["mae"]
    p = result["parameters"]   # close to the published fit on this data (r .24, alpha 4.4,
    assert 0.15 < p["r"] < 0.35 and 3 < p["alpha"] < 7   # a .79, b 2.4)
    assert 0.5 < p["a"] < 1.1 and 1.5 < p["b"] < 3.5
