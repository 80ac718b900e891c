"""Real events in, state in Redis out; bad events in the DLQ with their reason; worker alive.

Runs against the session's real broker, Redis and engine worker process.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import ManagedProcess
from engine.replay.publish import publish

from .helpers import (
    expected_item_counts,
    invalid_examples,
    item_counts,
    open_store,
    tagged_rees46,
    wait_for_counts,
)

pytestmark = pytest.mark.integration


def _dead_letters(settings: Settings, catalogue: Catalogue, key: bytes) -> list:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.url, consumer_timeout_ms=2000)
    tps = [TopicPartition(catalogue.dlq(t.name), 0) for t in catalogue.inputs]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    found = [m for m in consumer if m.key == key]
    consumer.close()
    return found


async def test_real_events_reach_state_and_bad_ones_the_dlq(
        settings: Settings, catalogue: Catalogue, worker: ManagedProcess) -> None:
    token = uuid.uuid4().hex[:10]
    records = tagged_rees46(token, limit=1500)
    bad = invalid_examples(catalogue)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.url, linger_ms=5)
    for topic, raw, _ in bad:
        producer.send(topic, key=token.encode(), value=raw)
    producer.flush()
    producer.close()
    stats = publish(records, bootstrap=settings.kafka.url, kafka_options={}, progress=False)
    assert stats.total == 1500 and stats.failed == 0

    store = open_store(settings)
    try:
        await wait_for_counts(store, expected_item_counts(records, catalogue), 60,
                              "the worker to apply 1,500 real events")
    finally:
        await store.close()

    letters = _dead_letters(settings, catalogue, token.encode())
    assert len(letters) == len(bad)
    by_value = {(dict(m.headers)["dlq.topic"].decode(), m.value): m for m in letters}
    for topic, raw, reason in bad:
        message = by_value[(topic, raw)]          # original bytes kept untouched
        headers = dict(message.headers)
        assert headers["dlq.reason"].decode() == reason
        assert int(headers["dlq.offset"]) >= 0 and headers["dlq.detail"]
    assert worker.alive, "the worker must survive hostile input"


async def test_redelivered_records_are_not_counted_twice(
        settings: Settings, catalogue: Catalogue, worker: ManagedProcess) -> None:
    """Publishing the same event twice is two records (two offsets): both count. Re-delivery
    of one record (the same offset) must not: the watermark is checked by the Lua script."""
    token = uuid.uuid4().hex[:10]
    records = tagged_rees46(token, limit=200)
    publish(records, bootstrap=settings.kafka.url, kafka_options={}, progress=False)
    expected = expected_item_counts(records, catalogue)
    store = open_store(settings)
    try:
        await wait_for_counts(store, expected, 60, "200 events")
        before = await item_counts(store, list(expected))
        # Re-apply the partitions' last batches as Kafka would after a crash: same offsets.
        for p in range(4):
            mark = await store.watermark("clicks", p)
            if mark >= 0:
                result = await store.apply("clicks", p, [(mark, [("hincrby", "stats", "x", "1")])])
                assert result.applied == 0 and result.skipped == 1
        assert await item_counts(store, list(expected)) == before
    finally:
        await store.close()


async def test_oversized_record_dead_lettered_truncated_and_float_integers_counted(
        settings: Settings, catalogue: Catalogue, worker: ManagedProcess) -> None:
    token = uuid.uuid4().hex[:10]
    big = b'{"event_id": "' + b"x" * 900_000 + b'"}'
    rating = {"event_id": f"{token}-r", "event_type": "rating", "event_time_ms": 1569888000000,
              "user_id": f"{token}-u", "item_id": f"{token}-i", "rating": 4.0}
    producer = KafkaProducer(bootstrap_servers=settings.kafka.url, linger_ms=5,
                             max_request_size=2_000_000)
    producer.send("clicks", key=token.encode(), value=big)
    producer.send("clicks", key=token.encode(), value=orjson.dumps(rating))
    producer.flush()
    producer.close()
    store = open_store(settings)
    try:
        expected = {f"{token}-i": Counter({"rating": 1, "rating_sum": 4})}
        await wait_for_counts(store, expected, 60, "the rating given as 4.0")
    finally:
        await store.close()
    (letter,) = _dead_letters(settings, catalogue, token.encode())
    headers = dict(letter.headers)
    assert headers["dlq.reason"] == b"too_large"
    assert int(headers["dlq.truncated_from"]) == len(big)
    assert headers["dlq.sha256"].decode() == hashlib.sha256(big).hexdigest()
    assert letter.value == big[:settings.validation.max_event_bytes]
    assert worker.alive
