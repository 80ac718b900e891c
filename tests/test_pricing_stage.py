"""The pricing stage on real Redis (no broker: what it publishes is collected in order): the
real competitor-price data through forwarding, the stage and the exactly-once apply; re-sent
signals, re-delivered records and whole replays publish no decision a consumer cannot
recognise."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from engine.config import Settings
from engine.contracts import Catalogue, Rejection, Validator, load_catalogue
from engine.core.compose import PRICE_SIGNALS, decision_core
from engine.pricing.query import PriceReader
from engine.pricing.stage import PricingStage, forwarded_records, published_prices
from engine.replay.catalog import derive_catalog
from engine.replay.competitors import competitor_prices
from engine.store import StateStore
from engine.worker.processor import BatchProcessor, RawRecord, Stage

from .conftest import DATASETS, drop_namespace

pytestmark = pytest.mark.integration

PRODUCTS = ("health5", "computers4", "watches1")   # real Kaggle products; health5's feed has
                                                  # a 17x jump (349.90 -> 19.99) and back


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int


class Broker:
    """Collects what the stage sends, in order, in one log per topic and partition (the key's
    partition as the default partitioner places it); the stage awaits the returned acks.
    ``tail`` reads the logs back as ``engine.kafka_client.read_tail`` reads a broker's."""

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        self.catalogue = catalogue or load_catalogue()
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.logs: dict[tuple[str, int], list[bytes]] = {}

    async def __call__(self, topic: str, records: list[tuple[bytes | None, bytes, int | None]]
                       ) -> Awaitable[object]:
        acks = []
        for key, value, partition in records:
            self.sent.append((topic, orjson.loads(value)))
            if partition is None:
                partition = self.catalogue.partition_of(topic, (key or b"").decode())
            log = self.logs.setdefault((topic, partition), [])
            acks.append(Ack(partition, len(log)))
            log.append(value)
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(acks)
        return done

    async def tail(self, topic: str, starts: dict[int, int | None], recent: int
                   ) -> tuple[list[bytes], dict[int, int]]:
        out = []
        for p, start in starts.items():
            log = self.logs.get((topic, p), [])
            if start is None or not 0 <= start <= len(log):
                start = max(0, len(log) - recent)
            out += log[start:]
        return out, {p: len(self.logs.get((topic, p), [])) for p in starts}

    @property
    def changes(self) -> list[dict[str, Any]]:
        return [body for topic, body in self.sent if topic == "prices"]


async def _no_letters(topic: str, record: RawRecord, rejection: Rejection) -> Awaitable[object]:
    raise AssertionError(f"unexpected dead letter on {topic}: {rejection}")


def real_inputs() -> list[tuple[str, dict[str, Any]]]:
    """The derived catalogue records and the real competitor feed of ``PRODUCTS``."""
    root = DATASETS
    out = [("catalog", r.event) for r in derive_catalog(root, ["competitor_prices"])
           if r.event["item_id"] in PRODUCTS]
    out += [("competitor-prices", r.event) for r in competitor_prices(
        root / "competitor_prices" / "retail_price_competitors.csv")
        if r.event["item_id"] in PRODUCTS]
    return out


def signal_records(catalogue: Catalogue, inputs: Sequence[tuple[str, dict[str, Any]]],
                   batch: int) -> dict[int, list[bytes]]:
    """price-signals records per partition, as the forwarder makes them from input batches
    of ``batch`` events (each input event keeps its offset in its own topic, partition 0)."""
    by_partition: dict[int, list[bytes]] = {}
    offsets: dict[str, int] = {}
    rows: list[tuple[str, int, dict[str, Any]]] = []
    for topic, event in inputs:
        rows.append((topic, offsets.setdefault(topic, 0), event))
        offsets[topic] += 1
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        for topic in dict.fromkeys(t for t, _, _ in chunk):
            events = [(0, offset, e) for t, offset, e in chunk if t == topic]
            for dest, raw in forwarded_records(catalogue, topic, events):
                by_partition.setdefault(dest, []).append(raw)
    return by_partition


async def run(store: StateStore, catalogue: Catalogue, settings: Settings,
              records: dict[int, list[bytes]], broker: Broker, start: int = 0,
              batch: int = 10, stage: Stage | None = None) -> None:
    """Feed price-signals records to a processor with ``stage`` (the pricing stage by
    default), ``batch`` records at a time, from offset ``start`` of each partition."""
    stage = stage or PricingStage(settings.pricing, broker)
    processor = BatchProcessor(store, Validator(catalogue, settings.validation), _no_letters,
                               core=decision_core(settings), stages=[stage])
    await processor.load_watermarks([(PRICE_SIGNALS, p) for p in records])
    for partition, raws in sorted(records.items()):
        rows = [RawRecord(partition, start + i, 1_600_000_000_000, None, raw)
                for i, raw in enumerate(raws)]
        for k in range(0, len(rows), batch):
            await processor.process(PRICE_SIGNALS, rows[k:k + batch])


async def test_real_feed_prices_items_and_screens_the_outliers(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    broker = Broker()
    await run(store, catalogue, settings, signal_records(catalogue, real_inputs(), 25), broker)
    changes = broker.changes
    assert {c["item_id"] for c in changes if c["old_price"] is None} == set(PRODUCTS)
    for c in changes:
        assert Validator(catalogue, settings.validation).check_event("prices", c) is None
    reader = PriceReader(store, catalogue, settings.pricing)
    health = await reader.current("health5")
    assert health is not None
    reasons = [r["reason"] for r in health["rejected_competitor_prices"]]
    assert "outlier_jump" in reasons            # 349.90 after 23.99, from the real feed
    assert all(c["competitor"] != "comp_1" or c["price"] < 100 for c in health["competitors"])
    history = await reader.history("health5", 100)
    assert [h["decision_id"] for h in history] == [
        c["decision_id"] for c in reversed(changes) if c["item_id"] == "health5"]
    for c in changes:   # every change inside the guardrails: at most one step, within bounds
        if c["old_price"] is not None and "override" not in c["reason"]:
            assert abs(c["new_price"] - c["old_price"]) <= 0.1 * c["old_price"] + 0.005


async def test_resent_signals_and_redelivered_records_publish_nothing_new(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    records = signal_records(catalogue, real_inputs(), 25)
    broker = Broker()
    await run(store, catalogue, settings, records, broker)
    first = list(broker.changes)
    state = await store.client.hgetall(store.shard(PRICE_SIGNALS, 0) + "px")
    await run(store, catalogue, settings, records, broker)            # same offsets again
    assert broker.changes == first
    # the forwarder re-sends after a crash: the same signals at new offsets of price-signals
    await run(store, catalogue, settings, records, broker, start=10_000)
    assert broker.changes == first
    assert await store.client.hgetall(store.shard(PRICE_SIGNALS, 0) + "px") == state


async def test_a_replay_from_scratch_makes_the_same_decisions_with_the_same_ids(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    inputs = real_inputs()
    one, two = Broker(), Broker()
    await run(store, catalogue, settings, signal_records(catalogue, inputs, 25), one)
    other = StateStore(store.client, store.namespace + "-replay")
    try:
        # other input batch boundaries and other stage batch sizes: the same decisions
        await run(other, catalogue, settings, signal_records(catalogue, inputs, 7), two,
                  batch=3)
    finally:
        await drop_namespace(other)
    assert [c["decision_id"] for c in one.changes] == [c["decision_id"] for c in two.changes]
    assert one.changes == two.changes


async def test_a_batch_that_crashed_before_its_apply_publishes_each_decision_once(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    """The stage publishes before its batch is applied; a crash in between runs the batch
    again. Its changes are the same (same decision ids); read back on assignment, they are not
    published again, and the state ends as if there had been no crash."""
    records = signal_records(catalogue, real_inputs(), 25)
    partition, raws = sorted(records.items())[0]
    clean = Broker(catalogue)
    await run(store, catalogue, settings, {partition: raws}, clean)
    shard = store.shard(PRICE_SIGNALS, partition)
    expected = await store.client.hgetall(shard + "px")
    await drop_namespace(store)

    broker = Broker(catalogue)
    first = PricingStage(settings.pricing, broker, published_prices(catalogue, broker.tail))
    await run(store, catalogue, settings, {partition: raws[:3]}, broker, stage=first)
    validator = Validator(catalogue, settings.validation)
    events = [(3 + i, validator.check(PRICE_SIGNALS, raw)) for i, raw in enumerate(raws[3:6])]
    crashed = PricingStage(settings.pricing, broker, published_prices(catalogue, broker.tail))
    before = len(broker.changes)
    await crashed.ops(store, PRICE_SIGNALS, partition, events)   # type: ignore[arg-type]
    assert len(broker.changes) > before   # published, never applied

    published = published_prices(catalogue, broker.tail)
    await published.resume(store, {partition: shard})
    assert published.unapplied and published.unapplied <= {
        c["decision_id"] for c in broker.changes}
    stage = PricingStage(settings.pricing, broker, published)
    # the crashed records run again with the next ones, in one batch
    await run(store, catalogue, settings, {partition: raws[3:]}, broker, start=3, stage=stage)
    ids = [c["decision_id"] for c in broker.changes]
    assert len(ids) == len(set(ids))
    assert ids == [c["decision_id"] for c in clean.changes]
    assert await store.client.hgetall(shard + "px") == expected
    # the next assignment finds nothing unapplied: the marks moved on with the applies
    await published.resume(store, {partition: shard})
    assert published.unapplied == set()


async def test_every_line_of_a_real_invoice_counts_once(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    """An invoice's lines share a source offset; each is its own signal (source_index), so
    lines that meet in one partition all count, and a re-send counts none of them again."""
    from engine.replay.run import build_records

    records = build_records(settings, ["online_retail"], limit=400)
    invoice = max((r.event for r in records if r.topic == "orders"
                   and r.event["event_type"] == "purchase"), key=lambda e: len(e["lines"]))
    items = {line["item_id"] for line in invoice["lines"]}
    inputs = [("catalog", r.event) for r in records
              if r.topic == "catalog" and r.event["item_id"] in items]
    inputs.append(("orders", invoice))
    assert len(items) >= 10
    batches = signal_records(catalogue, inputs, 100)
    broker = Broker()
    await run(store, catalogue, settings, batches, broker)
    await run(store, catalogue, settings, batches, broker, start=10_000)   # re-sent
    reader = PriceReader(store, catalogue, settings.pricing)
    for line in invoice["lines"]:
        st = await reader.state(line["item_id"])
        assert st is not None
        bought = sum(q for l2 in invoice["lines"] if l2["item_id"] == line["item_id"]
                     for q in [l2["quantity"]])
        assert sum(c[1] for c in st.arms.values()) == bought, line["item_id"]


async def test_malformed_and_absurd_signals_are_skipped_with_a_reason(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    t = 1_600_000_000_000
    signals = [
        {"event_id": "a", "event_time_ms": t, "item_id": "tiny", "kind": "catalog",
         "category": "c", "list_price": 0.004},                        # under a cent
        {"event_id": "b", "event_time_ms": t, "item_id": "tiny", "kind": "view",
         "price": 0.004},
        {"event_id": "c", "event_time_ms": t, "item_id": "x", "kind": "view",
         "source_topic": "clicks"},                                    # half a source
        {"event_id": "d", "event_time_ms": t, "item_id": "x", "kind": "override",
         "price": 0.004, "expires_ms": t + 1},                         # rounds to nothing
        {"event_id": "e", "event_time_ms": t, "item_id": "x", "kind": "competitor"},
    ]
    raw = orjson.dumps({"event_id": "r", "event_time_ms": t, "signals": signals})
    broker = Broker()
    await run(store, catalogue, settings, {0: [raw]}, broker)
    assert broker.changes == []
    rejected = await store.client.hgetall(store.shard(PRICE_SIGNALS, 0) + "pxrej")
    assert rejected == {"malformed_signal": "2", "invalid_override": "1"}


def test_records_stay_under_the_size_limit(catalogue: Catalogue) -> None:
    t = 1_600_000_000_000
    events = [(0, k, {"event_id": f"c{k}", "event_time_ms": t, "item_id": f"item-{k}",
                      "category": "x" * 200, "list_price": 1.0}) for k in range(300)]
    records = forwarded_records(catalogue, "catalog", events, max_bytes=4_000)
    assert len(records) > 4
    total = 0
    for _, raw in records:
        assert len(raw) <= 4_000 + 600     # one signal may start a record past the cut
        total += len(orjson.loads(raw)["signals"])
    assert total == 300
