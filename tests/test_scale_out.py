"""Two workers in one consumer group split the partitions and together count every event once."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import ManagedProcess
from engine.replay.publish import publish

from .conftest import WORKER_JOIN_TIMEOUT_S, assigned_partitions, expected_partitions, worker_env
from .helpers import expected_item_counts, open_store, tagged_rees46, wait_for, wait_for_counts

pytestmark = pytest.mark.integration


async def test_two_workers_share_partitions_and_state(
        isolated: Settings, catalogue: Catalogue, tmp_path: Path) -> None:
    workers = [ManagedProcess(f"worker-{i}", [sys.executable, "-m", "engine", "--log-level", "info",
                                              "worker"], tmp_path / f"worker-{i}.log",
                              env=worker_env(isolated)) for i in range(2)]
    store = open_store(isolated)
    try:
        for w in workers:
            w.start()

        def both_assigned() -> bool:
            client = redis.Redis.from_url(isolated.redis.url)
            beats = [orjson.loads(v) for v in
                     client.hgetall(f"{isolated.redis.namespace}:workers").values()]
            client.close()
            inputs = [b for b in beats if b["role"] != "pricing"]   # each has a pricing child
            return (len([b for b in inputs if b["assigned"]]) == 2
                    and assigned_partitions(isolated) >= expected_partitions(catalogue))

        workers[0].wait_ready(both_assigned, timeout=WORKER_JOIN_TIMEOUT_S)
        records = tagged_rees46(uuid.uuid4().hex[:8], limit=3000)
        publish(records, bootstrap=isolated.kafka.url, kafka_options={}, progress=False)
        await wait_for_counts(store, expected_item_counts(records, catalogue), 60,
                              "two workers to apply every event")

        async def beats() -> list[dict]:   # the input workers' (not their pricing children's)
            raw = await store.client.hgetall(store.key("workers"))
            return [b for v in raw.values() for b in [orjson.loads(v)] if b["role"] != "pricing"]

        async def both_applied() -> bool:   # heartbeats are every 2 s: wait for fresh ones
            return all(b["applied"] > 0 for b in await beats())

        await wait_for(both_applied, 15, "both workers to report applied events")
        shares = [set(b["assigned"]) for b in await beats()]
        assert len(shares) == 2 and not (shares[0] & shares[1]), "partitions split, not shared"
    finally:
        for w in workers:
            w.stop()
        await store.close()
