"""The returning-customer model as pure functions (engine.core.returns)."""

from __future__ import annotations

import math
import random

import pytest

from engine.core.returns import BGNBD, MS_PER_WEEK, Customer, fit

DAY = 86_400_000


def test_purchases_on_one_day_are_one_transaction_and_late_events_count() -> None:
    c = Customer(first_ms=10 * DAY, last_ms=10 * DAY)
    c.purchase(10 * DAY + 3_600_000)          # same day
    c.purchase(17 * DAY)
    c.purchase(3 * DAY)                       # older than the first: it becomes the first
    assert c.x == 2 and c.first_ms == 3 * DAY and c.last_ms == 17 * DAY
    x, t_x, T = c.weeks(31 * DAY)
    assert (x, t_x, T) == (2, 2.0, 4.0)


def test_the_closed_forms_behave() -> None:
    m = BGNBD(r=0.25, alpha=4.4, a=0.8, b=2.4)
    assert m.p_alive(0, 0.0, 30.0) == 1.0
    # a customer who bought often and recently is more likely alive than one gone quiet
    assert m.p_alive(5, 29.0, 30.0) > m.p_alive(5, 5.0, 30.0)
    assert m.expected_purchases(39, 5, 29.0, 30.0) > m.expected_purchases(39, 5, 5.0, 30.0)
    assert m.expected_purchases(39, 0, 0.0, 30.0) < m.expected_purchases(39, 1, 25.0, 30.0)
    assert 0 < m.p_buy_within(4, 3, 20.0, 30.0) < m.p_alive(3, 20.0, 30.0)
    assert m.expected_wait(3, 30.0) == pytest.approx((4.4 + 30) / (0.25 + 3 - 1))


def test_fit_recovers_the_parameters_of_simulated_customers() -> None:
    truth = BGNBD(r=0.5, alpha=6.0, a=1.2, b=3.0)
    rng = random.Random(7)
    rows = []
    for _ in range(4000):
        lam = rng.gammavariate(truth.r, 1 / truth.alpha)
        p = rng.betavariate(truth.a, truth.b)
        T, t, x, t_x = 39.0, 0.0, 0, 0.0
        while True:
            t += rng.expovariate(lam) if lam > 0 else T + 1
            if t > T:
                break
            x, t_x = x + 1, t
            if rng.random() < p:
                break
        rows.append((x, round(t_x, 3), T))
    got = fit(rows)
    assert got.r == pytest.approx(truth.r, rel=0.25)
    assert got.alpha == pytest.approx(truth.alpha, rel=0.35)
    assert got.a == pytest.approx(truth.a, rel=0.5) and got.b == pytest.approx(truth.b, rel=0.5)
    assert MS_PER_WEEK == 7 * DAY


def test_busy_and_long_silent_customers_stay_finite() -> None:
    """Hundreds of repeat purchases (a wholesale customer) over horizons of years: the odds of
    having left are taken in logs and the series is Euler-transformed, so nothing overflows."""
    model = BGNBD(0.25, 4.77, 0.75, 2.22)
    silent = model.p_alive(400, 60.0, 530.0)            # busy, then nine years of silence
    assert 0.0 <= silent < 1e-100
    busy = model.expected_purchases(522.9, 500, 150.0, 150.0)   # ten years ahead
    assert math.isfinite(busy) and 400 < busy < 2000
    assert math.isfinite(model.expected_purchases(522.9, 1000, 150.0, 150.0))
    # the paper's example (its fitted parameters): x = 2, t_x = 30.43, T = 38.86 weeks expects
    # 1.226 purchases in the next 39 weeks
    published = BGNBD(0.243, 4.414, 0.793, 2.426)
    assert published.expected_purchases(39, 2, 30.43, 38.86) == pytest.approx(1.226, abs=0.002)
