"""Price endpoints: an item's current price with its reasons, its recent changes, and the
pricing team's override (admin scope: ``engine.api.auth`` checks the key before any of this
runs).

An override is not written to Redis by the API: it is sent as a price signal to the item's
partition of ``price-signals``, so the pricing stage applies it in order with everything else,
exactly once, and publishes the change on ``prices`` like any other. The answer (202) names
the partition and offset; the price follows within the worker's latency.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Body, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from engine.api.ingest import Ingestor
from engine.config import Settings
from engine.core.compose import PRICE_SIGNALS
from engine.pricing.query import PriceReader

log = logging.getLogger(__name__)

ID_PATTERN = r"^[^\s\x00-\x1f]+$"
ItemId = Path(min_length=1, max_length=128, pattern=ID_PATTERN)
#: The longest override the API accepts: a forgotten override should not price an item for ever.
MAX_OVERRIDE_DAYS = 90


class OverrideRequest(BaseModel):
    price: float = Field(ge=0.01, le=1e9, description="the price to charge while it lasts")
    expires_ms: int | None = Field(None, gt=0, le=253402300799999,
                                   description="end, ms since the epoch (UTC)")
    ttl_minutes: float | None = Field(None, gt=0, le=MAX_OVERRIDE_DAYS * 1440,
                                      description="or: how long from now")
    note: str = Field("", max_length=512, description="why (kept with the change)")
    by: str = Field("", max_length=128, description="who sets it")

    @model_validator(mode="after")
    def one_expiry(self) -> OverrideRequest:
        if (self.expires_ms is None) == (self.ttl_minutes is None):
            raise ValueError("give exactly one of expires_ms and ttl_minutes")
        return self


OVERRIDE_BODY = Body(...)


class PriceRoutes:
    def __init__(self, settings: Settings, reader: PriceReader, ingestor: Ingestor) -> None:
        self.settings = settings
        self.reader = reader
        self.ingestor = ingestor
        self.router = APIRouter(tags=["prices"])
        self.router.add_api_route(
            "/v1/items/{item_id}/price", self.price, methods=["GET"],
            summary="The item's current price, its terms and bounds, the competitor prices "
            "counted and rejected, and any override", responses={
                404: {"description": "the engine has not priced this item"}})
        self.router.add_api_route(
            "/v1/items/{item_id}/price/history", self.history, methods=["GET"],
            summary="The item's latest price changes, newest first, as published on prices",
            responses={404: {"description": "the engine has not priced this item"}})
        auth: dict[int | str, dict[str, Any]] = {
            401: {"description": "no API key, or an unknown one"},
            403: {"description": "the key lacks the admin scope, or no admin key is "
                  "configured"},
            503: {"description": "the broker did not take the override; retry"}}
        self.router.add_api_route(
            "/v1/items/{item_id}/price/override", self.put_override, methods=["PUT"],
            status_code=202, summary="Admin: set the item's price until an expiry (it always "
            "wins over the engine); answered once the override is on the broker",
            responses=auth)
        self.router.add_api_route(
            "/v1/items/{item_id}/price/override", self.delete_override, methods=["DELETE"],
            status_code=202, summary="Admin: end the item's override now", responses=auth)

    async def price(self, item_id: str = ItemId) -> dict[str, Any]:
        current = await self.reader.current(item_id)
        if current is None:
            raise HTTPException(404, f"no price for item {item_id!r}: the catalogue has not "
                                "named it yet, or pricing is off")
        return current

    async def history(self, item_id: str = ItemId,
                      limit: int = Query(20, ge=1, le=1000, description="changes (1-1000)")
                      ) -> dict[str, Any]:
        changes = await self.reader.history(item_id, min(limit, self.settings.pricing
                                                         .history_size))
        if not changes and await self.reader.state(item_id) is None:
            raise HTTPException(404, f"no price for item {item_id!r}: the catalogue has not "
                                "named it yet, or pricing is off")
        return {"item_id": item_id, "changes": changes}

    async def put_override(self, request: Request, item_id: str = ItemId,
                           body: OverrideRequest = OVERRIDE_BODY) -> JSONResponse:
        now = int(time.time() * 1000)
        expires = body.expires_ms if body.expires_ms is not None \
            else now + round((body.ttl_minutes or 0) * 60_000)
        if expires <= now:
            raise HTTPException(422, f"expires_ms {expires} is not in the future (now {now})")
        if expires - now > MAX_OVERRIDE_DAYS * 86_400_000:
            raise HTTPException(422, f"an override lasts at most {MAX_OVERRIDE_DAYS} days")
        signal = {"event_id": f"ov-{secrets.token_hex(8)}", "event_time_ms": now,
                  "item_id": item_id, "kind": "override", "price": round(body.price, 2),
                  "expires_ms": expires, "by": body.by or _caller(request), "note": body.note}
        return await self._send(item_id, signal, {"price": signal["price"],
                                                  "expires_ms": expires})

    async def delete_override(self, request: Request, item_id: str = ItemId) -> JSONResponse:
        now = int(time.time() * 1000)
        signal = {"event_id": f"ov-{secrets.token_hex(8)}", "event_time_ms": now,
                  "item_id": item_id, "kind": "override_clear", "by": _caller(request)}
        return await self._send(item_id, signal, None)

    async def _send(self, item_id: str, signal: dict[str, Any],
                    override: dict[str, Any] | None) -> JSONResponse:
        record = {"event_id": signal["event_id"], "event_time_ms": signal["event_time_ms"],
                  "signals": [signal]}
        partition = self.reader.partition(item_id)
        try:
            meta = await self.ingestor.send_one(PRICE_SIGNALS, orjson.dumps(record),
                                                key=item_id.encode(), partition=partition)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("override of %s not sent: %s", item_id, exc)
            raise HTTPException(503, f"event broker unavailable ({type(exc).__name__}); the "
                                "override was not taken, retry") from None
        log.info("override of %s sent: %s", item_id, override)
        return JSONResponse({"item_id": item_id, "status": "accepted", "override": override,
                             "signal_id": signal["event_id"], "partition": meta.partition,
                             "offset": meta.offset,
                             "detail": "the pricing stage applies it in order; GET "
                             f"/v1/items/{item_id}/price shows it"}, 202)


def _caller(request: Request) -> str:
    """The name of the API key that made the request (set by ``engine.api.auth.Gate``)."""
    return str(request.scope.get("engine.caller", "api"))
