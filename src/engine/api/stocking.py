"""Stocking endpoints: open stocking signals, an item's demand forecast, a customer's return
forecast. All read Redis only (``stocking.query``); the decisions are the stocking stage's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query

from engine.api.prices import ID_PATTERN, ItemId
from engine.config import Settings
from engine.recommend.query import Recommender
from engine.stocking.query import StockingReader

UserId = Path(min_length=1, max_length=128, pattern=ID_PATTERN)
#: Items a return forecast names that the customer is likely to need next.
LIKELY_ITEMS = 5


class StockingRoutes:
    def __init__(self, settings: Settings, reader: StockingReader,
                 recommender: Recommender) -> None:
        self.settings = settings
        self.reader = reader
        self.recommender = recommender
        self.router = APIRouter(tags=["stocking"])
        self.router.add_api_route(
            "/v1/stocking/signals", self.signals, methods=["GET"],
            summary="Open stocking signals (a centre that will not cover its regions' demand "
            "over its lead time), most confident first")
        self.router.add_api_route(
            "/v1/items/{item_id}/forecast", self.forecast, methods=["GET"],
            summary="The item's demand forecast per region, with an interval, and its centres' "
            "demand over their lead times against their stock",
            responses={404: {"description": "the engine has seen no order, view, cart add, "
                                            "stock level or catalogue record of this item"}})
        self.router.add_api_route(
            "/v1/users/{user_id}/return-forecast", self.return_forecast, methods=["GET"],
            summary="When the customer is expected to buy again (BG/NBD), the probability of a "
            "purchase within a horizon, and items they are likely to need",
            responses={404: {"description": "no purchase of this customer has been seen"}})

    async def signals(
            self,
            dc: str | None = Query(None, min_length=1, max_length=128, pattern=ID_PATTERN,
                                   description="only this distribution centre"),
            item: str | None = Query(None, min_length=1, max_length=128, pattern=ID_PATTERN,
                                     description="only this item"),
            limit: int = Query(100, ge=1, le=1000, description="signals (1-1000)")
    ) -> dict[str, Any]:
        if not self.settings.stocking.enabled:
            raise HTTPException(404, "stocking is off (stocking.enabled = false)")
        found = await self.reader.open_signals(dc, item, limit)
        return {"signals": found, "count": len(found)}

    async def forecast(
            self, item_id: str = ItemId,
            region: str | None = Query(None, min_length=1, max_length=128, pattern=ID_PATTERN,
                                       description="one region (default: every region the "
                                       "item has demand in)"),
            horizon: float | None = Query(None, ge=1 / 24, le=366, description="days ahead, "
                                          "from an hour (1/24) to 366 (default: the region's "
                                          "centre's lead time)")
    ) -> dict[str, Any]:
        found = await self.reader.forecast(item_id, region, horizon)
        if found is None:
            raise HTTPException(404, f"no demand known for item {item_id!r}: no order, view, "
                                "cart add, stock level or catalogue record of it has been "
                                "applied, or stocking is off")
        return found

    async def return_forecast(
            self, user_id: str = UserId,
            horizon: float | None = Query(None, ge=1, le=3660, description="days ahead, "
                                          "1-3660 (default: stocking.return_horizon_days)")
    ) -> dict[str, Any]:
        h = horizon if horizon is not None else self.settings.stocking.return_horizon_days
        found = await self.reader.return_forecast(user_id, h)
        if found is None:
            raise HTTPException(404, f"no purchase of customer {user_id!r} has been applied")
        likely = await self.recommender.for_user(user_id, LIKELY_ITEMS)
        found["likely_items"] = [{"item_id": r.item_id, "score": r.score, "reason": r.reason}
                                 for r in likely.items]
        return found
