"""``engine evaluate leading``: do views and cart adds (leading indicators) improve the demand
forecasts of the next minutes? A rolling-origin evaluation on the REES46 clickstream, per item x
region, through the live forecasting code.

The clickstream is read by the replay's own source (``replay.storefronts.rees46``, with the
region derived per shopper from ``replay.rees46_regions``) and checked by the contracts'
validator, so the forecaster sees what the live stocking stage would: a view in ``clicks`` is
``interested(views=1)``, a cart ``add`` is ``interested(carts=quantity)``, a purchase line in
``orders`` is ``observe(units)``, each in its event's region and with the category the event
carries (a view with a zero price is dead-lettered there and ignored here).

Every ``step_minutes`` from ``warmup_minutes`` after the first event (the origin) until the last
event minus the horizon, every item x region series with any event (view, cart add, purchase) up
to the origin is forecast for the units bought in (origin, origin + ``horizon_minutes``]:
- engine: ``core.forecast.Forecaster`` with the configured parameters (``stocking``), mean;
- engine without indicators: the same model and state, ``forecast(..., leading=False)``;
- last window: the series' units in the horizon-length window just before the origin (the naive
  forecast of a count series);
- rate so far: the series' units since the first event, per minute, times the horizon.
The sensitivity runs the engine with indicators at lead half-lives of 1 and 3 hours and the
configured one (each its own forecaster, fed the same events).

Scores over all forecasts (series x origins): MAE of the forecast; the totals forecast and
bought; the mean Poisson deviance ``2 (y log(y / mu) - (y - mu))`` (a forecast below ``FLOOR`` is
scored as ``FLOOR``: a zero forecast of a purchase has infinite deviance); and the top-K share:
of the units bought in the horizons, the share bought from the K series with the highest
forecast at their origin (ties broken by item, then region). MAE rewards forecasting 0 for
intermittent series (the median), the deviance and the top-K share reward a good mean and
ranking, which is what the indicators are meant to improve. A purchase of a series with no
event up to the origin cannot be forecast by any model: it is counted in ``unscored_units``.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from engine.config import Settings
from engine.contracts import Validator, load_catalogue
from engine.core.forecast import Forecaster, ForecastParams
from engine.replay.storefronts import rees46
from engine.stocking.stage import forecast_params

MS_PER_MINUTE = 60_000
MINUTES_PER_DAY = 1440
#: lead half-lives (hours) of the sensitivity, beside the configured one
SENSITIVITY_HOURS = (1.0, 3.0)
#: the smallest forecast the Poisson deviance scores (units in the horizon)
FLOOR = 1e-3
ENGINE, WITHOUT = "engine", "engine_without_indicators"
BASELINES = ("last_window", "rate_so_far")

Key = tuple[str, str]   # (item, region)


class Event(NamedTuple):
    t: int
    kind: str   # "view", "cart" or "purchase"
    item: str
    category: str
    region: str
    units: int


@dataclass
class Score:
    """Sums over forecasts of one model; ``captured``: units bought in its top-K series."""

    abs_error: float = 0.0
    forecast: float = 0.0
    actual: int = 0
    deviance: float = 0.0
    captured: float = 0.0
    n: int = 0

    def add_origin(self, means: list[float], actuals: list[int], top_k: int) -> None:
        """The forecasts of one origin, aligned with ``actuals`` and in series order."""
        for mean, actual in zip(means, actuals, strict=True):
            self.abs_error += abs(mean - actual)
            self.forecast += mean
            self.actual += actual
            self.deviance += poisson_deviance(mean, actual)
        self.n += len(means)
        top = heapq.nsmallest(top_k, range(len(means)), key=lambda i: (-means[i], i))
        self.captured += sum(actuals[i] for i in top)

    def as_dict(self) -> dict[str, float | None]:
        return {"mae": self.abs_error / self.n if self.n else None,
                "total_forecast": self.forecast, "total_actual": self.actual,
                "poisson_deviance": self.deviance / self.n if self.n else None,
                "top_k_share": self.captured / self.actual if self.actual else None}


def poisson_deviance(mean: float, actual: int) -> float:
    mu = max(mean, FLOOR)
    return 2.0 * (actual * math.log(actual / mu) - (actual - mu)) if actual else 2.0 * mu


def read_events(settings: Settings, path: Path) -> list[Event]:
    """Views, cart adds and purchase lines of every valid REES46 event, in event time."""
    validator = Validator(load_catalogue(), settings.validation)
    events = []
    for record in rees46(path, settings.replay.rees46_regions):
        e = record.event
        if validator.check_event(record.topic, e):
            continue
        if record.topic == "orders" and e["event_type"] == "purchase":
            events += [Event(e["event_time_ms"], "purchase", line["item_id"], line["category"],
                             e["region"], int(line["quantity"])) for line in e["lines"]]
        elif record.topic == "clicks" and e["event_type"] == "view":
            events.append(Event(e["event_time_ms"], "view", e["item_id"], e["category"],
                                e["region"], 1))
        elif record.topic == "carts" and e["event_type"] == "add":
            events.append(Event(e["event_time_ms"], "cart", e["item_id"], e["category"],
                                e["region"], int(e["quantity"])))
    return events


def feed(model: Forecaster, event: Event) -> None:
    """One event, as the live stocking stage applies it."""
    if event.kind == "purchase":
        model.observe(event.item, event.category, event.region, event.t, event.units)
    else:
        model.interested(event.item, event.category, event.region, event.t,
                         views=event.units if event.kind == "view" else 0,
                         carts=event.units if event.kind == "cart" else 0)


def units_between(purchases: list[Event], start: int, end: int) -> dict[Key, int]:
    """Units bought per series in (start, end]."""
    out: dict[Key, int] = defaultdict(int)
    for p in purchases:
        if start < p.t <= end:
            out[(p.item, p.region)] += p.units
    return out


def engine_means(model: Forecaster, keys: list[Key], categories: dict[Key, str], t: int,
                 horizon_days: float, leading: bool = True) -> list[float]:
    """The model's mean forecast of each series at ``t``."""
    return [model.forecast(item, categories[(item, region)], region, t, horizon_days,
                           leading=leading).mean for item, region in keys]


def evaluate(settings: Settings, path: Path, horizon_minutes: int = 30, step_minutes: int = 10,
             warmup_minutes: int = 60, top_k: int = 50,
             params: ForecastParams | None = None) -> dict[str, Any]:
    """The scores (full precision; ``as_json`` and ``render`` round them)."""
    if min(horizon_minutes, step_minutes, warmup_minutes, top_k) <= 0:
        raise ValueError("horizon, step, warm-up and top-K must be positive")
    events = read_events(settings, path)
    if not events:
        raise ValueError(f"{path}: no valid REES46 events")
    params = params or forecast_params(settings.stocking)
    hours = sorted({*SENSITIVITY_HOURS, params.lead_half_life_hours})
    models = {h: Forecaster(replace(params, lead_half_life_hours=h)) for h in hours}
    engine = models[params.lead_half_life_hours]
    purchases = [e for e in events if e.kind == "purchase"]
    first, last = events[0].t, events[-1].t
    horizon_ms, horizon_days = horizon_minutes * MS_PER_MINUTE, horizon_minutes / MINUTES_PER_DAY
    origins = range(first + warmup_minutes * MS_PER_MINUTE, last - horizon_ms + 1,
                    step_minutes * MS_PER_MINUTE)
    if not origins:
        raise ValueError(f"{path}: shorter than the warm-up plus the horizon")
    names = [ENGINE, WITHOUT, *BASELINES, *(f"{h:g}" for h in hours)]
    scores = {name: Score() for name in names}
    categories: dict[Key, str] = {}
    cursor = unscored = 0
    for origin in origins:
        while cursor < len(events) and events[cursor].t <= origin:
            event = events[cursor]
            for model in models.values():
                feed(model, event)
            categories.setdefault((event.item, event.region), event.category)
            cursor += 1
        keys = sorted(categories)
        actual = units_between(purchases, origin, origin + horizon_ms)
        unscored += sum(u for key, u in actual.items() if key not in categories)
        recent = units_between(purchases, origin - horizon_ms, origin)
        so_far = units_between(purchases, first - 1, origin)
        per_horizon = horizon_ms / (origin - first)
        means = {f"{h:g}": engine_means(m, keys, categories, origin, horizon_days)
                 for h, m in models.items()}
        means |= {
            ENGINE: means[f"{params.lead_half_life_hours:g}"],
            WITHOUT: engine_means(engine, keys, categories, origin, horizon_days,
                                  leading=False),
            "last_window": [float(recent.get(k, 0)) for k in keys],
            "rate_so_far": [so_far.get(k, 0) * per_horizon for k in keys],
        }
        actuals = [actual.get(k, 0) for k in keys]
        for name in names:
            scores[name].add_origin(means[name], actuals, top_k)
    return {
        ENGINE: scores[ENGINE].as_dict(), WITHOUT: scores[WITHOUT].as_dict(),
        "baselines": {name: scores[name].as_dict() for name in BASELINES},
        "sensitivity": {f"{h:g}": scores[f"{h:g}"].as_dict() for h in hours},
        "forecasts": scores[ENGINE].n, "origins": len(origins),
        "purchases_in_horizons": scores[ENGINE].actual, "unscored_units": unscored,
        "purchases": sum(p.units for p in purchases), "events": len(events),
        "data": str(path), "horizon_minutes": horizon_minutes, "step_minutes": step_minutes,
        "warmup_minutes": warmup_minutes, "top_k": top_k,
        "lead_half_life_hours": params.lead_half_life_hours,
    }


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result with every score rounded to 4 significant digits."""
    return {key: _rounded(value) for key, value in result.items()}


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _rounded(v) for key, v in value.items()}
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def render(result: dict[str, Any]) -> str:
    r = as_json(result)
    k = r["top_k"]
    lines = [f"Leading indicators, rolling origin: {r['origins']} origins every "
             f"{r['step_minutes']} min, horizon {r['horizon_minutes']} min, "
             f"{r['forecasts']:,} forecasts (item x region, {r['data']})",
             f"units bought in the horizons: {r['purchases_in_horizons']:g} (windows overlap; "
             f"{r['unscored_units']} more in series not seen yet); "
             f"{r['purchases']} purchases in the data",
             f"{'model':<28}{'MAE':>9}{'deviance':>10}{'forecast':>10}{'actual':>8}"
             f"{f'top-{k} share':>14}"]
    rows = [("engine", r[ENGINE]), ("engine without indicators", r[WITHOUT]),
            *r["baselines"].items(),
            *((f"lead half-life {h} h" + (" (conf.)" if float(h) == r["lead_half_life_hours"]
                                            else ""), s)
              for h, s in r["sensitivity"].items())]
    for name, s in rows:
        lines.append(f"{name:<28}{_cell(s['mae'], 9)}{_cell(s['poisson_deviance'], 10)}"
                     f"{_cell(s['total_forecast'], 10)}{_cell(s['total_actual'], 8)}"
                     f"{_cell(s['top_k_share'], 14)}")
    return "\n".join(lines)


def _cell(value: float | None, width: int) -> str:
    return f"{'-' if value is None else f'{value:g}':>{width}}"
