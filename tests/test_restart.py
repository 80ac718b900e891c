"""A worker SIGKILLed mid-stream and restarted ends with the same state as a clean run.

Kafka re-delivers what the dead worker had not committed; the Redis watermark skips what it had
already applied. The clean run applies the same events once, through the same pure core and the
same script, in a namespace of its own.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import threading
import uuid
from pathlib import Path

import orjson
import pytest

from engine.config import Settings
from engine.contracts import Catalogue, Rejection, Validator
from engine.core.activity import dead_letter_ops, ops_for
from engine.replay.publish import publish
from engine.store import StateStore
from engine.views import pipeline_stats

from .conftest import start_worker
from .helpers import expected_item_counts, item_counts, open_store, tagged_rees46, wait_for

pytestmark = pytest.mark.integration

EVENTS = 6000


async def _clean_run(settings: Settings, catalogue: Catalogue, records: list) -> StateStore:
    clean = StateStore.open(dataclasses.replace(settings.redis, namespace="clean"))
    validator = Validator(catalogue, settings.validation)
    for topic in {r.topic for r in records}:
        batch = []
        for offset, r in enumerate(x for x in records if x.topic == topic):
            rejection = validator.check_event(topic, r.event)
            ops = (dead_letter_ops(rejection.reason) if isinstance(rejection, Rejection)
                   else ops_for(topic, r.event))
            batch.append((offset, ops))
        await clean.apply(topic, 0, batch)
    return clean


async def test_sigkill_mid_stream_then_restart_equals_clean_run(
        isolated: Settings, catalogue: Catalogue, tmp_path: Path) -> None:
    token = uuid.uuid4().hex[:8]
    records = tagged_rees46(token, limit=EVENTS)
    store = open_store(isolated)
    first = start_worker(isolated, catalogue, tmp_path / "worker-1.log")
    publisher = threading.Thread(target=publish, args=(records,), kwargs={
        "bootstrap": isolated.kafka.url, "kafka_options": {}, "rate": 1500.0,
        "progress": False})
    publisher.start()

    async def some_applied() -> bool:
        return (await pipeline_stats(store, catalogue))["events_in"] >= EVENTS // 4

    await wait_for(some_applied, 60, "a quarter of the events")
    first.popen.send_signal(signal.SIGKILL)   # no shutdown hook, no final commit
    first.popen.wait()
    at_kill = (await pipeline_stats(store, catalogue))["events_in"]
    assert at_kill < EVENTS, "the crash must happen mid-stream"

    second = start_worker(isolated, catalogue, tmp_path / "worker-2.log")
    try:
        publisher.join()

        async def all_applied() -> bool:
            return (await pipeline_stats(store, catalogue))["events_in"] >= EVENTS

        await wait_for(all_applied, 90, "every event after the restart")
        clean = await _clean_run(isolated, catalogue, records)
        expected = expected_item_counts(records, catalogue)
        got = await item_counts(store, list(expected))
        want = await item_counts(clean, list(expected))
        assert got == want
        counted = {i: {k: v for k, v in c.items() if k != "revenue"} for i, c in got.items()}
        assert counted == {i: {k: float(v) for k, v in c.items()} for i, c in expected.items()}
        live = await pipeline_stats(store, catalogue)
        reference = await pipeline_stats(clean, catalogue)
        assert live["events_in"] == EVENTS
        assert (live["valid"], live["dead_lettered"], live["dlq"]) == (
            reference["valid"], reference["dead_lettered"], reference["dlq"])
        await clean.close()
        beats = await store.client.hgetall(store.key("workers"))
        restarted = orjson.loads(beats[f"{socket.gethostname()}:{second.pid}"])
        # The restarted worker was handed records the first had applied but not committed.
        assert restarted["duplicates"] > 0, restarted
    finally:
        second.stop()
        await store.close()


async def test_a_worker_whose_pricing_child_dies_exits_instead_of_running_half(
        isolated: Settings, catalogue: Catalogue, tmp_path: Path) -> None:
    import os
    import time

    worker = start_worker(isolated, catalogue, tmp_path / "worker.log")
    store = open_store(isolated)
    try:
        beats = [orjson.loads(v) for v in
                 (await store.client.hgetall(store.key("workers"))).values()]
        (child,) = [b for b in beats if b["role"] == "pricing"]
        assert any(tp.startswith("price-signals:") for tp in child["assigned"])
        os.kill(child["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while worker.alive and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not worker.alive
        assert worker.returncode == 70
    finally:
        worker.stop()
        await store.close()
