"""The HTTP API: health, readiness, metrics, OpenAPI, and read views of live state.

Decision endpoints (recommendations, prices, stocking) join with their issues. Every error is a
JSON body with a message and a 4xx/5xx status; no stack trace ever reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis.exceptions
from aiokafka import AIOKafkaClient
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel, Field

from engine import __version__, views
from engine.api.auth import Gate
from engine.api.docs import DOCS_HTML
from engine.api.guard import Guard
from engine.api.ingest import Ingestor
from engine.api.prices import PriceRoutes
from engine.api.status import StatusRoutes
from engine.api.stocking import StockingRoutes
from engine.config import Settings
from engine.contracts import Catalogue
from engine.kafka_client import aiokafka_options
from engine.pricing.query import PriceReader
from engine.recommend.query import Recommender, Result
from engine.stocking.query import StockingReader
from engine.store import StateStore

log = logging.getLogger(__name__)

STATE_EVENTS = Gauge("engine_state_events", "Records applied to Redis state, all workers",
                     ["topic", "outcome"])
STATE_DLQ = Gauge("engine_state_dead_letters", "Dead-lettered records by reason, all workers",
                  ["topic", "reason"])
LIVE_WORKERS = Gauge("engine_live_workers", "Workers with a fresh heartbeat")
VIEW_BACKLOG = Gauge("engine_reco_views_waiting", "Items whose recommendation view waits for "
                     "the projector (view:dirty), all workers")

ID_PATTERN = r"^[^\s\x00-\x1f]+$"
ItemId = Path(min_length=1, max_length=128, pattern=ID_PATTERN)
UserId = Path(min_length=1, max_length=128, pattern=ID_PATTERN)
K = Query(10, ge=1, le=100, description="how many items (1-100)")


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="relative strength; 0 for fill-ins (trending, similar_to)")
    reason: dict[str, Any] = Field(description="machine-readable: type (co_viewed_with, "
                                   "bought_together_with, trending_in, similar_to, "
                                   "personal_model) and the items or signals behind it")


class Recommendations(BaseModel):
    items: list[RecommendedItem]
    model_version: str
    state_event_time_ms: int | None = Field(description="latest event time in state "
                                              "(re-read at most every 0.25 s: a lower bound)")


def _response(result: Result) -> Response:
    """The body as ``Recommendations`` documents it, serialised directly: the result is built
    by our own code, so pydantic's validation of it would only cost time on the hot path."""
    return Response(orjson.dumps({
        "items": [{"item_id": r.item_id, "score": r.score, "reason": r.reason}
                  for r in result.items],
        "model_version": result.model_version,
        "state_event_time_ms": result.state_event_time_ms}), media_type="application/json")


class BrokerProbe:
    """Checks the broker answers a metadata request; results are cached for a second."""

    def __init__(self, settings: Settings) -> None:
        self._options = aiokafka_options(settings.kafka)
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def check(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._cached and now - self._cached[0] < 1.0:
            return self._cached[1]
        started = time.perf_counter()
        result: dict[str, Any]
        client = AIOKafkaClient(**self._options, request_timeout_ms=2000,
                                metadata_max_age_ms=1000)
        try:
            await asyncio.wait_for(client.bootstrap(), timeout=3.0)
            result = {"ok": True, "brokers": len(client.cluster.brokers()),
                      "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        except Exception as exc:  # any failure to reach the broker means "not ready"
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        finally:
            await client.close()
        self._cached = (now, result)
        return result


def create_api(settings: Settings, catalogue: Catalogue) -> FastAPI:
    store = StateStore.open(settings.redis)
    recommender = Recommender(store, catalogue, settings)
    ingestor = Ingestor(settings, catalogue)
    probe = BrokerProbe(settings)
    expected = views.expected_partitions(settings, catalogue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await ingestor.stop()
        await store.close()

    app = FastAPI(title="Streaming decision engine", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Live e-commerce decisions (recommendations, stocking, prices) "
                  "computed from Kafka streams with state in Redis.")

    app.include_router(ingestor.router)
    app.include_router(PriceRoutes(settings, PriceReader(store, catalogue, settings.pricing),
                                   ingestor).router)
    stocking = StockingReader(store, catalogue, settings)
    app.include_router(StockingRoutes(settings, stocking, recommender).router)
    app.include_router(StatusRoutes(settings, store, catalogue, stocking).router)
    # Starlette runs the last added outermost: Guard (shedding, metrics of every answer) sees
    # the Gate's refusals too.
    app.add_middleware(Gate, settings=settings.api)
    app.add_middleware(Guard, max_in_flight=settings.api.max_in_flight,
                       read_timeout_s=settings.api.read_timeout_s)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error serving %s", request.url.path)
        return JSONResponse({"detail": "internal error; it has been logged"}, 500)

    @app.exception_handler(redis.exceptions.RedisError)
    async def redis_down(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        log.warning("Redis error serving %s: %s", request.url.path, exc)
        return JSONResponse({"detail": "state store unavailable, retry shortly"}, 503)

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process is serving")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["operations"],
             summary="Readiness: broker and Redis answer, and live workers cover every input "
             "partition", responses={503: {"description": "not ready; the body says why"}})
    async def readyz() -> JSONResponse:
        checks: dict[str, Any] = {"broker": await probe.check()}
        try:
            started = time.perf_counter()
            await store.client.ping()
            checks["redis"] = {"ok": True,
                               "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
            workers = await views.live_workers(store, settings.api.worker_stale_after_s)
            covered = {tp for w in workers for tp in w["assigned"]}
            missing = sorted(expected - covered)
            checks["workers"] = {"ok": bool(workers) and not missing, "live": len(workers),
                                 "unassigned_partitions": missing}
        except redis.exceptions.RedisError as exc:
            checks["redis"] = {"ok": False, "error": str(exc)[:200]}
            checks["workers"] = {"ok": False, "error": "unknown while Redis is down"}
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response)
    async def metrics() -> Response:
        try:
            stats = await views.pipeline_stats(store, catalogue)
            for topic, t in stats["topics"].items():
                STATE_EVENTS.labels(topic, "valid").set(t["valid"])
                STATE_EVENTS.labels(topic, "dead_lettered").set(t["dead_lettered"])
                for reason, n in t["dlq"].items():
                    STATE_DLQ.labels(topic, reason).set(n)
            workers = await views.live_workers(store, settings.api.worker_stale_after_s)
            LIVE_WORKERS.set(len(workers))
            VIEW_BACKLOG.set(await store.client.scard(recommender.views.dirty_key))
        except redis.exceptions.RedisError as exc:
            log.warning("metrics without state figures: %s", exc)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/stats", tags=["state"],
             summary="Events applied and dead-lettered per topic, by reason; event-to-state "
             "latency percentiles (ms); live workers")
    async def stats() -> dict[str, Any]:
        summary = await views.pipeline_stats(store, catalogue)
        histogram = await views.event_to_state_latency(store)
        summary["event_to_state_ms"] = {"count": histogram.total, **histogram.summary()}
        summary["workers"] = await views.live_workers(store, settings.api.worker_stale_after_s)
        return summary

    @app.get("/v1/items/{item_id}/activity", tags=["state"],
             summary="Live activity counters, catalogue data, competitor prices and stock of an "
             "item")
    async def item_activity(item_id: str = ItemId) -> dict[str, Any]:
        return await views.item_activity(store, catalogue, item_id)

    @app.get("/v1/users/{user_id}/recommendations", tags=["recommendations"],
             response_model=Recommendations,
             summary="Personal recommendations; with context_item (what is in the cart) its "
             "neighbours and category are favoured; unknown users get trending items")
    async def user_recommendations(
            user_id: str = UserId, k: int = K,
            context_item: str | None = Query(None, min_length=1, max_length=128,
                                             pattern=ID_PATTERN),
            category: str | None = Query(None, min_length=1, max_length=256,
                                         description="only this category (and its children)")
    ) -> Response:
        return _response(await recommender.for_user(user_id, k, context_item, category))

    @app.get("/v1/items/{item_id}/similar", tags=["recommendations"],
             response_model=Recommendations,
             summary="Customers who viewed or bought this also viewed or bought")
    async def similar_items(item_id: str = ItemId, k: int = K) -> Response:
        return _response(await recommender.similar(item_id, k))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_HTML)

    return app
