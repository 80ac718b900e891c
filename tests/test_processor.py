"""The hot path without Kafka: validation, dead letters and exactly-once apply on real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import orjson
import pytest

from engine.config import Settings
from engine.contracts import Catalogue, Rejection, Validator
from engine.core.activity import Op, ops_for
from engine.store import StateStore
from engine.views import pipeline_stats
from engine.worker.processor import UNPROCESSABLE, BatchProcessor, RawRecord, WatermarkRegressed

pytestmark = pytest.mark.integration

NOW_MS = 1_700_000_000_000


class Letters:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, str]] = []

    async def __call__(self, topic: str, record: RawRecord, rejection: Rejection
                       ) -> Awaitable[object]:
        self.sent.append((topic, record.offset, rejection.reason))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _view(i: int) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "event_type": "view", "event_time_ms": NOW_MS,
                         "user_id": "u", "item_id": f"item-{i % 3}"})


def _records(payloads: list[bytes], partition: int = 0) -> list[RawRecord]:
    return [RawRecord(partition, o, NOW_MS, b"u", p) for o, p in enumerate(payloads)]


async def test_batch_validates_dead_letters_and_applies_once(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    letters = Letters()
    processor = BatchProcessor(store, Validator(catalogue, settings.validation), letters)
    records = _records([_view(0), b"{broken", _view(1), b"[]", _view(2)])
    await processor.process("clicks", records)
    await processor.process("clicks", records)        # a re-delivery of the same offsets
    stats = await pipeline_stats(store, catalogue)
    assert stats["topics"]["clicks"]["valid"] == 3 and stats["dlq"] == {
        "malformed_json": 1, "not_an_object": 1}
    assert letters.sent == [("clicks", 1, "malformed_json"), ("clicks", 3, "not_an_object")]
    assert processor.applied == 5 and processor.duplicates == 5


async def test_refused_event_is_isolated_and_dead_lettered(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    """A bug that yields an operation Redis refuses costs one record, not the batch."""
    def buggy_core(topic: str, event: dict) -> list[Op]:
        ops = ops_for(topic, event)
        return ops + [("hincrby", "stats", "x", "1.5")] if event["event_id"] == "e1" else ops

    letters = Letters()
    processor = BatchProcessor(store, Validator(catalogue, settings.validation), letters,
                               core=buggy_core)
    await processor.process("clicks", _records([_view(0), _view(1), _view(2)]))
    stats = await pipeline_stats(store, catalogue)
    assert stats["topics"]["clicks"]["valid"] == 2
    assert stats["dlq"] == {UNPROCESSABLE: 1}
    assert letters.sent == [("clicks", 1, UNPROCESSABLE)]
    assert await store.watermark("clicks", 0) == 2


async def test_redis_losing_writes_under_a_running_worker_is_fatal(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    processor = BatchProcessor(store, Validator(catalogue, settings.validation), Letters())
    await processor.process("clicks", _records([_view(i) for i in range(5)]))
    await store.client.set(store.shard("clicks", 0) + "wm", 1)   # Redis restarted, lost 2..4
    later = [RawRecord(0, 5, NOW_MS, b"u", _view(5))]
    with pytest.raises(WatermarkRegressed, match="lost acknowledged writes"):
        await processor.process("clicks", later)
    assert await store.watermark("clicks", 0) == 1               # nothing applied past the gap


async def test_a_repeated_event_id_is_dead_lettered_but_a_redelivery_is_skipped(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    letters = Letters()
    processor = BatchProcessor(store, Validator(catalogue, settings.validation), letters,
                               dedupe=frozenset({"clicks"}), dedupe_window=4)
    first = _records([_view(0), _view(1), _view(1)])               # a repeat within the batch
    await processor.process("clicks", first)
    await processor.process("clicks", first)                       # Kafka re-delivers: skipped
    later = [RawRecord(0, 3, NOW_MS, b"u", _view(0)),               # a producer's retry
             *[RawRecord(0, 4 + i, NOW_MS, b"u", _view(10 + i)) for i in range(6)]]
    await processor.process("clicks", later)
    stats = await pipeline_stats(store, catalogue)
    assert stats["dlq"] == {"duplicate_event_id": 2}
    assert stats["topics"]["clicks"]["valid"] == 8
    assert letters.sent == [("clicks", 2, "duplicate_event_id"),
                            ("clicks", 3, "duplicate_event_id")]
    # the window is bounded: 4 ids (+25 % slack before trimming)
    assert await store.client.zcard(store.shard("clicks", 0) + "ids") <= 5
    await processor.process("clicks", [RawRecord(0, 10, NOW_MS, b"u", _view(0))])
    assert (await pipeline_stats(store, catalogue))["dlq"] == {"duplicate_event_id": 2}
