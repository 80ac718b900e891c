"""``engine evaluate returns``: the returning-customer model on the CDNOW purchases.

The usual split of this data set (Fader, Hardie and Lee 2005): the first 39 weeks (1997-01-01 to
1997-09-30) to learn, the next 39 to test. Every purchase of the calibration period goes through
``core.returns.Customer.purchase``, the online update the live engine applies per order (several
purchases on one day are one transaction); the population's BG/NBD parameters are fitted on the
calibration statistics, and each customer's expected number of transactions in the holdout is
compared with what they did.

Baseline, in the same run: the naive rate, x / T (repeat transactions per week of the customer's
calibration life) times the holdout length. Score: mean absolute error per customer; the totals
are reported too.
"""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path
from typing import Any

from engine.core.returns import MS_PER_WEEK, Customer, fit
from engine.errors import ReplayError

START = dt.datetime(1997, 1, 1, tzinfo=dt.UTC)
WEEKS = 39


def _ms(day: str) -> int:
    d = dt.datetime.strptime(day, "%Y%m%d").replace(tzinfo=dt.UTC)
    return int(d.timestamp() * 1000)


def read_cdnow(path: Path) -> list[tuple[str, int]]:
    """(customer, purchase day in ms) per row, in file order."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt") as f:
            for number, line in enumerate(f, 1):
                parts = line.split()
                if not parts or not parts[0].isdigit():
                    continue   # the header
                if len(parts) < 2:
                    raise ReplayError(f"{path}:{number}: expected customer and date")
                rows.append((parts[0], _ms(parts[1])))
    except (OSError, ValueError) as exc:
        raise ReplayError(f"{path}: cannot read CDNOW data: {exc}") from None
    if not rows:
        raise ReplayError(f"{path}: no purchases")
    return rows


def evaluate(path: Path, weeks: int = WEEKS) -> dict[str, Any]:
    start_ms = int(START.timestamp() * 1000)
    cal_end = start_ms + weeks * MS_PER_WEEK
    hold_end = cal_end + weeks * MS_PER_WEEK
    customers: dict[str, Customer] = {}
    holdout: dict[str, set[int]] = {}
    for customer, t in sorted(read_cdnow(path), key=lambda r: r[1]):
        if t < cal_end:
            state = customers.get(customer)
            if state is None:
                customers[customer] = Customer(first_ms=t, last_ms=t)
            else:
                state.purchase(t)
        elif t < hold_end and customer in customers:
            holdout.setdefault(customer, set()).add(t)
    stats = {c: s.weeks(cal_end) for c, s in customers.items()}
    model = fit(list(stats.values()))
    horizon = float(weeks)
    engine_err = naive_err = 0.0
    engine_total = naive_total = actual_total = 0.0
    for c, (x, t_x, T) in stats.items():
        actual = len(holdout.get(c, ()))
        predicted = model.expected_purchases(horizon, x, t_x, T)
        naive = x / T * horizon if T > 0 else 0.0
        engine_err += abs(predicted - actual)
        naive_err += abs(naive - actual)
        engine_total += predicted
        naive_total += naive
        actual_total += actual
    n = len(stats)
    return {
        "engine": {"mae": round(engine_err / n, 4), "predicted_total": round(engine_total, 1)},
        "baselines": {"naive_rate": {"mae": round(naive_err / n, 4),
                                     "predicted_total": round(naive_total, 1)}},
        "actual_total": int(actual_total), "customers": n, "weeks": weeks,
        "parameters": {"r": round(model.r, 4), "alpha": round(model.alpha, 4),
                       "a": round(model.a, 4), "b": round(model.b, 4)},
        "data": str(path),
    }


def render(result: dict[str, Any]) -> str:
    p = result["parameters"]
    e, b = result["engine"], result["baselines"]["naive_rate"]
    return "\n".join([
        f"Returning customers, CDNOW: {result['customers']:,} customers, "
        f"{result['weeks']} weeks to learn, {result['weeks']} to test "
        f"(BG/NBD r={p['r']}, alpha={p['alpha']}, a={p['a']}, b={p['b']})",
        f"{'model':<14}{'MAE':>8}{'predicted':>12}{'actual':>10}",
        f"{'engine':<14}{e['mae']:>8}{e['predicted_total']:>12,.0f}"
        f"{result['actual_total']:>10,}",
        f"{'naive_rate':<14}{b['mae']:>8}{b['predicted_total']:>12,.0f}"
        f"{result['actual_total']:>10,}",
    ])
