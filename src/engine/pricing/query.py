"""Reads of the pricing state for the API and ``engine prices``: an item's current price and
what stands behind it, and its recent changes. Each item's state lives in one shard of
``price-signals``, found with Kafka's default partitioner (streams/topics.toml)."""

from __future__ import annotations

from typing import Any

import orjson

from engine.config import PricingSettings
from engine.contracts import Catalogue
from engine.core.compose import PRICE_SIGNALS
from engine.core.guardrails import cent_bounds
from engine.core.repricing import ItemPricing
from engine.store import StateStore


class PriceReader:
    def __init__(self, store: StateStore, catalogue: Catalogue, settings: PricingSettings
                 ) -> None:
        self.store = store
        self.catalogue = catalogue
        self.settings = settings

    def shard(self, item_id: str) -> str:
        return self.store.shard(PRICE_SIGNALS, self.partition(item_id))

    def partition(self, item_id: str) -> int:
        return self.catalogue.partition_of(PRICE_SIGNALS, item_id)

    async def state(self, item_id: str) -> ItemPricing | None:
        row = await self.store.client.hget(self.shard(item_id) + "px", item_id)
        return ItemPricing.from_dict(orjson.loads(row)) if row else None

    async def current(self, item_id: str) -> dict[str, Any] | None:
        """The item's price and why, or None when the engine has not priced it."""
        st = await self.state(item_id)
        if st is None or st.price is None:
            return None
        rules = self.settings.rules(st.category)
        floor, ceiling = cent_bounds(st.guard_terms, rules)   # as the guardrails enforce them
        at = st.changed_ms or 0
        return {
            "item_id": item_id,
            "price": st.price,
            "currency": st.currency or self.settings.currency,
            "changed_ms": st.changed_ms,
            "decision_id": st.last_decision,
            "category": st.category,
            "terms": {**st.terms, "floor": round(floor, 2), "ceiling": round(ceiling, 2)},
            "competitor_rule": rules.competitor_rule,
            "competitors": [
                {"competitor": name, "price": price, "event_time_ms": int(t)}
                for name, (t, price) in sorted(st.competitors.items())],
            "rejected_competitor_prices": [
                {"event_time_ms": t, "competitor": name, "price": price, "reason": reason}
                for t, name, price, reason in st.rejected],
            "override": None if st.override is None else {
                "price": st.override[0], "expires_ms": st.override[1], "by": st.override[2],
                # judged in event time, like every decision: by the item's next signal
                "active_as_of_last_change": at < st.override[1]},
            "pending": st.pending,
            "stock_on_hand": sum(st.stock.values()) if st.stock else None,
            "model_version": self.settings.model_version,
        }

    async def history(self, item_id: str, limit: int) -> list[dict[str, Any]]:
        """The item's latest changes, newest first (the messages published to ``prices``)."""
        rows = await self.store.client.lrange(self.shard(item_id) + f"pxh:{item_id}", 0,
                                              limit - 1)
        return [orjson.loads(row) for row in rows]
