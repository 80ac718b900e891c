"""The benchmark workload: real replay events, their partitions, offsets and state ops."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any, TypeVar

import orjson
from kafka.partitioner.default import murmur2

from engine.config import Settings
from engine.contracts import Rejection, Validator, load_catalogue
from engine.core.activity import Op, dead_letter_ops, ops_for
from engine.replay.run import build_records
from engine.store import StateStore
from engine.worker.processor import RawRecord

TP = tuple[str, int]
T = TypeVar("T")
Figures = dict[str, float]
RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("rees46", "online_retail", "competitor_prices")
APPLY_BATCHES = (1, 10, 100, 500)
#: The processor is fed, and the HINCRBY floors pipelined, in apply's batch=100 round trips,
#: so the ratios compare the same number of calls.
BATCH = 100
PING_CALLS = 2_000
#: Small batches cost a round trip per event or per ten; their figures are taken on an evenly
#: spaced subset of at most this many events (same topic mix) to keep the default run near a
#: minute. Events/s no longer depends on the count once it is in the thousands.
APPLY_EVENTS = {1: 5_000, 10: 16_000}
#: Pipelined HINCRBY through redis.asyncio is client-bound (redis-py packs and parses each
#: command in Python, ~15 µs apiece); every third round trip is plenty to measure that.
CLIENT_FLOOR_STRIDE = 3


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def publish_results(name: str, result: dict[str, Any], *, as_json: bool, text: str,
                    markdown: str) -> None:
    """Write results/<name>.json and .md; print the text table, or one JSON object."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (RESULTS / f"{name}.md").write_text(markdown)
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(text)
    say(f"written: {RESULTS / (name + '.json')} and {name}.md")


# --- workload ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    """Raw records in replay order, and what the processor will make of each of them."""

    records: list[tuple[str, RawRecord]]
    #: Per record: the validated event or the Rejection, as ``Validator.check`` returned it.
    checked: list[dict[str, Any] | Rejection]
    #: Per record: the ops the processor applies (dead-letter ops for a rejected record).
    ops: list[list[Op]]

    def by_partition(self, item: Callable[[int], T], indices: Iterable[int] | None = None
                     ) -> dict[TP, list[T]]:
        """``item(i)`` for each record index, grouped by topic partition in offset order."""
        groups: dict[TP, list[T]] = {}
        for i in range(len(self.records)) if indices is None else indices:
            topic, record = self.records[i]
            groups.setdefault((topic, record.partition), []).append(item(i))
        return groups


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and kafka-python alike) picks."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def evenly(items: Sequence[T], n: int | None) -> list[T]:
    """``n`` items spread evenly over ``items``: a prefix would be all catalogue events."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def build_workload(settings: Settings, validator: Validator, events: int | None) -> Workload:
    catalogue = load_catalogue()
    now_ms = int(time.time() * 1000)  # the producer stamps create time, not event time
    offsets: Counter[TP] = Counter()
    records: list[tuple[str, RawRecord]] = []
    for rec in evenly(build_records(settings, list(SOURCES)), events):
        key = rec.key.encode()
        tp = (rec.topic, kafka_partition(key, catalogue.topics[rec.topic].partitions))
        records.append((rec.topic, RawRecord(tp[1], offsets[tp], now_ms, key,
                                             orjson.dumps(rec.event))))
        offsets[tp] += 1
    checked = [validator.check(t, r.value, r.timestamp_ms) for t, r in records]
    ops = [dead_letter_ops(c.reason) if isinstance(c, Rejection) else ops_for(t, c)
           for (t, _), c in zip(records, checked, strict=True)]
    return Workload(records, checked, ops)


def interleave(groups: Mapping[TP, Sequence[T]], size: int) -> list[tuple[TP, list[T]]]:
    """Cut each partition's items into batches of ``size``, then take the partitions round
    robin, the order in which a worker owning all of them would see batches arrive."""
    chunked = [[(tp, list(items[i:i + size])) for i in range(0, len(items), size)]
               for tp, items in groups.items()]
    return [b for row in zip_longest(*chunked) for b in row if b is not None]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every stage's input, cut before any clock starts."""

    valid: list[tuple[str, dict[str, Any]]]
    floor_chunks: list[list[tuple[str, str]]]
    apply_batches: dict[int, list[tuple[TP, list[tuple[int, list[Op]]]]]]
    processor_batches: list[tuple[TP, list[RawRecord]]]

    @classmethod
    def of(cls, work: Workload, store: StateStore) -> Plan:
        valid = [(t, c) for (t, _), c in zip(work.records, work.checked, strict=True)
                 if not isinstance(c, Rejection)]
        floor = interleave(work.by_partition(lambda i: work.ops[i]), BATCH)
        chunks = [[(store.shard(topic, part) + op[1], op[2]) for ops in batch for op in ops]
                  for (topic, part), batch in floor]
        apply = {size: interleave(work.by_partition(
                     lambda i: (work.records[i][1].offset, work.ops[i]),
                     evenly(range(len(work.records)), APPLY_EVENTS.get(size))), size)
                 for size in APPLY_BATCHES}
        processor = interleave(work.by_partition(lambda i: work.records[i][1]), BATCH)
        return cls(valid, chunks, apply, processor)


