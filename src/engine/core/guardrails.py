"""Price guardrails: the policy layer every price decision passes through (pure, no I/O).

The optimiser proposes; these rules dispose. In order of precedence:

1. A manual override that has not expired wins outright (the pricing team's last word).
2. No change within ``min_interval_ms`` of the item's last change (event time): a price does not
   flap with every click.
3. The competitor rule, when it is "match" or "beat": the price is not above the lowest fresh
   competitor (or that less ``beat_by``). With "model" (the default) competitors only inform the
   conversion model; with "ignore" they are not used at all.
4. The price moves at most ``max_step`` (a fraction) from the current price per change, so a
   competitor's drop is followed a step at a time.
5. The bounds always hold, whatever the step limit says: floor = max(unit cost x (1 + minimum
   margin), the catalogue's price floor, MAP), ceiling = min(the catalogue's ceiling, the list
   price when ``cap_at_list_price``). MAP is the *minimum* advertised price agreed with the
   brand, so it is a floor. If the floor is above the ceiling the terms are inconsistent and
   the price is held, with that reason.

Competitor observations are screened before they count: zero, negative or non-finite prices
and jumps beyond ``outlier_ratio`` from the competitor's last accepted price are rejected with a
reason; observations older than ``competitor_stale_ms`` are ignored, so a feed that falls
silent makes the competitor term drop out instead of pinning the price to a stale figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CENT = 0.01
#: No price above this, whatever the terms say (the `prices` contract's maximum).
MAX_PRICE = 1_000_000_000.0


@dataclass(frozen=True)
class Terms:
    """What the catalogue says about an item's price."""

    unit_cost: float | None = None
    min_margin: float = 0.0
    list_price: float | None = None
    price_floor: float | None = None
    price_ceiling: float | None = None
    map_price: float | None = None


@dataclass(frozen=True)
class Rules:
    max_step: float = 0.10
    min_interval_ms: int = 600_000
    cap_at_list_price: bool = True
    #: "model": competitors are only an input of the conversion model; "match": never above
    #: the lowest fresh competitor; "beat": below it by ``beat_by``; "ignore": not used at all
    competitor_rule: str = "model"
    beat_by: float = 0.01
    ignored_competitors: frozenset[str] = field(default_factory=frozenset)
    outlier_ratio: float = 3.0
    competitor_stale_ms: int = 86_400_000


@dataclass(frozen=True)
class Override:
    price: float
    expires_ms: int


@dataclass(frozen=True)
class Decision:
    price: float
    changed: bool
    #: why the price is what it is: "override", "held:min_interval", "held:inconsistent_terms",
    #: "held:step_below_a_cent", "competitor:match", "competitor:beat", "clamped:step",
    #: "clamped:floor", "clamped:ceiling", "proposed"
    reasons: tuple[str, ...]


def bounds(terms: Terms, rules: Rules) -> tuple[float, float]:
    """(floor, ceiling); the ceiling is ``MAX_PRICE`` when nothing else caps the price."""
    floors = [0.0]
    if terms.unit_cost is not None:
        floors.append(terms.unit_cost * (1.0 + terms.min_margin))
    floors += [p for p in (terms.price_floor, terms.map_price) if p is not None]
    ceilings = [p for p in (terms.price_ceiling,) if p is not None] + [MAX_PRICE]
    if rules.cap_at_list_price and terms.list_price is not None:
        ceilings.append(terms.list_price)
    return max(floors), min(ceilings)


def _cents_up(x: float) -> float:
    return math.ceil(round(x / CENT, 6)) * CENT


def _cents_down(x: float) -> float:
    return math.floor(round(x / CENT, 6)) * CENT


def cent_bounds(terms: Terms, rules: Rules) -> tuple[float, float]:
    """``bounds`` in whole cents a price may take: the floor rounds up (to at least a cent),
    the ceiling down; floor > ceiling means the terms are inconsistent."""
    floor, ceiling = bounds(terms, rules)
    return max(_cents_up(floor), CENT), _cents_down(ceiling)


def decide(current: float, proposed: float, terms: Terms, rules: Rules, now_ms: int,
           last_change_ms: int | None = None, override: Override | None = None,
           competitor_cap: float | None = None) -> Decision:
    """The price to charge, given the current one and the optimiser's proposal;
    ``competitor_cap`` is ``competitor_target``'s answer (None: no competitor rule applies)."""
    if override is not None and now_ms < override.expires_ms:
        price = round(override.price, 2)
        return Decision(price, price != current, ("override",))
    if last_change_ms is not None and now_ms - last_change_ms < rules.min_interval_ms:
        return Decision(current, False, ("held:min_interval",))
    floor, ceiling = cent_bounds(terms, rules)
    if floor > ceiling:
        return Decision(current, False, ("held:inconsistent_terms",))
    low = _cents_up(current * (1.0 - rules.max_step))
    high = _cents_down(current * (1.0 + rules.max_step))
    if low > high:   # a price of a few cents: no whole-cent move fits within the step
        return Decision(current, False, ("held:step_below_a_cent",))
    reasons: list[str] = []
    price = round(proposed, 2)
    if competitor_cap is not None and price > competitor_cap:
        price = _cents_down(competitor_cap)
        reasons.append(f"competitor:{rules.competitor_rule}")
    if not low <= price <= high:
        price = min(max(price, low), high)
        reasons.append("clamped:step")
    if price < floor:   # the bounds hold even when the step limit would not reach them
        price = floor
        reasons.append("clamped:floor")
    elif price > ceiling:
        price = ceiling
        reasons.append("clamped:ceiling")
    price = round(price, 2)
    return Decision(price, price != current, tuple(reasons) or ("proposed",))


# --- competitor prices -----------------------------------------------------------------------


def screen_competitor_price(price: float, last_accepted: float | None, rules: Rules
                            ) -> str | None:
    """None if the observation may count, else the reason it is rejected."""
    if not math.isfinite(price):
        return "not_finite"
    if price <= 0:
        return "not_positive"
    if last_accepted is not None and last_accepted > 0:
        ratio = price / last_accepted
        if ratio > rules.outlier_ratio or ratio < 1.0 / rules.outlier_ratio:
            return "outlier_jump"
    return None


COMPETITOR_RULES = ("model", "match", "beat", "ignore")


def lowest_competitor(observations: Mapping[str, tuple[int, float]], now_ms: int, rules: Rules
                      ) -> tuple[str, float] | None:
    """The lowest fresh accepted observation as (competitor, price), from observations
    (competitor -> (event time, price)); None when the rule is "ignore" or nothing is fresh
    (a feed that fell silent drops out instead of pinning the price to a stale figure)."""
    if rules.competitor_rule == "ignore":
        return None
    fresh: Iterable[tuple[float, str]] = (
        (price, name) for name, (t, price) in observations.items()
        if name not in rules.ignored_competitors and 0 <= now_ms - t <= rules.competitor_stale_ms)
    lowest = min(fresh, default=None)
    return None if lowest is None else (lowest[1], lowest[0])


def competitor_target(observations: Mapping[str, tuple[int, float]], now_ms: int, rules: Rules
                      ) -> float | None:
    """The cap the competitor rule puts on the price: the lowest fresh competitor ("match"),
    less ``beat_by`` ("beat"); None for "model" and "ignore", or when nothing is fresh."""
    if rules.competitor_rule not in ("match", "beat"):
        return None
    lowest = lowest_competitor(observations, now_ms, rules)
    if lowest is None:
        return None
    return lowest[1] * (1.0 - rules.beat_by) if rules.competitor_rule == "beat" else lowest[1]
