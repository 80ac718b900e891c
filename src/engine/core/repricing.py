"""Repricing, the live decision per item (pure: plain data in, state and price changes out).

Demand signals arrive keyed by user (clicks, carts, orders) and competitor, catalogue and stock
signals keyed by item, while a price is per item. So the worker first turns every input event
into item-keyed *price signals* (``signals_for``), forwarded on the internal topic
``price-signals``; the pricing stage then feeds one item's signals, in order, to
``Repricer.step`` with the item's state (``ItemPricing``) and its category's conversion model.

What a step does:

- ``catalog``: the item's terms (cost, list price, margin, bounds, MAP), then a decision; the
  first decision publishes the list price (kept within the bounds) as the item's first price.
- ``competitor``: screened (``guardrails.screen_competitor_price``; a different currency is
  rejected too); an accepted price counts, then a decision. A jump beyond the outlier ratio is
  rejected with a reason unless the same new level comes ``outlier_confirmations`` times in a
  row (a real change of the rival's price, not a typo).
- ``view`` / ``purchase``: the conversion model learns (a view is a negative, a purchase a
  positive, at the price shown), the nearest price point counts it, and the item's decayed
  daily rates move; a decision follows at most every ``reprice_interval``.
- ``cart`` / ``return``: counted (shown in the reason), no learning.
- ``stock``: the centre's on-hand level (stock pressure), then a decision.
- ``override`` / ``override_clear``: the pricing team's price with an expiry; an unexpired
  override always wins, and the first signal after its expiry hands the price back.

A decision proposes a price by Thompson sampling over the item's price points
(``core.pricing``), then the guardrails (``core.guardrails``) dispose. A change within the
minimum interval is not made but remembered (``pending``), and made by the first signal after
it. Every change carries a deterministic decision id and a reason (the trigger, the competitor
gap, demand, stock and the guardrails that bound it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from engine.core.guardrails import (
    CENT,
    Override,
    Rules,
    Terms,
    cent_bounds,
    competitor_target,
    decide,
    lowest_competitor,
    screen_competitor_price,
)
from engine.core.pricing import (
    ConversionModel,
    PricingParams,
    calibrated_prior,
    choose_price,
    decision_id,
    decision_seed,
    features,
    nearest_arm,
    price_arms,
)

MS_PER_DAY = 86_400_000
#: Kinds of price signal (streams/schemas/price-signals.v1.json).
SIGNAL_KINDS = ("catalog", "competitor", "stock", "view", "cart", "purchase", "return",
                "override", "override_clear")
#: Rejected competitor observations kept per item (shown by GET /v1/items/{id}/price).
REJECTIONS_KEPT = 5
#: A repeated "outlier" within this fraction of the first counts as the same new level.
CONFIRM_TOLERANCE = 0.05
_TERM_FIELDS = ("unit_cost", "min_margin", "list_price", "price_floor", "price_ceiling",
                "map_price")

Signal = dict[str, Any]
#: What each kind needs beyond item, kind and time (the schema leaves this to the stage).
REQUIRED_FIELDS = {"competitor": ("competitor", "price"), "stock": ("dc", "on_hand"),
                   "override": ("price", "expires_ms"), "catalog": ("list_price",)}
MALFORMED = "malformed_signal"


# --- input events -> price signals ----------------------------------------------------------


def signals_for(topic: str, event: Mapping[str, Any]) -> list[Signal]:
    """The price signals one valid input event implies, each with its ``item_id`` (the key of
    ``price-signals``), ``kind`` and ``event_time_ms``; the worker adds the source position."""
    t = event["event_time_ms"]
    out: list[Signal] = []
    if topic == "clicks" and event["event_type"] == "view" and "item_id" in event:
        out.append({"item_id": event["item_id"], "kind": "view", "quantity": 1,
                    **_opt(event, "price", "currency", "region")})
    elif topic == "carts" and event["event_type"] == "add" and "item_id" in event:
        out.append({"item_id": event["item_id"], "kind": "cart",
                    "quantity": int(event["quantity"]), **_opt(event, "region")})
    elif topic == "orders":
        kind = "return" if event["event_type"] == "return" else "purchase"
        for line in event["lines"]:
            out.append({"item_id": line["item_id"], "kind": kind,
                        "quantity": int(line["quantity"]), "price": line["unit_price"],
                        **_opt(event, "currency", "region")})
    elif topic == "competitor-prices":
        out.append({"item_id": event["item_id"], "kind": "competitor",
                    "competitor": event["competitor"], "price": event["price"],
                    **_opt(event, "currency")})
    elif topic == "inventory":
        out.append({"item_id": event["item_id"], "kind": "stock", "dc": event["dc"],
                    "on_hand": int(event["on_hand"]),
                    "in_transit": int(event.get("in_transit", 0))})
    elif topic == "catalog":
        out.append({"item_id": event["item_id"], "kind": "catalog",
                    **_opt(event, "category", "currency", *_TERM_FIELDS)})
    for signal in out:
        signal["event_time_ms"] = t
    return out


def _opt(event: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {n: event[n] for n in names if event.get(n) is not None}


# --- the item's state -----------------------------------------------------------------------


@dataclass
class ItemPricing:
    """One item's pricing state; ``as_dict``/``from_dict`` round-trip it through Redis as
    JSON (numbers and strings only)."""

    category: str = ""
    currency: str = ""
    terms: dict[str, float] = field(default_factory=dict)
    price: float | None = None
    changed_ms: int | None = None
    decided_ms: int | None = None
    #: a trigger held back by the minimum interval, decided by the first signal after it
    pending: str | None = None
    #: the item's own weight in its category's conversion model
    item_weight: float = 0.0
    #: price point ("12.50") -> [views, purchases] seen there
    arms: dict[str, list[float]] = field(default_factory=dict)
    #: views and units, decayed with a one-day time constant, as of ``rate_ms``
    views: float = 0.0
    units: float = 0.0
    first_ms: int | None = None
    rate_ms: int | None = None
    carts: int = 0
    returns: int = 0
    #: competitor -> [event time, accepted price]
    competitors: dict[str, list[float]] = field(default_factory=dict)
    #: competitor -> [suspect price, times seen in a row]
    suspects: dict[str, list[float]] = field(default_factory=dict)
    #: the latest rejected observations: [event time, competitor, price, reason]
    rejected: list[list[Any]] = field(default_factory=list)
    #: centre -> on hand
    stock: dict[str, int] = field(default_factory=dict)
    #: [price, expires_ms, set_by] of the pricing team's override
    override: list[Any] | None = None
    last_decision: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Shallow (the values are JSON already): for serialising at once, not for keeping."""
        return {name: getattr(self, name) for name in _STATE_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemPricing:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def set_terms(self, terms: dict[str, float]) -> None:
        self.terms = terms
        self.__dict__.pop("guard_terms", None)

    @property
    def list_price(self) -> float | None:
        return self.terms.get("list_price")

    @functools.cached_property
    def guard_terms(self) -> Terms:
        """The terms as the guardrails take them (cached; ``set_terms`` renews it)."""
        t = self.terms
        return Terms(unit_cost=t.get("unit_cost"), min_margin=t.get("min_margin", 0.0),
                     list_price=t.get("list_price"), price_floor=t.get("price_floor"),
                     price_ceiling=t.get("price_ceiling"), map_price=t.get("map_price"))

    def decay_to(self, t: int) -> None:
        if self.first_ms is None:
            self.first_ms = self.rate_ms = t
        elif self.rate_ms is not None and t > self.rate_ms:
            f = math.exp(-(t - self.rate_ms) / MS_PER_DAY)
            self.views *= f
            self.units *= f
            self.rate_ms = t

    def add_rate(self, t: int, views: float = 0.0, units: float = 0.0) -> None:
        self.decay_to(t)
        # a late event (before rate_ms) counts as much as it would have decayed by now
        f = math.exp(-max((self.rate_ms or t) - t, 0) / MS_PER_DAY)
        self.views += views * f
        self.units += units * f

    def per_day(self, t: int) -> tuple[float, float]:
        """(views, units) a day: the decayed counts over the share of a day's time constant
        the item has been observed (a new item is not taken for a slow one)."""
        self.decay_to(t)
        age = max(t - (self.first_ms if self.first_ms is not None else t), 0)
        seen = max(1.0 - math.exp(-age / MS_PER_DAY), 1.0 / 24)
        return self.views / seen, self.units / seen


_STATE_FIELDS = tuple(f.name for f in fields(ItemPricing))


def _arm_key(price: float) -> str:
    return f"{price:.2f}"


# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PricingConfig:
    rules: Rules
    params: PricingParams
    arm_spacing: float = 0.1
    arm_levels: int = 4
    reprice_interval_ms: int = 600_000
    outlier_confirmations: int = 3
    low_cover_days: float = 3.0
    high_cover_days: float = 90.0
    currency: str = "USD"
    model_version: str = "price-ts-logreg/1"


@dataclass(frozen=True)
class Outcome:
    """What a step produced: a price change to publish, and/or a rejected observation."""

    change: dict[str, Any] | None = None
    rejected: str | None = None


class Repricer:
    def __init__(self, config: PricingConfig) -> None:
        self.c = config

    def step(self, item: str, st: ItemPricing, model: ConversionModel, signal: Signal,
             rules: Rules | None = None) -> Outcome:
        """Apply one signal to ``st`` and ``model`` (both updated in place)."""
        rules = rules or self.c.rules
        t = int(signal["event_time_ms"])
        kind = signal["kind"]
        if any(signal.get(f) is None for f in REQUIRED_FIELDS.get(kind, ())):
            return Outcome(None, MALFORMED)
        trigger: str | None = None
        rejected: str | None = None
        if kind == "catalog":
            self._catalog(st, signal)
            trigger = "catalog"
        elif kind == "competitor":
            rejected = self._competitor(st, signal, t, rules)
            trigger = None if rejected else "competitor_price"
        elif kind == "stock":
            st.stock[signal["dc"]] = int(signal["on_hand"])
            trigger = "stock"
        elif kind in ("view", "purchase"):
            self._learn(item, st, model, signal, t, rules)
            due = st.decided_ms is None or t - st.decided_ms >= self.c.reprice_interval_ms
            trigger = "demand" if due else None
        elif kind == "cart":
            st.carts += int(signal.get("quantity", 1))
        elif kind == "return":
            st.returns += int(signal.get("quantity", 1))
        elif kind == "override":
            if round(float(signal["price"]), 2) < CENT:
                return Outcome(None, "invalid_override")
            st.override = [round(float(signal["price"]), 2), int(signal["expires_ms"]),
                           signal.get("by", "")]
            trigger = "override"
        elif kind == "override_clear":
            if st.override is not None:
                st.override = None
                trigger = "override_cleared"
        if st.override is not None and t >= st.override[1]:
            st.override = None
            trigger = "override_expired"
        if trigger in (None, "demand") and st.pending is not None and st.changed_ms is not None \
                and t - st.changed_ms >= rules.min_interval_ms:
            trigger = st.pending   # what was held back, rather than the signal that let it out
        if trigger is None or not st.list_price or st.list_price < CENT:
            return Outcome(None, rejected)
        return Outcome(self._decide(item, st, model, t, trigger, rules), rejected)

    # -- signal handlers -----------------------------------------------------------------------

    def _catalog(self, st: ItemPricing, signal: Signal) -> None:
        st.set_terms({f: float(signal[f]) for f in _TERM_FIELDS if signal.get(f) is not None})
        st.category = signal.get("category", st.category)
        st.currency = signal.get("currency", st.currency)
        if st.list_price:   # keep the evidence of the current price points only
            keys = {_arm_key(a) for a in self._arms(st, self.c.rules)}
            st.arms = {k: v for k, v in st.arms.items() if k in keys}

    def _competitor(self, st: ItemPricing, signal: Signal, t: int, rules: Rules
                    ) -> str | None:
        name, price = signal["competitor"], float(signal["price"])
        if name in rules.ignored_competitors:
            return None
        currency = signal.get("currency")
        if currency and currency != (st.currency or self.c.currency):
            return self._reject(st, t, name, price, "currency_mismatch")
        last = st.competitors.get(name)
        reason = screen_competitor_price(price, last[1] if last else None, rules)
        if reason == "outlier_jump":
            suspect = st.suspects.get(name)
            if suspect and abs(price - suspect[0]) <= CONFIRM_TOLERANCE * suspect[0]:
                suspect[1] += 1
            else:
                suspect = st.suspects[name] = [price, 1]
            if suspect[1] >= self.c.outlier_confirmations:   # a confirmed new level
                reason = None
        if reason is not None:
            return self._reject(st, t, name, price, reason)
        st.suspects.pop(name, None)
        if last is None or t >= last[0]:   # a late observation does not replace a newer one
            st.competitors[name] = [t, price]
        return None

    @staticmethod
    def _reject(st: ItemPricing, t: int, name: str, price: float, reason: str) -> str:
        st.rejected = [[t, name, price, reason], *st.rejected][:REJECTIONS_KEPT]
        return reason

    def _learn(self, item: str, st: ItemPricing, model: ConversionModel, signal: Signal,
               t: int, rules: Rules) -> None:
        quantity = float(signal.get("quantity", 1))
        bought = signal["kind"] == "purchase"
        st.add_rate(t, views=0.0 if bought else quantity, units=quantity if bought else 0.0)
        shown = signal.get("price") or st.price
        if not shown or shown < CENT or not st.list_price or st.list_price < CENT \
                or not st.category:   # no category, no model to learn into
            return
        comp = lowest_competitor(self._observations(st), t, rules)
        x = features(item, float(shown), st.list_price, comp[1] if comp else None, t)
        st.item_weight = model.learn_item(f"item={item}", st.item_weight, x, bought, quantity)
        arms = self._arms(st, rules)
        if arms:
            counts = st.arms.setdefault(_arm_key(nearest_arm(float(shown), arms)), [0, 0])
            counts[1 if bought else 0] += quantity

    # -- the decision --------------------------------------------------------------------------

    def _arms(self, st: ItemPricing, rules: Rules) -> list[float]:
        assert st.list_price
        return price_arms(st.list_price, st.guard_terms, rules, self.c.arm_spacing,
                          self.c.arm_levels)

    @staticmethod
    def _observations(st: ItemPricing) -> dict[str, tuple[int, float]]:
        return {name: (int(t), float(p)) for name, (t, p) in st.competitors.items()}

    def _decide(self, item: str, st: ItemPricing, model: ConversionModel, t: int,
                trigger: str, rules: Rules) -> dict[str, Any] | None:
        terms = st.guard_terms
        assert st.list_price
        if st.price is None:
            return self._initial(item, st, terms, t, trigger, rules)
        current = st.price
        override = Override(float(st.override[0]), int(st.override[1])) \
            if st.override is not None else None
        if override is None and st.changed_ms is not None \
                and t - st.changed_ms < rules.min_interval_ms:
            st.pending = trigger
            return None
        observations = self._observations(st)
        comp = lowest_competitor(observations, t, rules)
        comp_price = comp[1] if comp else None
        views_per_day, units_per_day = st.per_day(t)
        arms, stock = self._stock_rule(st, self._arms(st, rules), current, units_per_day)
        candidates = arms or [current]
        at = {p: features(item, p, st.list_price, comp_price, t) for p in {*candidates, current}}
        totals = [sum(c[0] for c in st.arms.values()), sum(c[1] for c in st.arms.values())]
        name = f"item={item}"
        prior = model.with_item(name, st.item_weight, lambda m: calibrated_prior(
            m, at, current, int(totals[0]), int(totals[1])))
        seen = {p: (int(st.arms.get(_arm_key(p), [0, 0])[0]),
                    int(st.arms.get(_arm_key(p), [0, 0])[1])) for p in candidates}
        choice = choose_price(candidates, prior, seen, max(views_per_day, 1.0),
                              terms.unit_cost, self.c.params, decision_seed(item, t))
        proposal = override.price if override is not None else choice.price
        decision = decide(current, proposal, terms, rules, t, st.changed_ms, override,
                          competitor_target(observations, t, rules))
        st.decided_ms = t
        st.pending = None
        if not decision.changed:
            return None
        price = decision.price
        if price not in at:
            at[price] = features(item, price, st.list_price, comp_price, t)
            prior = model.with_item(name, st.item_weight, lambda m: calibrated_prior(
                m, at, current, int(totals[0]), int(totals[1])))
        v, b = seen.get(price, (0, 0))
        strength = self.c.params.prior_strength
        conversion = (strength * prior[price] + b) / (strength + v)
        demand = conversion * views_per_day
        unit_value = price - (terms.unit_cost or 0.0) if self.c.params.objective == "profit" \
            else price
        reason: dict[str, Any] = {
            "trigger": trigger,
            "guardrails": list(decision.reasons),
            "proposed": proposal,
            "competitor": None if comp is None else {
                "name": comp[0], "price": comp[1], "rule": rules.competitor_rule,
                "gap": round((price - comp[1]) / comp[1], 4)},
            "demand": {"views_per_day": round(views_per_day, 3),
                       "units_per_day": round(units_per_day, 3),
                       "conversion": round(conversion, 5), "carts": st.carts},
            "stock": stock,
        }
        if override is not None:
            reason["override"] = {"price": override.price, "expires_ms": override.expires_ms,
                                  "by": st.override[2] if st.override else ""}
        return self._change(item, st, t, price, reason, demand, demand * unit_value)

    def _initial(self, item: str, st: ItemPricing, terms: Terms, t: int, trigger: str,
                 rules: Rules) -> dict[str, Any] | None:
        floor, ceiling = cent_bounds(terms, rules)
        if floor > ceiling:
            st.pending = trigger   # inconsistent terms: no price until the catalogue is mended
            return None
        assert st.list_price
        price = round(min(max(st.list_price, floor), ceiling), 2)
        if st.override is not None and t < st.override[1]:
            price = float(st.override[0])
        st.decided_ms = t
        st.pending = None
        guard = "clamped:floor" if price > st.list_price else \
            "clamped:ceiling" if price < st.list_price else "list_price"
        reason = {"trigger": "initial", "guardrails": [guard], "proposed": st.list_price}
        return self._change(item, st, t, price, reason, 0.0, 0.0)

    def _stock_rule(self, st: ItemPricing, arms: list[float], current: float,
                    units_per_day: float) -> tuple[list[float], dict[str, Any] | None]:
        if not st.stock:
            return arms, None
        on_hand = sum(st.stock.values())
        cover = on_hand / units_per_day if units_per_day > 0 else math.inf
        info: dict[str, Any] = {"on_hand": on_hand,
                                "days_of_cover": None if math.isinf(cover) else round(cover, 2),
                                "rule": None}
        if self.c.low_cover_days and cover < self.c.low_cover_days:
            info["rule"] = "scarce: not lowered"
            return [a for a in arms if a >= current], info
        if self.c.high_cover_days and cover > self.c.high_cover_days and on_hand > 0:
            info["rule"] = "surplus: not raised"
            return [a for a in arms if a <= current], info
        return arms, info

    def _change(self, item: str, st: ItemPricing, t: int, price: float,
                reason: dict[str, Any], demand: float, profit: float) -> dict[str, Any]:
        old = st.price
        did = decision_id(item, t, old, price)
        st.price, st.changed_ms, st.last_decision = price, t, did
        return {"v": 1, "event_id": did, "event_time_ms": t, "decision_id": did,
                "item_id": item, "category": st.category, "old_price": old, "new_price": price,
                "currency": st.currency or self.c.currency, "reason": reason,
                "expected_demand": round(max(demand, 0.0), 4),
                "expected_profit": round(profit, 4), "model_version": self.c.model_version}
