"""Fault 1: the worker (with its item-stage and view children) SIGKILLed at random moments, and
right after an offset commit, during a replay of real events; each time a new one starts. The
state must equal a clean single pass, every model must have learned from each event once, no
decision may be published twice, and every decision the state shows must be on its topic."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from engine.config import Settings
from engine.contracts import Catalogue, Validator
from engine.replay.sources import Record

from .conftest import Reference
from .harness import (
    FULL,
    Stack,
    applied_decisions,
    count_differences,
    decision_ids,
    differences,
    read_back,
    save_figures,
    snapshot,
    wait_caught_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CRASHES = 20 if FULL else 3
AFTER_COMMIT = 3 if FULL else 1
#: Crashes the moment `prices` grows: aimed between a batch's publish and its apply.
AFTER_PUBLISH = 3 if FULL else 0
#: Seconds a worker lives after joining before a random crash.
LIFETIME = (0.5, 4.0)


def committed(consumer: KafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The group's committed offsets (an offset fetch: the consumer never joins the group)."""
    return {tp: consumer.committed(tp) or -1 for tp in tps}


def crash_right_after_a_commit(stack: Stack, catalogue: Catalogue, timeout: float = 30.0
                               ) -> bool:
    """Watch the group's committed offsets and crash the worker the moment they move."""
    consumer = KafkaConsumer(bootstrap_servers=stack.settings.kafka.url,
                             group_id=stack.settings.worker.group_id, enable_auto_commit=False)
    tps = [TopicPartition(t.name, p) for t in catalogue.inputs for p in range(t.partitions)]
    try:
        before = committed(consumer, tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = committed(consumer, tps)
            if any(now[tp] > before[tp] for tp in tps):
                stack.crash_worker(stack.workers[0])
                return True
            before = now
            time.sleep(0.01)
        return False
    finally:
        consumer.close()


def crash_right_after_a_publish(stack: Stack, timeout: float = 30.0) -> bool:
    """Watch the end of `prices` and crash the worker the moment it moves: the pricing stage
    applies its batch a few milliseconds after the broker acknowledges the publish."""
    consumer = KafkaConsumer(bootstrap_servers=stack.settings.kafka.url)
    tps = [TopicPartition("prices", p) for p in sorted(consumer.partitions_for_topic("prices"))]
    try:
        before = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = consumer.end_offsets(tps)
            if now != before:
                stack.crash_worker(stack.workers[0])
                return True
        return False
    finally:
        consumer.close()


def positives(records: list[Record], catalogue: Catalogue, settings: Settings) -> int:
    """Clicks the FunkMF model learns from: valid, with an item, not a low rating."""
    validator = Validator(catalogue, settings.validation)
    return sum(1 for r in records if r.topic == "clicks" and "item_id" in r.event
               and validator.check_event("clicks", r.event) is None
               and not (r.event["event_type"] == "rating" and r.event["rating"] < 3))


def mf_updates(state: dict[str, Any]) -> int:
    return sum(int(v.get("mf_updates", 0)) for k, v in state.items()
               if k.startswith("{clicks:") and k.endswith("}:stats"))


async def test_worker_crashes(stack: Stack, clean: Reference, catalogue: Catalogue,
                              base_settings: Settings) -> None:
    rng = random.Random(7)
    records = clean.records
    store = stack.store()
    stack.start_worker()
    publisher = stack.publish(records, rate=len(records) / (CRASHES * 12.0))
    kinds = ["commit"] * AFTER_COMMIT + ["publish"] * AFTER_PUBLISH \
        + ["random"] * (CRASHES - AFTER_COMMIT - AFTER_PUBLISH)
    rng.shuffle(kinds)
    injected = {"random": 0, "commit": 0, "publish": 0}
    started = time.monotonic()
    for kind in kinds:
        if kind == "commit":
            if not crash_right_after_a_commit(stack, catalogue):
                raise AssertionError("no offset commit within 30 s to crash after")
        elif kind == "publish":
            time.sleep(rng.uniform(*LIFETIME))   # the new worker is publishing by then
            if not crash_right_after_a_publish(stack):
                raise AssertionError("no price change published within 30 s to crash after")
        else:
            time.sleep(rng.uniform(*LIFETIME))
            stack.crash_worker(stack.workers[0])
        injected[kind] += 1
        stack.start_worker()
    publisher.join()
    await wait_caught_up(stack.settings, catalogue, store, 600, "the last worker")
    elapsed = time.monotonic() - started
    state = await snapshot(store, catalogue)
    ids = decision_ids(stack.settings)
    signal_ids = decision_ids(stack.settings, "stocking-signals")
    applied = await applied_decisions(store, catalogue)
    await store.close()

    diffs = count_differences(state, clean.state)
    repeated = {i: n for i, n in ids.items() if n > 1}
    signals_repeated = {i: n for i, n in signal_ids.items() if n > 1}
    save_figures("worker_crashes", {
        "events_replayed": len(records), "crashes": injected, "seconds": round(elapsed, 1),
        "keys_compared": len(clean.state), "differences": diffs,
        "decisions": len(ids), "decisions_clean_run": clean.decisions,
        "decision_ids_repeated": len(repeated), "stocking_signals": len(signal_ids),
        "stocking_signal_ids_repeated": len(signals_repeated),
        "decisions_read_back_on_assignment": read_back(stack.run_dir),
        "applied_decisions_not_published": {
            t: len(applied[t] - set(on)) for t, on in (("prices", ids),
                                                       ("stocking-signals", signal_ids))}})
    found = differences(state, clean.state)
    print("\n".join(found))
    assert found == []
    assert mf_updates(state) == positives(records, catalogue, base_settings) > 0
    assert repeated == {}
    assert signals_repeated == {}
    # nothing the state shows as decided is missing from its topic (a skip never loses one)
    assert applied["prices"] and applied["prices"] <= set(ids)
    assert applied["stocking-signals"] <= set(signal_ids)
