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

Leading indicators. Views and cart adds come before orders. Per item x region the forecaster
keeps their short-memory sums (half-life ``lead_half_life_hours``), and per region how many units
sell per view and per cart add (long memory). When an item's current interest implies a higher
rate than its sales so far (``max(units/view x view rate, units/cart x cart rate)``), the excess
is added for as long as interest is expected to last (it decays with the short half-life):

    mean += (interest - rate) x tau x (1 - exp(-H / tau)),   tau = lead half-life / ln 2

so a burst of views and cart adds raises the next hours' forecast at once, and a long horizon
by no more than about ``tau`` days of the excess.

Everything is a function of the events and their event times, so a replay, the evaluator and
the live engine agree; updates cost a few dictionary operations per order line. ``dump`` and
``load`` give each series as a short list of numbers (JSON in Redis, no pickles), exact: a
float survives the JSON round trip bit for bit, so a replay cut into other batches decides the
same.
"""

from __future__ import annotations

import functools
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

    def at(self, t: int, decay_per_day: float) -> tuple[float, float]:
        """(units, exposure) as of ``t`` without changing the sums."""
        if self.t is None:
            return 0.0, 0.0
        days = max(t - self.t, 0) / MS_PER_DAY
        f = math.exp(-decay_per_day * days)
        return self.u * f, self.e * f + (1.0 - f) / decay_per_day

    def dump(self) -> list[float]:
        return [self.u, self.u2, self.e, self.t if self.t is not None else -1]

    @classmethod
    def load(cls, row: list[float]) -> Sums:
        return cls(row[0], row[1], row[2], int(row[3]) if row[3] >= 0 else None)


@dataclass
class Interest:
    """Views and cart adds of one series (or, with ``u``, of a region: units sold alongside),
    forgotten in event time."""

    v: float = 0.0
    c: float = 0.0
    u: float = 0.0
    t: int | None = None

    def advance(self, t: int, decay_per_day: float) -> None:
        if self.t is not None and t > self.t:
            f = math.exp(-decay_per_day * (t - self.t) / MS_PER_DAY)
            self.v *= f
            self.c *= f
            self.u *= f
        if self.t is None or t > self.t:
            self.t = t

    def at(self, t: int, decay_per_day: float) -> tuple[float, float, float]:
        if self.t is None:
            return 0.0, 0.0, 0.0
        f = math.exp(-decay_per_day * max(t - self.t, 0) / MS_PER_DAY)
        return self.v * f, self.c * f, self.u * f

    def dump(self) -> list[float]:
        return [self.v, self.c, self.u, self.t if self.t is not None else -1]

    @classmethod
    def load(cls, row: list[float]) -> Interest:
        return cls(row[0], row[1], row[2], int(row[3]) if row[3] >= 0 else None)


@dataclass(frozen=True)
class ForecastParams:
    half_life_days: float = 14.0
    #: prior strength, in days of exposure, of the parent's rate (chosen on the Online Retail
    #: evaluation, in sample: 1 day against 7 gave MASE 1.17 against 1.79 and coverage 0.89
    #: against 0.80)
    pool_days: float = 1.0
    #: the interval's central probability (0.9: the 5 % and 95 % quantiles)
    interval: float = 0.9
    #: pseudo-days of the region's average day added to each weekday of its profile
    profile_prior_days: float = 1.0
    #: leading indicators: how fast an item's views and cart adds are forgotten (0 = off)
    lead_half_life_hours: float = 12.0


@dataclass(frozen=True)
class Forecast:
    mean: float
    #: of the units in the horizon (Poisson arrivals, lot sizes and the rate's uncertainty)
    variance: float
    #: the point that minimises absolute error: 0 when no order at all is more likely than
    #: not (intermittent demand), else the log-normal median
    median: float
    low: float
    high: float
    #: the daily rate of the item and of each parent it borrowed from
    rates: tuple[float, float, float]
    exposure_days: float
    #: units added by current interest (views, cart adds) above the rate of past sales
    lead_units: float = 0.0
    #: the probability of no order at all in the horizon
    p_none: float = 1.0


@dataclass
class Forecaster:
    params: ForecastParams = field(default_factory=ForecastParams)
    #: (level, key, region) -> sums; level "item", "category" or "region"
    series: dict[tuple[str, str, str], Sums] = field(default_factory=dict)
    #: (category, region) -> how many items have a series there; (ALL, region) -> how many
    #: categories (a parent's rate is shared among its children)
    members: dict[tuple[str, str], int] = field(default_factory=dict)
    #: region -> units sold on each weekday (cumulative: the profile is a long-run shape)
    weekdays: dict[str, list[float]] = field(default_factory=dict)
    #: (item, region) -> short-memory views and cart adds; (ALL, region) -> the region's views,
    #: cart adds and units with long memory (units per view and per cart add)
    interest: dict[tuple[str, str], Interest] = field(default_factory=dict)

    @functools.cached_property
    def decay(self) -> float:
        return math.log(2) / self.params.half_life_days

    @functools.cached_property
    def lead_decay(self) -> float:
        h = self.params.lead_half_life_hours
        return math.log(2) / (h / 24.0) if h > 0 else 0.0

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
                if key[0] != "region":   # count the items of a category, the categories
                    parent_key = (category, region) if key[0] == "item" else (ALL, region)
                    self.members[parent_key] = self.members.get(parent_key, 0) + 1
            sums.advance(t, self.decay)
            if units > 0:
                sums.add(units)
        if units > 0:
            profile = self.weekdays.setdefault(region, [0.0] * 7)
            profile[_weekday(t)] += units
            if self.lead_decay:
                self._region_interest(region, t).u += units

    def recategorise(self, item: str, old: str, new: str, regions: Iterable[str]) -> None:
        """The catalogue moved ``item`` from category ``old`` to ``new`` (or named it for the
        first time): its membership moves, so each category's rate is shared among its own
        items (its past units stay in the old category's sums, which forget them in time)."""
        for region in regions:
            if ("item", item, region) not in self.series:
                continue
            if self.members.get((old, region), 0) > 0:
                self.members[(old, region)] -= 1
            key = ("category", new, region)
            if key not in self.series:
                parent = self.series.get(("region", ALL, region))
                self.series[key] = Sums(e=parent.e, t=parent.t) if parent else Sums()
                self.members[(ALL, region)] = self.members.get((ALL, region), 0) + 1
            self.members[(new, region)] = self.members.get((new, region), 0) + 1

    def interested(self, item: str, category: str, region: str, t: int, views: float = 0.0,
                   carts: float = 0.0) -> None:
        """Views and cart adds of ``item`` in ``region`` at ``t`` (leading indicators); the
        item's series starts its exposure if it had none."""
        if not self.lead_decay:
            return
        if ("item", item, region) not in self.series:
            self.observe(item, category, region, t, 0)
        own = self.interest.get((item, region))
        if own is None:
            own = self.interest[(item, region)] = Interest()
        own.advance(t, self.lead_decay)
        own.v += views
        own.c += carts
        reg = self._region_interest(region, t)
        reg.v += views
        reg.c += carts

    def _region_interest(self, region: str, t: int) -> Interest:
        reg = self.interest.get((ALL, region))
        if reg is None:
            reg = self.interest[(ALL, region)] = Interest()
        reg.advance(t, self.decay)
        return reg

    def interest_rate(self, item: str, region: str, t: int) -> float:
        """The daily rate of units the item's current views and cart adds imply."""
        own, reg = self.interest.get((item, region)), self.interest.get((ALL, region))
        if not self.lead_decay or own is None or reg is None:
            return 0.0
        v, c, _ = own.at(t, self.lead_decay)
        rv, rc, ru = reg.at(t, self.decay)
        # a forgotten sum of events is (rate / decay) at equilibrium: rate = sum x decay
        per_view = ru / rv if rv > 0 else 0.0
        per_cart = ru / rc if rc > 0 else 0.0
        return max(per_view * v, per_cart * c) * self.lead_decay

    def profile(self, region: str, t: int | None = None) -> list[float]:
        """Weekday factors averaging 1: each weekday's units plus ``profile_prior_days`` of the
        region's average day (at ``t``), so a region that has sold on two weekdays so far does
        not forecast nothing for the other five; flat until the region has sold something."""
        counts = self.weekdays.get(region)
        total = sum(counts) if counts else 0.0
        if not counts or total <= 0:
            return [1.0] * 7
        prior = 0.0
        sums = self.series.get(("region", ALL, region))
        if sums is not None and t is not None:
            u, e = sums.at(t, self.decay)
            prior = self.params.profile_prior_days * u / e if e > 0 else total / 7.0
        return [7.0 * (c + prior) / (total + 7.0 * prior) for c in counts]

    def _rate(self, key: tuple[str, str, str], prior: float, t: int) -> tuple[float, float,
                                                                              float]:
        """(posterior daily rate, posterior shape, exposure) of a series at ``t``."""
        sums = self.series.get(key)
        u, e = sums.at(t, self.decay) if sums is not None else (0.0, 0.0)
        k = self.params.pool_days
        shape = u + k * prior
        return shape / (e + k), shape, e

    def forecast(self, item: str, category: str, region: str, t: int, horizon_days: float,
                 leading: bool = True) -> Forecast:
        """Units expected in the ``horizon_days`` days after ``t`` (whole days from the day
        after ``t``'s; a fraction of a day counts from ``t`` itself), with an interval."""
        region_rate, _, _ = self._rate(("region", ALL, region), 0.0, t)
        # a parent's rate is shared among its children: the region's among its categories,
        # a category's among its items
        n_cats = max(self.members.get((ALL, region), 0), 1)
        n_cat = max(self.members.get((category, region), 0), 1)
        cat_rate, _, _ = self._rate(("category", category, region), region_rate / n_cats, t)
        rate, shape, exposure = self._rate(("item", item, region), cat_rate / n_cat, t)
        profile = self.profile(region, t)
        day0 = t // MS_PER_DAY
        whole = int(horizon_days)
        factor = sum(profile[_weekday((day0 + d) * MS_PER_DAY)] for d in range(1, whole + 1))
        factor += (horizon_days - whole) * profile[_weekday(t)]
        mean = rate * factor
        lead = 0.0
        if leading and self.lead_decay:
            excess = self.interest_rate(item, region, t) - rate
            if excess > 0:
                tau = 1.0 / self.lead_decay
                lead = excess * tau * (1.0 - math.exp(-horizon_days / tau))
                mean += lead
        sums = self.series.get(("item", item, region))
        lot = sums.u2 / sums.u if sums is not None and sums.u > 0 else 1.0
        variance = mean * max(lot, 1.0) + (mean * mean / shape if shape > 0 else 0.0)
        low, high = _lognormal_interval(mean, variance, self.params.interval)
        # intermittent demand: no order at all in the horizon is likely enough to be inside
        p_none = math.exp(-mean / max(lot, 1.0)) if mean > 0 else 1.0
        if p_none >= (1 - self.params.interval) / 2:
            low = 0.0
        median = 0.0 if p_none >= 0.5 else _lognormal_median(mean, variance)
        return Forecast(mean, variance, median, low, high, (rate, cat_rate / n_cat, region_rate),
                        exposure, lead, p_none)


def lognormal_quantile(mean: float, variance: float, p: float) -> float:
    """The ``p`` quantile of the log-normal with this mean and variance (0 when mean is 0)."""
    if mean <= 0:
        return 0.0
    sigma2 = math.log(1.0 + variance / mean / mean)
    return math.exp(math.log(mean) - sigma2 / 2 + NormalDist().inv_cdf(p) * math.sqrt(sigma2))


def lognormal_exceeds(mean: float, variance: float, level: float) -> float:
    """P(X > level) for the log-normal with this mean and variance."""
    if mean <= 0:
        return 0.0
    if level <= 0:
        return 1.0
    sigma2 = math.log(1.0 + variance / mean / mean)
    mu = math.log(mean) - sigma2 / 2
    return 1.0 - NormalDist().cdf((math.log(level) - mu) / math.sqrt(sigma2))


def _weekday(t: int) -> int:
    return int((t // MS_PER_DAY + 3) % 7)   # 0 = Monday (1970-01-01 was a Thursday)


def _lognormal_median(mean: float, variance: float) -> float:
    return mean / math.sqrt(1.0 + variance / mean / mean)


def _lognormal_interval(mean: float, variance: float, central: float) -> tuple[float, float]:
    if mean <= 0:
        return 0.0, 0.0
    sigma2 = math.log(1.0 + variance / mean / mean)
    mu = math.log(mean) - sigma2 / 2
    z = NormalDist().inv_cdf(0.5 + central / 2)
    s = math.sqrt(sigma2)
    return math.exp(mu - z * s), math.exp(mu + z * s)
