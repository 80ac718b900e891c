"""Fault 5: hostile records mixed into a replay of real traffic. Every one must reach its
topic's dead-letter queue with a reason that describes it, the worker must never restart, the
lag must return to zero, and the state of the valid events must equal a run without them."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError

from engine.config import Settings
from engine.contracts import Catalogue, Validator
from engine.replay.sources import Record

from ..conftest import heartbeats
from .conftest import Reference
from .harness import (
    FULL,
    Stack,
    count_differences,
    differences,
    read_all,
    save_figures,
    snapshot,
    wait_caught_up,
)
from .poison import MB, Hostile, corpus

pytestmark = [pytest.mark.integration, pytest.mark.faults]

HOSTILE = 12_000 if FULL else 1_000
UNPICKLED = Path("/tmp/engine-was-unpickled")
#: What hostile records change besides the valid events' state: offsets (watermarks, id
#: positions, the item stages' source marks) and the dead-letter counts themselves.
SHIFTED = ("wm", "dlq", "ids", "stats.dead_lettered")


def valid_state(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        rest = key.split("}:", 1)[-1]
        if rest in SHIFTED:
            continue
        if rest == "stats":
            value = {f: v for f, v in value.items() if f != "dead_lettered"}
        if key == "item-stages":
            value = {f: v for f, v in value.items() if f.startswith("pxstats.steps:")}
        out[key] = value
    return out


def send_mixed(settings: Settings, records: list[Record], hostile: list[tuple[int, Hostile]]
               ) -> tuple[dict[tuple[str, int, int], Hostile], list[tuple[Hostile, str]]]:
    """Real records in order with the hostile ones interleaved; the broker's position of
    every hostile record it took, and the ones it refused (with why)."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.url, linger_ms=5,
                             max_request_size=16 * MB)
    sent: list[tuple[Hostile, Any]] = []
    queue = collections.deque(hostile)
    try:
        for i, r in enumerate(records):
            producer.send(r.topic, key=r.key.encode(), value=orjson.dumps(r.event))
            while queue and queue[0][0] <= i:
                h = queue.popleft()[1]
                sent.append((h, producer.send(h.topic, key=h.key, value=h.value)))
        producer.flush(timeout=120)
    finally:
        producer.close()
    placed, refused = {}, []
    for h, future in sent:
        try:
            meta = future.get(timeout=60)
            placed[(meta.topic, meta.partition, meta.offset)] = h
        except KafkaError as exc:
            refused.append((h, type(exc).__name__))
    return placed, refused


def dead_letters(settings: Settings, catalogue: Catalogue) -> dict[tuple[str, int, int], str]:
    """(source topic, partition, offset) -> reason, for every record on the DLQ topics."""
    out = {}
    for r in read_all(settings, [catalogue.dlq(t.name) for t in catalogue.inputs],
                      max_partition_fetch_bytes=16 * MB, fetch_max_bytes=64 * MB):
        h = {k: v.decode() for k, v in r.headers}
        out[(h["dlq.topic"], int(h["dlq.partition"]), int(h["dlq.offset"]))] = h["dlq.reason"]
    return out


def worker_pids(stack: Stack) -> set[tuple[str, int]]:
    return {(b["role"], b["pid"]) for b in heartbeats(stack.settings)}


async def test_poison(stack: Stack, clean: Reference, catalogue: Catalogue,
                      base_settings: Settings) -> None:
    UNPICKLED.unlink(missing_ok=True)
    records = clean.records
    validator = Validator(catalogue, base_settings.validation)
    schemas = {t.name: jsonschema.Draft202012Validator(catalogue.schema(t.name))
               for t in catalogue.inputs}
    hostile = corpus(records, HOSTILE, lambda topic, e: schemas[topic].is_valid(e),
                     lambda r: validator.check_event(r.topic, r.event) is None)
    worker = stack.start_worker()
    before = worker_pids(stack)
    started = time.monotonic()
    placed, refused = send_mixed(stack.settings, records, hostile)
    store = stack.store()
    try:
        await wait_caught_up(stack.settings, catalogue, store, 600, "the worker")
        elapsed = time.monotonic() - started
        state = await snapshot(store, catalogue)
    finally:
        await store.close()
    letters = dead_letters(stack.settings, catalogue)
    after = worker_pids(stack)

    wrong_reason = {pos: (h.kind, letters.get(pos)) for pos, h in placed.items()
                    if letters.get(pos) not in h.reasons}
    by_kind = collections.Counter(h.kind for _, h in hostile)
    reasons = collections.Counter(letters[pos] for pos in placed if pos in letters)
    diffs = count_differences(valid_state(state), valid_state(clean.state))
    save_figures("poison", {
        "real_events": len(records), "hostile_sent": len(hostile),
        "hostile_by_kind": dict(sorted(by_kind.items())),
        "refused_by_broker": [(h.kind, why) for h, why in refused],
        "dead_lettered_with_expected_reason": len(placed) - len(wrong_reason),
        "wrong_or_missing": len(wrong_reason), "reasons": dict(sorted(reasons.items())),
        "worker_restarts": len(before ^ after), "seconds": round(elapsed, 1),
        "differences": diffs})
    assert wrong_reason == {}
    assert len(placed) + len(refused) == len(hostile)
    assert all(h.value is not None and len(h.value) > 8 * MB for h, _ in refused), refused
    assert worker.alive and before == after, (before, after)
    assert differences(valid_state(state), valid_state(clean.state)) == []
    assert not UNPICKLED.exists()
