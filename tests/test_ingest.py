"""POST /v1/events against the session's real broker: the contracts' verdicts per event, accepted
events really on their topics, and every refusal a JSON answer (in-process ASGI client)."""

from __future__ import annotations

import dataclasses
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from engine.api.ingest import INGESTABLE, MAX_EVENTS, Ingestor
from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import create_topics, start_broker

pytestmark = pytest.mark.integration


@asynccontextmanager
async def _client(settings: Settings, catalogue: Catalogue, timeout_s: float = 5.0
                  ) -> AsyncIterator[httpx.AsyncClient]:
    """The router mounted as create_api will mount it."""
    ingestor = Ingestor(settings, catalogue, timeout_s=timeout_s)
    app = FastAPI()
    app.include_router(ingestor.router)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as client:
            yield client
    finally:
        await ingestor.stop()


def _examples(catalogue: Catalogue, topic: str, kind: str) -> list[dict[str, Any]]:
    path = catalogue.root / "examples" / f"{topic}.{kind}.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _tagged(event: dict[str, Any], token: str) -> dict[str, Any]:
    """A valid example with its ids prefixed (DERIVED: keeps this test's state its own)."""
    ids = ("event_id", "user_id", "item_id", "order_id")
    out: dict[str, Any] = {k: f"{token}-{v}" if k in ids else v for k, v in event.items()}
    if "lines" in out:
        out["lines"] = [dict(line, item_id=f"{token}-{line['item_id']}") for line in out["lines"]]
    return out


def _counter(topic: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("engine_ingest_events_total",
                                     {"topic": topic, "outcome": outcome}) or 0.0


def _read_back(settings: Settings, wanted: dict[tuple[str, int, int], Any]) -> dict[Any, Any]:
    """The records at the given (topic, partition, offset), read with kafka-python."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.url, enable_auto_commit=False)
    tps = {TopicPartition(t, p) for t, p, _ in wanted}
    consumer.assign(list(tps))
    for tp in tps:
        consumer.seek(tp, min(o for t, p, o in wanted if (t, p) == (tp.topic, tp.partition)))
    found: dict[Any, Any] = {}
    deadline = time.monotonic() + 10
    while len(found) < len(wanted) and time.monotonic() < deadline:
        for tp, messages in consumer.poll(timeout_ms=500).items():
            for m in messages:
                if (tp.topic, tp.partition, m.offset) in wanted:
                    found[(tp.topic, tp.partition, m.offset)] = m
    consumer.close()
    return found


async def test_mixed_batch_judged_per_event_and_accepted_ones_on_the_topics(
        settings: Settings, catalogue: Catalogue) -> None:
    token = uuid.uuid4().hex[:10]
    now_ms = int(time.time() * 1000)
    valid = [(t, _tagged(e, token)) for t in INGESTABLE for e in _examples(catalogue, t, "valid")]
    view = valid[0][1]
    valid.append(("clicks", dict(view, event_id=f"{token}-soon", event_time_ms=now_ms + 600_000)))
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(300):  # deeper than orjson encodes, well within what it decodes
        cursor["a"] = cursor = {}
    invalid: list[tuple[str, Any, str]] = [
        (t, case["event"], case["expect"]) for t in INGESTABLE
        for case in _examples(catalogue, t, "invalid") if "event" in case]
    invalid += [
        ("clicks", [1, 2, 3], "not_an_object"),
        ("clicks", dict(view, event_time_ms=now_ms + 7_200_000), "future_timestamp"),
        ("clicks", dict(view, event_time_ms=86_400_000), "stale_timestamp"),
        ("clicks", dict(view, brand="x" * settings.validation.max_event_bytes), "too_large"),
        ("clicks", dict(view, deep=deep), "unknown_field"),
    ]
    batch: list[tuple[str, Any, str]] = [(t, e, "accepted") for t, e in valid] + invalid
    batch = batch[::2] + batch[1::2]  # interleave accepted and rejected events
    before = {t: (_counter(t, "accepted"), _counter(t, "rejected")) for t in INGESTABLE}

    async with _client(settings, catalogue) as client:
        response = await client.post("/v1/events", json={
            "events": [{"topic": t, "event": e} for t, e, _ in batch]})
    body = response.json()
    assert response.status_code == 200, body
    assert (body["accepted"], body["rejected"]) == (len(valid), len(invalid))
    for i, ((topic, _, expected), result) in enumerate(zip(batch, body["results"], strict=True)):
        assert result["index"] == i and result["topic"] == topic
        if expected == "accepted":
            assert result["status"] == "accepted", result
        else:
            assert (result["status"], result["reason"]) == ("rejected", expected), result
            assert result["detail"]
    for topic in INGESTABLE:
        sent = [r for (t, _, _), r in zip(batch, body["results"], strict=True) if t == topic]
        accepted = sum(r["status"] == "accepted" for r in sent)
        assert _counter(topic, "accepted") - before[topic][0] == accepted
        assert _counter(topic, "rejected") - before[topic][1] == len(sent) - accepted

    # Accepted means on the broker: read each back at its partition and offset.
    wanted = {(r["topic"], r["partition"], r["offset"]): batch[r["index"]][1]
              for r in body["results"] if r["status"] == "accepted"}
    records = _read_back(settings, wanted)
    assert set(records) == set(wanted)
    for where, event in wanted.items():
        record = records[where]
        assert orjson.loads(record.value) == event
        assert record.key == (event.get("user_id") or event["order_id"]).encode()
        assert now_ms - 1000 <= record.timestamp <= time.time() * 1000  # the receive time
    # Each partition holds its events in the request's order (so one key's events keep it).
    by_partition: dict[tuple[str, int], list[int]] = {}
    for t, p, o in wanted:  # dicts keep insertion order: the request's order
        by_partition.setdefault((t, p), []).append(o)
    assert all(offsets == sorted(set(offsets)) for offsets in by_partition.values())
    assert any(len(offsets) > 1 for offsets in by_partition.values())


def test_documented_in_openapi(settings: Settings, catalogue: Catalogue) -> None:
    app = FastAPI()
    app.include_router(Ingestor(settings, catalogue).router)
    spec = app.openapi()
    operation = spec["paths"]["/v1/events"]["post"]
    assert {"200", "403", "413", "422", "503"} <= set(operation["responses"])
    events = spec["components"]["schemas"]["IngestRequest"]["properties"]["events"]
    assert (events["minItems"], events["maxItems"]) == (1, MAX_EVENTS)
    topic = spec["components"]["schemas"]["IngestItem"]["properties"]["topic"]
    assert topic["enum"] == list(INGESTABLE)


@pytest.mark.parametrize("topic", ["inventory", "competitor-prices", "catalog", "prices"])
async def test_topics_of_internal_feeds_are_refused(
        settings: Settings, catalogue: Catalogue, topic: str) -> None:
    event = _examples(catalogue, topic, "valid")[0]
    async with _client(settings, catalogue) as client:
        response = await client.post("/v1/events", json={"events": [
            {"topic": "clicks", "event": _examples(catalogue, "clicks", "valid")[0]},
            {"topic": topic, "event": event}]})
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert topic in detail and "internal feeds" in detail and "[1]" in detail


@pytest.mark.parametrize(("content", "headers", "fragment"), [
    (b'{"events": []}', {}, "at least 1"),
    (orjson.dumps({"events": [{"topic": "clicks", "event": {}}] * (MAX_EVENTS + 1)}), {},
     f"at most {MAX_EVENTS}"),
    (b'{"events": [{"topic": "clicks"}]}', {}, "Field required"),
    (b'{"events": [{"topic": "clicks", "event": {}, "extra": 1}]}', {}, "Extra inputs"),
    (b'{"events": [{"topic": "nope", "event": {}}]}', {}, "unknown topic 'nope'"),
    (b'{"events": [', {}, "JSON decode error"),
    (b'{"events": [{"topic": "clicks", "event": {"price": NaN}}]}', {}, "JSON decode error"),
    (b"events=1", {"content-type": "application/x-www-form-urlencoded"}, "dictionary"),
], ids=["empty", "over-limit", "no-event", "extra-key", "unknown-topic", "truncated", "nan",
        "form"])
async def test_malformed_bodies_are_422_with_a_message(
        settings: Settings, catalogue: Catalogue, content: bytes, headers: dict[str, str],
        fragment: str) -> None:
    async with _client(settings, catalogue) as client:
        response = await client.post(
            "/v1/events", content=content,
            headers={"content-type": "application/json", **headers})
    assert response.status_code == 422
    assert fragment in response.text, response.text


async def test_oversized_body_is_413_by_declared_or_actual_length(
        settings: Settings, catalogue: Catalogue) -> None:
    small = dataclasses.replace(settings, validation=dataclasses.replace(
        settings.validation, max_event_bytes=100))
    limit = MAX_EVENTS * 100
    body = b'{"events": [' + b" " * limit + b"]}"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: only counting tells
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    async with _client(small, catalogue) as client:
        declared = await client.post("/v1/events", content=body,
                                     headers={"content-type": "application/json"})
        streamed = await client.post("/v1/events", content=chunked(),
                                     headers={"content-type": "application/json"})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert f"over {limit} bytes" in response.json()["detail"]
    assert "content-length" not in streamed.request.headers


@pytest.fixture(params=["refused", "silent"])
def unreachable(request: pytest.FixtureRequest) -> Iterator[str]:
    """A broker address that refuses connections, or accepts them and never answers."""
    if request.param == "refused":
        yield "127.0.0.1:1"
        return
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


async def test_broker_down_is_503_naming_the_unconfirmed_events(
        settings: Settings, catalogue: Catalogue, unreachable: str) -> None:
    dead = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka,
                                                                   url=unreachable))
    events = [{"topic": "clicks", "event": e} for e in _examples(catalogue, "clicks", "valid")]
    events.insert(1, {"topic": "carts", "event": {"event_type": "add"}})
    started = time.monotonic()
    async with _client(dead, catalogue, timeout_s=2.0) as client:
        response = await client.post("/v1/events", json={"events": events})
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    body = response.json()
    assert "broker unavailable" in body["detail"] and "Traceback" not in response.text
    assert body["unconfirmed"] == [0, 2, 3, 4]
    assert (body["accepted"], body["rejected"]) == (0, 1)
    assert body["results"][1]["reason"] == "missing_field"
    assert [r["status"] for r in body["results"]] == ["unconfirmed", "rejected"] + [
        "unconfirmed"] * 3


async def test_broker_lost_after_connecting_is_503(
        settings: Settings, catalogue: Catalogue, tmp_path: Path) -> None:
    """Deliveries that time out on a connected producer are reported, not hung on."""
    broker = start_broker(tmp_path)
    try:
        create_topics(broker.url, catalogue.creation_plan(), replication_factor=1)
        private = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka,
                                                                          url=broker.url))
        batch = {"events": [{"topic": "carts", "event": e}
                            for e in _examples(catalogue, "carts", "valid")]}
        async with _client(private, catalogue, timeout_s=2.0) as client:
            first = await client.post("/v1/events", json=batch)
            assert first.status_code == 200 and first.json()["accepted"] == 3
            broker.stop(timeout=0.5)  # killed, not shut down politely
            started = time.monotonic()
            lost = await client.post("/v1/events", json=batch)
            assert time.monotonic() - started < 5
        assert lost.status_code == 503
        assert lost.json()["unconfirmed"] == [0, 1, 2], lost.json()
    finally:
        broker.stop()
