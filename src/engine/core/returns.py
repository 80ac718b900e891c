"""Returning customers (pure): BG/NBD, from each customer's purchase history.

Per customer, three numbers that every purchase updates online (in event time, exactly once when
stored with the orders' watermark): ``x`` repeat purchases (days with a purchase after the
first), ``t_x`` the time of the last purchase and the first purchase's time (so ``T``, the
customer's age, is known at any moment). The population has four parameters (Fader, Hardie and
Lee, "Counting your customers the easy way", 2005): while alive, a customer buys at a rate drawn
from Gamma(r, alpha); after each purchase they leave for good with a probability drawn from
Beta(a, b). ``fit`` estimates them by maximum likelihood (Nelder-Mead on their logarithms); the
per-customer answers are closed forms:

- ``expected_purchases(t)``: purchases expected in the next ``t``;
- ``p_alive``: the probability the customer has not left;
- ``p_buy_within(h)``: the probability of at least one purchase within ``h``;
- ``expected_wait``: the expected time to the next purchase, if they buy again.

Times are in weeks here (the model is scale-free; callers convert).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MS_PER_WEEK = 7 * 86_400_000


@dataclass
class Customer:
    """Sufficient statistics of one customer (times in ms)."""

    first_ms: int
    last_ms: int
    x: int = 0

    def purchase(self, t_ms: int, same_day_ms: int = 86_400_000) -> None:
        """Count a purchase; purchases within a day of the last one are one transaction."""
        if t_ms < self.first_ms:   # a late event older than the first: it becomes the first
            self.x += 1
            self.first_ms = t_ms
        elif t_ms - self.last_ms >= same_day_ms:
            self.x += 1
            self.last_ms = t_ms

    def weeks(self, now_ms: int) -> tuple[int, float, float]:
        """(x, t_x, T) in weeks since the first purchase."""
        t_x = (self.last_ms - self.first_ms) / MS_PER_WEEK
        return self.x, t_x, max((now_ms - self.first_ms) / MS_PER_WEEK, t_x)


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float

    def log_likelihood(self, x: int, t_x: float, T: float) -> float:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        common = math.lgamma(r + x) - math.lgamma(r) + r * math.log(alpha)
        beta_ab = _lbeta(a, b)
        first = _lbeta(a, b + x) - beta_ab - (r + x) * math.log(alpha + T)
        if x == 0:
            return common + first
        second = _lbeta(a + 1, b + x - 1) - beta_ab - (r + x) * math.log(alpha + t_x)
        high = max(first, second)
        return common + high + math.log(math.exp(first - high) + math.exp(second - high))

    def _log_dropout_odds(self, x: int, t_x: float, T: float) -> float:
        """log of (a / (b + x - 1)) ((alpha + T) / (alpha + t_x))^(r + x): the odds that a
        customer with repeat purchases has left (in logs: it overflows for busy customers
        long silent)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        return (math.log(a) - math.log(b + x - 1)
                + (r + x) * math.log((alpha + T) / (alpha + t_x)))

    def p_alive(self, x: int, t_x: float, T: float) -> float:
        if x == 0:
            return 1.0
        return _inverse_one_plus_exp(self._log_dropout_odds(x, t_x, T))

    def expected_purchases(self, t: float, x: int, t_x: float, T: float) -> float:
        """E[purchases in (T, T + t] | x, t_x, T]."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        if abs(a - 1.0) < 1e-9:   # the closed form's one singularity: step off it
            a = 1.0 + 1e-6
        z = t / (alpha + T + t)
        # ((alpha + T) / (alpha + T + t))^(r + x) 2F1(r + x, b + x; a + b + x - 1; z), by
        # Euler's transformation (1 - z)^(a - 1) 2F1(a + b - 1 - r, a - 1; a + b + x - 1; z): a
        # series whose terms do not grow with x, so it converges for busy customers too
        hyp = _hyp2f1(a + b - 1 - r, a - 1, a + b + x - 1, z)
        lead = (a + b + x - 1) / (a - 1)
        body = 1.0 - math.exp((a - 1) * math.log1p(-z)) * hyp
        if x == 0:
            return lead * body
        return lead * body * _inverse_one_plus_exp(self._log_dropout_odds(x, t_x, T))

    def p_buy_within(self, h: float, x: int, t_x: float, T: float) -> float:
        """P(at least one purchase within h | alive now) x P(alive now)."""
        r, alpha = self.r, self.alpha
        return self.p_alive(x, t_x, T) * (
            1.0 - math.exp((r + x) * math.log((alpha + T) / (alpha + T + h))))

    def expected_wait(self, x: int, T: float) -> float | None:
        """Mean time to the next purchase of a customer who is alive (Gamma-exponential)."""
        shape = self.r + x
        return (self.alpha + T) / (shape - 1) if shape > 1 else None


def fit(customers: Sequence[tuple[int, float, float]], start: BGNBD | None = None,
        iterations: int = 2000) -> BGNBD:
    """Maximum-likelihood parameters for (x, t_x, T) per customer (times rounded to the day:
    customers with equal statistics are one weighted row, so a large population costs
    little)."""
    counts: dict[tuple[int, float, float], int] = {}
    for x, t_x, T in customers:   # to the day: customers alike are one row
        c = (x, round(t_x * 7) / 7, round(T * 7) / 7)
        counts[c] = counts.get(c, 0) + 1
    rows = list(counts.items())

    def loss(logs: Sequence[float]) -> float:
        try:
            model = BGNBD(*(math.exp(v) for v in logs))
            return -sum(n * model.log_likelihood(*c) for c, n in rows)
        except (ValueError, OverflowError, ZeroDivisionError):
            return math.inf

    s = start or BGNBD(0.5, 5.0, 0.8, 2.5)
    best = _nelder_mead(loss, [math.log(v) for v in (s.r, s.alpha, s.a, s.b)], iterations)
    return BGNBD(*(math.exp(v) for v in best))


def _inverse_one_plus_exp(v: float) -> float:
    """1 / (1 + exp(v)), without overflow."""
    if v > 0:
        e = math.exp(-v)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(v))


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _hyp2f1(a: float, b: float, c: float, z: float, tol: float = 1e-12) -> float:
    """Gauss's hypergeometric series; ``0 <= z < 1`` here, so it converges."""
    term, total = 1.0, 1.0
    for n in range(10_000):
        term *= (a + n) * (b + n) / ((c + n) * (n + 1)) * z
        total += term
        if abs(term) < tol * abs(total):
            break
    return total


def _nelder_mead(f: Callable[[Sequence[float]], float], x0: list[float], iterations: int,
                 step: float = 0.5, tol: float = 1e-9) -> list[float]:
    n = len(x0)
    simplex = [list(x0)] + [[v + (step if i == j else 0.0) for j, v in enumerate(x0)]
                            for i in range(n)]
    values = [f(p) for p in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if abs(values[-1] - values[0]) <= tol * (abs(values[0]) + tol):
            break
        centroid = [sum(p[i] for p in simplex[:-1]) / n for i in range(n)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst, strict=True)]
        fr = f(reflected)
        if fr < values[0]:
            expanded = [c + 2 * (c - w) for c, w in zip(centroid, worst, strict=True)]
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst, strict=True)]
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:   # shrink towards the best
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (v - b) for b, v in zip(best, p, strict=True)]
                                    for p in simplex[1:]]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(n + 1), key=values.__getitem__)]
