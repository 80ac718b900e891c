"""Fault 7 (a deployment shape rather than a fault): the same replay through a worker whose
state lives in a Redis Cluster of three primaries started from the same server binary. Every
script call touches one hash tag, so there must be no CROSSSLOT error, and the state must equal
the clean run on a single Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.config import Settings
from engine.contracts import Catalogue

from .conftest import Reference
from .harness import Stack, count_differences, differences, save_figures, snapshot, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.faults]


async def test_end_to_end_on_a_redis_cluster(base_settings: Settings, catalogue: Catalogue,
                                             clean: Reference, cluster_url: str,
                                             tmp_path: Path) -> None:
    stack = Stack(base_settings, catalogue, tmp_path, cluster_url=cluster_url)
    store = stack.store()
    try:
        stack.start_worker()
        started = time.monotonic()
        stack.publish(clean.records).join()
        await wait_caught_up(stack.settings, catalogue, store, 600, "the worker on the cluster")
        elapsed = time.monotonic() - started
        state = await snapshot(store, catalogue)
        slots = {await store.client.cluster_keyslot(k) for k in
                 [store.shard(t.name, p) + "wm" for t in catalogue.consumed
                  for p in range(t.partitions)]}
        nodes = len(store.client.get_primaries())
    finally:
        await store.close()
        stack.close()
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
    save_figures("redis_cluster", {
        "events_replayed": len(clean.records), "primaries": nodes, "shard_slots": len(slots),
        "seconds": round(elapsed, 1), "crossslot_errors": logs.count("CROSSSLOT"),
        "differences": count_differences(state, clean.state)})
    assert "CROSSSLOT" not in logs
    assert nodes == 3 and len(slots) > 3
    assert differences(state, clean.state) == []
