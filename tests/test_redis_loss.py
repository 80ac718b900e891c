"""Redis behind Kafka: when Redis lost writes whose offsets Kafka already committed, a worker
resumes from the Redis watermark, not from the committed offset, so nothing is lost."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from faust.types import TP

from engine.config import Settings
from engine.contracts import Catalogue
from engine.replay.publish import publish
from engine.worker.app import resume_offsets

from .conftest import start_worker
from .helpers import expected_item_counts, open_store, tagged_rees46, wait_for_counts


def test_resume_offsets_rewinds_only_where_redis_is_behind() -> None:
    a, b, c, d = TP("clicks", 0), TP("clicks", 1), TP("orders", 0), TP("orders", 1)
    marks = {a: 99, b: 150, c: -1, d: -1}
    committed = {a: 151, b: 151, c: 40, d: None}
    # a: Redis lost 100..150; b: in step; c: Redis empty, Kafka committed; d: fresh partition
    assert resume_offsets(marks, committed) == {a: 100, c: 0}


@pytest.mark.integration
async def test_worker_replays_what_redis_lost(isolated: Settings, catalogue: Catalogue,
                                             tmp_path: Path) -> None:
    records = tagged_rees46(uuid.uuid4().hex[:8], limit=2000)
    expected = expected_item_counts(records, catalogue)
    store = open_store(isolated)
    try:
        first = start_worker(isolated, catalogue, tmp_path / "worker-1.log")
        publish(records, bootstrap=isolated.kafka.url, kafka_options={}, progress=False)
        await wait_for_counts(store, expected, 60, "the first worker to apply every event")
        await asyncio.sleep(2.5)          # past commit_interval_s: Kafka has the offsets
        first.stop()                      # graceful: commits its final offsets
        await store.client.flushall()     # Redis loses everything (think: a lost AOF)

        second = start_worker(isolated, catalogue, tmp_path / "worker-2.log")
        try:
            await wait_for_counts(store, expected, 60, "the restarted worker to rebuild state")
        finally:
            second.stop()
        assert "Redis is behind Kafka" in (tmp_path / "worker-2.log").read_text()
    finally:
        await store.close()
