"""Test data derived from the real data sets, and waiting on live state."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from engine.config import Settings, load_settings
from engine.contracts import Catalogue, Validator
from engine.replay.sources import Record, rees46
from engine.store import StateStore

from .conftest import DATASETS

REES46 = DATASETS / "rees46" / "events_2019-10-01_first17k.csv.gz"


def tagged_rees46(token: str, limit: int, regions: Sequence[str] = ("north", "south")
                  ) -> list[Record]:
    """Real REES46 events with ids prefixed by ``token`` (DERIVED: keeps tests independent)."""
    out = []
    for r in rees46(REES46, regions, limit=limit):
        event = dict(r.event, event_id=f"{token}:{r.event['event_id']}",
                     user_id=f"{token}-{r.event['user_id']}")
        if "item_id" in event:
            event["item_id"] = f"{token}-{event['item_id']}"
        if "lines" in event:
            event["lines"] = [dict(line, item_id=f"{token}-{line['item_id']}")
                              for line in event["lines"]]
        out.append(Record(r.topic, event["user_id"], event, r.event_time_ms))
    return out


def expected_item_counts(records: Sequence[Record], catalogue: Catalogue
                         ) -> dict[str, Counter[str]]:
    """What the item counters must read after the records: contract-valid events only (the
    real data's own defects, such as REES46 views at price 0, are dead-lettered)."""
    validator = Validator(catalogue, load_settings().validation)
    counts: dict[str, Counter[str]] = {}
    for r in records:
        e = r.event
        if validator.check_event(r.topic, e) is not None:
            continue
        if r.topic == "clicks":
            counts.setdefault(e["item_id"], Counter())[e["event_type"]] += 1
        elif r.topic == "carts":
            counts.setdefault(e["item_id"], Counter())[f"cart_{e['event_type']}"] += e["quantity"]
        elif r.topic == "orders":
            for line in e["lines"]:
                counts.setdefault(line["item_id"], Counter())["units_sold"] += line["quantity"]
    return counts


def invalid_examples(catalogue: Catalogue) -> list[tuple[str, bytes, str]]:
    """(topic, raw bytes, expected reason) for every invalid example in streams/examples."""
    out = []
    for spec in catalogue.inputs:
        path = catalogue.root / "examples" / f"{spec.name}.invalid.jsonl"
        for line in path.read_bytes().splitlines():
            case = orjson.loads(line)
            raw = case["raw"].encode() if "raw" in case else orjson.dumps(case["event"])
            out.append((spec.name, raw, case["expect"]))
    return out


async def item_counts(store: StateStore, items: Sequence[str]) -> dict[str, dict[str, float]]:
    result = {}
    for item in items:
        merged: dict[str, float] = {}
        for topic in ("clicks", "carts", "orders"):
            for k, v in (await store.merged_counts(topic, 4, f"item:{item}")).items():
                merged[k] = merged.get(k, 0.0) + v
        result[item] = merged
    return result


async def wait_for_counts(store: StateStore, expected: dict[str, Counter[str]],
                          timeout: float, what: str) -> None:
    async def caught_up() -> bool:
        got = await item_counts(store, list(expected))
        return all(got[i].get(k, 0) == v for i, c in expected.items() for k, v in c.items())

    await wait_for(caught_up, timeout, what)


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float,
                   what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)


def open_store(settings: Settings) -> StateStore:
    return StateStore.open(settings.redis)


def consumer_at_end(settings: Settings, topic: str) -> KafkaConsumer:
    """A plain kafka-python consumer of ``topic`` (no group), from its current end: what the
    README shows a team that subscribes to an output topic."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.url, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:             # resolve the end offsets now, before anything is produced
        consumer.position(tp)
    return consumer


def wait_for_message(consumer: KafkaConsumer, match: Callable[[dict[str, Any]], bool],
                     what: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Poll until a message matches; returns every message seen so far (JSON values)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            seen += [orjson.loads(r.value) for r in records]
        if any(match(m) for m in seen):
            return seen
    raise AssertionError(f"no message for {what} within {timeout_s:.0f} s; saw {seen}")
