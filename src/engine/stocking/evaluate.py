"""``engine evaluate forecast``: a rolling-origin evaluation of the demand forecasts on the
Online Retail invoices, per stock code x country, through the live forecasting code.

The invoices are read by the replay's own source (``replay.storefronts.online_retail``) and
checked by the contracts' validator, so the orders the forecaster sees are the ones the live
worker would apply (a line with a negative quantity outside a cancellation is dead-lettered
there and ignored here). Returns do not count as demand.

At the end of each day from ``warmup_days`` on (the origin), every item x country series that
sold in the ``warmup_days`` before it is forecast for the next ``horizon_days``:
- engine: ``core.forecast.Forecaster`` (pooled rates, weekday profile, an interval); its
  point forecast is the median (0 when no order at all is more likely than not), which is what
  absolute-error scores reward on intermittent series; ``point="mean"`` scores its mean;
- seasonal naive: the units of the last 7 days (the same weekdays a week earlier), scaled to
  the horizon;
- moving average: the mean daily units of the last ``warmup_days`` times the horizon.

Scores: WAPE = sum |forecast - actual| / sum actual over all series and origins; MASE = the mean
over series and origins of |forecast - actual| divided by the series' in-sample error of the
seasonal naive forecast of a 7-day total (its first ``warmup_days``; series whose scale is 0
are left out of MASE only); coverage = the share of actuals inside the engine's interval.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.config import Settings
from engine.contracts import Validator, load_catalogue
from engine.core.forecast import MS_PER_DAY, Forecaster, ForecastParams
from engine.replay.catalog import ONLINE_RETAIL_CATEGORY
from engine.replay.storefronts import online_retail

MODELS = ("engine", "seasonal_naive", "moving_average")
#: the engine's mean forecast, scored too: what stocking plans with, beside the median
MEAN = "engine_mean"


@dataclass
class Score:
    abs_error: float = 0.0
    actual: float = 0.0
    scaled: float = 0.0
    scaled_n: int = 0
    covered: int = 0
    n: int = 0

    def add(self, forecast: float, actual: float, scale: float | None) -> None:
        self.abs_error += abs(forecast - actual)
        self.actual += actual
        self.n += 1
        if scale:
            self.scaled += abs(forecast - actual) / scale
            self.scaled_n += 1

    def as_dict(self, coverage: bool) -> dict[str, float | None]:
        out: dict[str, float | None] = {
            "mase": round(self.scaled / self.scaled_n, 4) if self.scaled_n else None,
            "wape": round(self.abs_error / self.actual, 4) if self.actual else None}
        if coverage:
            out["coverage"] = round(self.covered / self.n, 4) if self.n else None
        return out


def daily_orders(settings: Settings, path: Path) -> list[tuple[int, str, str, int]]:
    """(event time, item, region, units) of every valid purchase line, in event time."""
    validator = Validator(load_catalogue(), settings.validation)
    lines = []
    for record in online_retail(path):
        event = record.event
        if event["event_type"] != "purchase" or validator.check_event("orders", event):
            continue
        lines += [(event["event_time_ms"], line["item_id"], event["region"],
                   int(line["quantity"])) for line in event["lines"]]
    return lines


def evaluate(settings: Settings, path: Path, horizon_days: int = 7, warmup_days: int = 28,
             params: ForecastParams | None = None, point: str = "median") -> dict[str, Any]:
    lines = daily_orders(settings, path)
    if not lines:
        raise ValueError(f"{path}: no valid purchase lines")
    first_day = lines[0][0] // MS_PER_DAY
    units: dict[tuple[str, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for t, item, region, q in lines:
        units[(item, region)][t // MS_PER_DAY - first_day] += q
    last_day = max(t for t, *_ in lines) // MS_PER_DAY - first_day
    model = Forecaster(params or ForecastParams())
    scores = {name: Score() for name in (*MODELS, MEAN)}
    scales = {key: _scale(days, warmup_days) for key, days in units.items()}
    cursor = 0
    origins = range(warmup_days - 1, last_day - horizon_days + 1)
    for origin in origins:
        end_ms = (first_day + origin + 1) * MS_PER_DAY
        while cursor < len(lines) and lines[cursor][0] < end_ms:
            t, item, region, q = lines[cursor]
            model.observe(item, ONLINE_RETAIL_CATEGORY, region, t, q)
            cursor += 1
        for key, days in units.items():
            past = [days.get(d, 0) for d in range(origin - warmup_days + 1, origin + 1)]
            if not any(past):
                continue
            actual = float(sum(days.get(d, 0) for d in range(origin + 1,
                                                              origin + 1 + horizon_days)))
            f = model.forecast(key[0], ONLINE_RETAIL_CATEGORY, key[1], end_ms - 1,
                               horizon_days)
            scores["engine"].add(f.median if point == "median" else f.mean, actual,
                                 scales[key])
            scores[MEAN].add(f.mean, actual, scales[key])
            scores["engine"].covered += int(f.low <= actual <= f.high)
            naive = sum(past[-7:]) * horizon_days / 7.0
            scores["seasonal_naive"].add(naive, actual, scales[key])
            average = sum(past) / len(past) * horizon_days
            scores["moving_average"].add(average, actual, scales[key])
    return {
        "engine": scores["engine"].as_dict(coverage=True),
        "baselines": {name: scores[name].as_dict(coverage=False) for name in MODELS[1:]},
        "engine_mean_point": scores[MEAN].as_dict(coverage=False),
        "data": str(path), "horizon_days": horizon_days, "warmup_days": warmup_days,
        "origins": len(origins), "forecasts": scores["engine"].n,
        "interval": (params or ForecastParams()).interval,
    }


def _scale(days: dict[int, int], warmup_days: int) -> float | None:
    """In-sample error of the seasonal naive 7-day total over the first ``warmup_days``."""
    week = [sum(days.get(d - k, 0) for k in range(7)) for d in range(6, warmup_days)]
    errors = [abs(week[i] - week[i - 7]) for i in range(7, len(week))]
    scale = sum(errors) / len(errors) if errors else 0.0
    return scale or None


def render(result: dict[str, Any]) -> str:
    lines = [f"Demand forecasts, rolling origin: {result['origins']} origins, horizon "
             f"{result['horizon_days']} days, {result['forecasts']:,} forecasts "
             f"(item x country, {result['data']})",
             f"{'model':<16}{'MASE':>8}{'WAPE':>8}{'coverage':>10}"]
    e = result["engine"]
    lines.append(f"{'engine':<16}{e['mase']:>8}{e['wape']:>8}{e['coverage']:>10}")
    m = result["engine_mean_point"]
    lines.append(f"{'engine (mean)':<16}{m['mase']:>8}{m['wape']:>8}{'':>10}")
    for name, b in result["baselines"].items():
        lines.append(f"{name:<16}{b['mase']:>8}{b['wape']:>8}{'':>10}")
    return "\n".join(lines)


def as_json(result: dict[str, Any]) -> str:
    return orjson.dumps(result).decode()
