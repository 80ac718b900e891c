"""``POST /v1/events``: click, cart and order events over HTTP, for storefronts without Kafka.

Each event is checked by the same ``Validator`` as the worker's Kafka input (size limit, schema,
event time), judged against the moment the request arrived, and the accepted ones are published,
in request order, with one long-lived producer (``acks="all"``). The answer waits for the
broker's acknowledgement of every accepted event, so "accepted" means durably on the topic, and
names the partition and offset; a rejected event gets the same reason a dead letter would. The
value published is the event re-encoded by orjson (compact; the bytes that were validated).

Wiring into ``create_api`` (the producer connects on the first request, so the API starts and
answers ``/healthz`` while the broker is down; ``stop`` flushes and closes it)::

    ingestor = Ingestor(settings, catalogue)
    app.include_router(ingestor.router)        # and in the lifespan, after ``yield``:
    await ingestor.stop()

Statuses: 200 whenever the batch was judged (even if every event was rejected); 403 for a topic
fed by internal systems (competitor prices, inventory, catalogue, outputs); 413 for a body over
``api.max_body_bytes`` or ``MAX_EVENTS * validation.max_event_bytes``; 422 for a body that is
not JSON or not the documented shape (``{"events": [{"topic": ..., "event": {...}}, ...]}``,
1 to ``MAX_EVENTS`` items); 503 when the broker cannot be reached or does not confirm an event
in time (the body lists those indexes: they may or may not be on the topic, so a retry can
duplicate them; ``event_id`` tells them apart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field

from engine.config import Settings
from engine.contracts import Catalogue, Rejection, Validator
from engine.kafka_client import aiokafka_options

log = logging.getLogger(__name__)

#: Topics a storefront may write over HTTP; every other topic comes from an internal feed.
INGESTABLE = ("clicks", "carts", "orders")
#: Most events in one request (the body limit is this many events at the size limit).
MAX_EVENTS = 1000
#: How long a request waits for the broker (connecting, then acknowledging every event).
SEND_TIMEOUT_S = 10.0

INGESTED = Counter("engine_ingest_events_total", "Events received by POST /v1/events",
                   ["topic", "outcome"])  # outcome: accepted | rejected | unconfirmed
INGEST_REJECTED = Counter("engine_ingest_rejected_total",
                          "Events refused by POST /v1/events, by reason", ["topic", "reason"])


class IngestItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(description="Input topic of the event", examples=["clicks"],
                       json_schema_extra={"enum": list(INGESTABLE)})
    event: Any = Field(description="The event, a JSON object as the topic's schema in "
                       "streams/schemas defines it; checked per event like Kafka input, so an "
                       "invalid one is rejected with its reason without failing the batch")


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[IngestItem] = Field(min_length=1, max_length=MAX_EVENTS)


class IngestResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected", "unconfirmed"]
    topic: str
    partition: int | None = Field(None, description="accepted only")
    offset: int | None = Field(None, description="accepted only")
    reason: str | None = Field(None, description="rejected only: the dead-letter reason")
    detail: str | None = Field(None, description="rejected only")


class IngestResponse(BaseModel):
    accepted: int
    rejected: int
    results: list[IngestResult]


class IngestUnavailable(BaseModel):
    detail: str
    unconfirmed: list[int]
    accepted: int
    rejected: int
    results: list[IngestResult]


class _BoundedRequest(Request):
    """A request whose body is refused past a limit (declared or actual length), and decoded by
    orjson, which refuses NaN and infinities as the contracts do (the stdlib accepts them)."""

    max_body_bytes = 0

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise self._too_large()
            chunks, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise self._too_large()
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())  # JSONDecodeError -> FastAPI's 422
        return self._json

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request body over {self.max_body_bytes} bytes (at most "
                             f"{MAX_EVENTS} events, each within the event size limit)")


def _bounded_route(max_body_bytes: int) -> type[APIRoute]:
    request_class = type("IngestRequestBody", (_BoundedRequest,),
                         {"max_body_bytes": max_body_bytes})

    class BoundedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def bounded(request: Request) -> Response:
                request = request_class(request.scope, request.receive)
                request.state.received_ms = time.time_ns() // 1_000_000
                return await handler(request)

            return bounded

    return BoundedRoute


def _key(event: dict[str, Any]) -> bytes:
    """The topic's key (streams/topics.toml): user_id, or order_id for guest orders."""
    return str(event.get("user_id") or event["order_id"]).encode()


class Ingestor:
    """The ``/v1/events`` router and the producer behind it (see the module docstring)."""

    def __init__(self, settings: Settings, catalogue: Catalogue, *,
                 timeout_s: float = SEND_TIMEOUT_S) -> None:
        self._settings = settings
        self._catalogue = catalogue
        self._validator = Validator(catalogue, settings.validation)
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self.router = APIRouter(
            route_class=_bounded_route(min(settings.api.max_body_bytes,
                                           MAX_EVENTS * settings.validation.max_event_bytes)))
        self.router.add_api_route(
            "/v1/events", self._ingest, methods=["POST"], tags=["ingest"],
            operation_id="ingest_events",
            summary="Publish a batch of click, cart and order events; answer which were "
            "accepted (with partition and offset) and why the others were rejected",
            response_model=None, responses={
                200: {"model": IngestResponse},
                403: {"description": "a topic fed by internal systems, not over HTTP"},
                413: {"description": "body too large"},
                503: {"model": IngestUnavailable,
                      "description": "the broker did not confirm the listed events"}})

    async def start(self) -> None:
        """Connect now instead of on the first request; a broker that is down is only logged."""
        try:
            await self._connected()
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("ingest producer not connected yet (will retry per request): %s", exc)

    async def stop(self) -> None:
        async with self._starting:
            producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _connected(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **aiokafka_options(self._settings.kafka), linger_ms=5, acks="all",
                    enable_idempotence=False, request_timeout_ms=int(self._timeout_s * 1000))
                try:
                    await asyncio.wait_for(producer.start(), self._timeout_s)
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send_one(self, topic: str, raw: bytes, *, key: bytes | None = None,
                       partition: int | None = None) -> Any:
        """Send one record the API itself produces (a price override) and wait for the broker's
        acknowledgement; raises TimeoutError, KafkaError or OSError when it does not come."""
        async with asyncio.timeout(self._timeout_s):
            producer = await self._connected()
            return await (await producer.send(topic, raw, key=key, partition=partition))

    async def _ingest(self, body: IngestRequest, request: Request) -> JSONResponse:
        self._refuse_foreign_topics(body)
        received_ms: int = request.state.received_ms
        results: list[dict[str, Any]] = []
        to_send: list[tuple[int, str, bytes, bytes]] = []
        for i, item in enumerate(body.events):
            checked = self._check(item.topic, item.event, received_ms)
            if isinstance(checked, Rejection):
                results.append({"index": i, "status": "rejected", "topic": item.topic,
                                "reason": checked.reason, "detail": checked.detail})
                INGEST_REJECTED.labels(item.topic, checked.reason).inc()
            else:
                event, raw = checked
                results.append({"index": i, "status": "unconfirmed", "topic": item.topic})
                to_send.append((i, item.topic, _key(event), raw))
        error = await self._publish(to_send, results, received_ms) if to_send else None
        counts = {s: sum(r["status"] == s for r in results)
                  for s in ("accepted", "rejected", "unconfirmed")}
        for r in results:
            INGESTED.labels(r["topic"], r["status"]).inc()
        answer: dict[str, Any] = {"accepted": counts["accepted"], "rejected": counts["rejected"],
                                  "results": results}
        if not counts["unconfirmed"]:
            return JSONResponse(answer)
        unconfirmed = [r["index"] for r in results if r["status"] == "unconfirmed"]
        log.warning("POST /v1/events: broker did not confirm %d events: %s",
                    len(unconfirmed), error)
        return JSONResponse({"detail": f"event broker unavailable ({error}); the events listed "
                             "in unconfirmed may not be on the topic, retry them",
                             "unconfirmed": unconfirmed, **answer}, 503)

    def _refuse_foreign_topics(self, body: IngestRequest) -> None:
        foreign: dict[str, list[int]] = {}
        for i, item in enumerate(body.events):
            if item.topic not in INGESTABLE:
                foreign.setdefault(item.topic, []).append(i)
        if not foreign:
            return
        unknown = sorted(t for t in foreign if t not in self._catalogue.topics)
        if unknown:
            raise HTTPException(422, f"unknown topic {unknown[0]!r} (events "
                                f"{foreign[unknown[0]]}); this endpoint accepts "
                                f"{', '.join(INGESTABLE)}")
        topic, indexes = next(iter(foreign.items()))
        feeds = ", ".join(self._catalogue.topics[topic].producers)
        raise HTTPException(403, f"topic {topic!r} (events {indexes}) is not accepted over "
                            f"HTTP: it comes from internal feeds ({feeds}); this endpoint "
                            f"accepts {', '.join(INGESTABLE)}")

    def _check(self, topic: str, event: Any, received_ms: int
               ) -> tuple[dict[str, Any], bytes] | Rejection:
        """The worker's verdict on these bytes, had they arrived on Kafka at ``received_ms``."""
        try:
            raw = orjson.dumps(event)
        except orjson.JSONEncodeError as exc:  # nesting past orjson's encoder limit (254)
            rejection = (self._validator.check_event(topic, event)
                         if isinstance(event, dict) else None)
            return rejection or Rejection("malformed_json", f"cannot be encoded: {exc}")
        checked = self._validator.check(topic, raw, received_ms)
        return checked if isinstance(checked, Rejection) else (checked, raw)

    async def _publish(self, to_send: list[tuple[int, str, bytes, bytes]],
                       results: list[dict[str, Any]], received_ms: int) -> str | None:
        """Send in order, wait for every acknowledgement; mark results; return an error or None.

        The record timestamp is the receive time, so the worker judges event time against the
        same instant this request did.
        """
        sent: list[tuple[int, asyncio.Future[Any]]] = []
        error: str | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                producer = await self._connected()
                for i, topic, key, raw in to_send:
                    future = await producer.send(topic, raw, key=key, timestamp_ms=received_ms)
                    future.add_done_callback(_retrieve)
                    sent.append((i, future))
                await asyncio.wait([f for _, f in sent])
        except TimeoutError:
            error = f"no answer within {self._timeout_s:g} s"
        except (KafkaError, OSError) as exc:
            error = type(exc).__name__
        for i, future in sent:
            if future.done() and not future.cancelled() and future.exception() is None:
                meta = future.result()
                results[i] = {"index": i, "status": "accepted", "topic": meta.topic,
                              "partition": meta.partition, "offset": meta.offset}
            elif future.done() and error is None:
                error = type(future.exception()).__name__
        return error


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a delivery error as seen: a request that timed out no longer awaits its futures."""
    if not future.cancelled():
        future.exception()
