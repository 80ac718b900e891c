"""Demand forecasts per item and region (pure, online, event time).

Each series keeps exponentially forgotten sums in event time (half-life ``half_life_days``):
units sold ``u``, units squared ``u2`` (how lumpy orders are) and exposure ``e`` (days the
series has been observed). Its daily rate is a Gamma-Poisson posterior mean shrunk towards its
parent's rate per item, so a sparse series borrows from its category in the region, and the
category from the region as a whole:

    rate(item, region) = (u_item + k * rate(category, region) / items(category, region))
                         / (e_item + k)

A weekday profile per region (the region's units on each weekday against its mean) shapes the
days ahead: the UK shop in the Online Retail data sells nothing on Saturdays. The forecast for
the next ``horizon`` days is the sum of the daily rates times the profile, with an interval from
a log-normal matched to the mean and a variance that has three parts: orders arrive at random
(Poisson), each brings a lot of units (``u2 / u``: a wholesale line of 100 units is one event,
not 100), and the rate itself is uncertain (the Gamma posterior's variance).

Everything is a function of the events and their event times, so a replay, the evaluator and
the live engine agree; updates cost a few dictionary operations per order line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist

MS_PER_DAY = 86_400_000
ALL = "*"


@dataclass
class Sums:
    """Forgotten sums of one series, as of ``t`` (ms)."""

    u: float = 0.0
    u2: float = 0.0
    e: float = 0.0
    t: int | None = None

    def advance(self, t: int, decay_per_day: float) -> None:
        """Age the sums to ``t``: forget, and count the elapsed days as exposure."""
        if self.t is None:
            self.t = t
            return
        if t <= self.t:
            return
        days = (t - self.t) / MS_PER_DAY
        f = math.exp(-decay_per_day * days)
        self.u *= f
        self.u2 *= f
        # exposure accumulates at one a day and is forgotten like the units
        self.e = self.e * f + (1.0 - f) / decay_per_day
        self.t = t

    def add(self, units: float) -> None:
        self.u += units
        self.u2 += units * units


@dataclass(frozen=True)
class ForecastParams:
    half_life_days: float = 14.0
    #: prior strength, in days of exposure, of the parent's rate (chosen on the Online Retail
    #: evaluation, in sample: 1 day against 7 gave MASE 1.17 against 1.79 and coverage 0.89
    #: against 0.80)
    pool_days: float = 1.0
    #: the interval's central probability (0.9: the 5 % and 95 % quantiles)
    interval: float = 0.9


@dataclass(frozen=True)
class Forecast:
    mean: float
    #: the point that minimises absolute error: 0 when no order at all is more likely than
    #: not (intermittent demand), else the log-normal median
    median: float
    low: float
    high: float
    #: the daily rate of the item and of each parent it borrowed from
    rates: tuple[float, float, float]
    exposure_days: float


@dataclass
class Forecaster:
    params: ForecastParams = field(default_factory=ForecastParams)
    #: (level, key, region) -> sums; level "item", "category" or "region"
    series: dict[tuple[str, str, str], Sums] = field(default_factory=dict)
    #: (category, region) -> the items seen there (the parent's rate is shared among them)
    members: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    #: region -> units per weekday (forgotten like the sums)
    weekdays: dict[str, list[float]] = field(default_factory=dict)

    @property
    def decay(self) -> float:
        return math.log(2) / self.params.half_life_days

    def _keys(self, item: str, category: str, region: str) -> list[tuple[str, str, str]]:
        return [("item", item, region), ("category", category, region),
                ("region", ALL, region)]

    def observe(self, item: str, category: str, region: str, t: int, units: float) -> None:
        """An order line (units > 0) or a sign of interest (units = 0: the series starts
        its exposure) in ``region`` at event time ``t``."""
        for key in reversed(self._keys(item, category, region)):   # region first
            sums = self.series.get(key)
            if sums is None:
                # a catalogue item was on sale before its first order here: it starts with the
                # exposure of its parent (an item first sold today is not a fast seller)
                parent = self.series.get(("region", ALL, region))
                sums = self.series[key] = Sums(e=parent.e, t=parent.t) if parent else Sums()
            sums.advance(t, self.decay)
            if units > 0:
                sums.add(units)
        self.members.setdefault((category, region), set()).add(item)
        if units > 0:
            profile = self.weekdays.setdefault(region, [0.0] * 7)
            profile[_weekday(t)] += units

    def profile(self, region: str) -> list[float]:
        """Weekday factors averaging 1 (flat until the region has sold something)."""
        counts = self.weekdays.get(region)
        total = sum(counts) if counts else 0.0
        if not counts or total <= 0:
            return [1.0] * 7
        return [7.0 * c / total for c in counts]

    def _rate(self, key: tuple[str, str, str], prior: float, t: int) -> tuple[float, float,
                                                                              float]:
        """(posterior daily rate, posterior shape, exposure) of a series at ``t``."""
        sums = self.series.get(key)
        u, e = 0.0, 0.0
        if sums is not None and sums.t is not None:
            days = max(t - sums.t, 0) / MS_PER_DAY
            f = math.exp(-self.decay * days)
            u, e = sums.u * f, sums.e * f + (1.0 - f) / self.decay
        k = self.params.pool_days
        shape = u + k * prior
        return shape / (e + k), shape, e

    def forecast(self, item: str, category: str, region: str, t: int, horizon_days: int
                 ) -> Forecast:
        """Units expected in the ``horizon_days`` days after ``t``, with an interval."""
        region_rate, _, _ = self._rate(("region", ALL, region), 0.0, t)
        n_cat = max(len(self.members.get((category, region), ())), 1)
        cat_rate, _, _ = self._rate(("category", category, region), region_rate, t)
        rate, shape, exposure = self._rate(("item", item, region), cat_rate / n_cat, t)
        profile = self.profile(region)
        day0 = t // MS_PER_DAY
        factor = sum(profile[_weekday((day0 + d) * MS_PER_DAY)] for d in range(1, horizon_days + 1))
        mean = rate * factor
        sums = self.series.get(("item", item, region))
        lot = sums.u2 / sums.u if sums is not None and sums.u > 0 else 1.0
        variance = mean * max(lot, 1.0) + (mean * mean / shape if shape > 0 else 0.0)
        low, high = _lognormal_interval(mean, variance, self.params.interval)
        # intermittent demand: no order at all in the horizon is likely enough to be inside
        p_none = math.exp(-mean / max(lot, 1.0)) if mean > 0 else 1.0
        if p_none >= (1 - self.params.interval) / 2:
            low = 0.0
        median = 0.0 if p_none >= 0.5 else _lognormal_median(mean, variance)
        return Forecast(mean, median, low, high, (rate, cat_rate / n_cat, region_rate),
                        exposure)

    def items(self, region: str | None = None) -> Iterable[tuple[str, str]]:
        """(item, region) of every item series."""
        return ((key, r) for level, key, r in self.series
                if level == "item" and (region is None or r == region))


def _weekday(t: int) -> int:
    return int((t // MS_PER_DAY + 3) % 7)   # 0 = Monday (1970-01-01 was a Thursday)


def _lognormal_median(mean: float, variance: float) -> float:
    return mean / math.sqrt(1.0 + variance / (mean * mean))


def _lognormal_interval(mean: float, variance: float, central: float) -> tuple[float, float]:
    if mean <= 0:
        return 0.0, 0.0
    sigma2 = math.log(1.0 + variance / (mean * mean))
    mu = math.log(mean) - sigma2 / 2
    z = NormalDist().inv_cdf(0.5 + central / 2)
    s = math.sqrt(sigma2)
    return math.exp(mu - z * s), math.exp(mu + z * s)
