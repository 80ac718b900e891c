"""Fault 3: the consumer group scaled 1 -> 2 -> 1 workers again and again during a replay (every
topic has 4 partitions). A worker that leaves does so gracefully (SIGTERM), as a scale-in does;
partitions move both ways each time. The state must equal a clean single pass, every partition
must be owned by a live worker at the end, and no decision id may be published twice."""

from __future__ import annotations

import time

import pytest

from engine.contracts import Catalogue

from .conftest import Reference
from .harness import (
    FULL,
    Stack,
    count_differences,
    decision_ids,
    differences,
    save_figures,
    snapshot,
    wait_caught_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CYCLES = 5 if FULL else 1


async def test_rebalance(stack: Stack, clean: Reference, catalogue: Catalogue) -> None:
    records = clean.records
    assert all(t.partitions >= 4 for t in catalogue.consumed)
    first = stack.start_worker()
    publisher = stack.publish(records, rate=len(records) / (CYCLES * 40.0))
    started = time.monotonic()
    moves = 0
    for _ in range(CYCLES):
        second = stack.start_worker(wait=False)
        stack.wait_covered(second, workers=2)        # 1 -> 2: partitions split
        moves += 1
        time.sleep(2.0)
        second.stop()                                 # 2 -> 1: the survivor takes them back
        stack.workers.remove(second)
        stack.wait_covered(first, workers=1)
        moves += 1
        time.sleep(2.0)
    publisher.join()
    store = stack.store()
    try:
        await wait_caught_up(stack.settings, catalogue, store, 600, "the remaining worker")
        elapsed = time.monotonic() - started
        state = await snapshot(store, catalogue)
    finally:
        await store.close()
    ids = decision_ids(stack.settings)
    repeated = {i: n for i, n in ids.items() if n > 1}
    save_figures("rebalance", {
        "events_replayed": len(records), "scale_cycles": CYCLES, "rebalances": moves,
        "seconds": round(elapsed, 1), "keys_compared": len(clean.state),
        "differences": count_differences(state, clean.state),
        "decision_ids_repeated": len(repeated)})
    assert first.alive
    found = differences(state, clean.state)
    print("\n".join(found))
    assert found == []
    assert repeated == {}
