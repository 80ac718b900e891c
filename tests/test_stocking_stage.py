"""The stocking stage on real Redis (no broker: what it publishes is collected in order), fed
the real Online Retail invoices through the forwarder: a centre that runs short opens a signal,
restocking clears it, re-sends and replays publish nothing a consumer cannot recognise, and the
readers behind the API agree with the stage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.config import Settings
from engine.contracts import Catalogue, Validator, load_catalogue
from engine.core.compose import PRICE_SIGNALS, decision_core
from engine.replay.run import build_records
from engine.stocking.query import StockingReader
from engine.stocking.stage import STOCKING_SIGNALS, StockingStage, published_signals
from engine.store import StateStore
from engine.worker.processor import BatchProcessor, RawRecord

from .conftest import drop_namespace
from .test_pricing_stage import Broker, signal_records
from .test_pricing_stage import run as pricing_run

pytestmark = pytest.mark.integration


def uk_orders(settings: Settings, limit: int = 6000) -> tuple[str, list[dict[str, Any]],
                                                               list[dict[str, Any]]]:
    """The item on most of the first real invoices, its catalogue record, and the invoices
    (UK purchases) that contain it."""
    records = build_records(settings, ["online_retail"], limit=limit)
    validator = Validator(load_catalogue(), settings.validation)
    orders = [r.event for r in records if r.topic == "orders"
              and r.event["event_type"] == "purchase" and r.event["region"] == "united-kingdom"
              and validator.check_event("orders", r.event) is None]   # as the worker would
    counts: dict[str, int] = {}
    for o in orders:
        for line in o["lines"]:
            counts[line["item_id"]] = counts.get(line["item_id"], 0) + 1
    item = max(sorted(counts), key=counts.__getitem__)
    mine = [o for o in orders if any(line["item_id"] == item for line in o["lines"])]
    catalog = [r.event for r in records if r.topic == "catalog" and r.event["item_id"] == item]
    return item, catalog, mine


def stock(item: str, dc: str, on_hand: int, t: int, n: int) -> dict[str, Any]:
    """An inventory level (the data sets have none: this one is the test's own)."""
    return {"event_id": f"inv-{n}", "event_time_ms": t, "item_id": item, "dc": dc,
            "on_hand": on_hand, "in_transit": 0}


async def run(store: StateStore, catalogue: Catalogue, settings: Settings,
              records: dict[int, list[bytes]], broker: Broker, start: int = 0,
              batch: int = 10) -> None:
    await pricing_run(store, catalogue, settings, records, broker, start, batch,
                      stage=StockingStage(settings, broker))


def signals(broker: Broker) -> list[dict[str, Any]]:
    return [body for topic, body in broker.sent if topic == STOCKING_SIGNALS]


def scenario(settings: Settings) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """Stock is set when the first invoice arrives (10 in the UK centre, plenty abroad); the
    real invoices follow; then the UK centre is restocked."""
    item, catalog, orders = uk_orders(settings)
    t0, t_end = orders[0]["event_time_ms"], orders[-1]["event_time_ms"]
    inputs: list[tuple[str, dict[str, Any]]] = [("catalog", e) for e in catalog]
    inputs += [("inventory", stock(item, "dc-uk", 10, t0 - 1, 0)),
               ("inventory", stock(item, "dc-intl", 100_000, t0 - 1, 1))]
    inputs += [("orders", o) for o in orders]
    inputs.append(("inventory", stock(item, "dc-uk", 1_000_000, t_end + 1, 2)))
    return item, inputs


async def test_a_short_centre_gets_a_signal_and_restocking_clears_it(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    item, inputs = scenario(settings)
    broker = Broker()
    records = signal_records(catalogue, inputs[:-1], 25)
    await run(store, catalogue, settings, records, broker)
    published = signals(broker)
    validator = Validator(catalogue, settings.validation)
    for s in published:
        assert validator.check_event(STOCKING_SIGNALS, s) is None, s
    opened = [s for s in published if s["status"] == "open"]
    assert opened and all(s["item_id"] == item and s["dc"] == "dc-uk" for s in opened)
    first = opened[0]
    assert first["source_dc"] == "dc-intl" and first["suggested_transfer_qty"] > 0
    assert first["forecast"]["upper"] > first["on_hand"] == 10
    assert first["region"] == "united-kingdom" and first["horizon_days"] == 2
    # one signal, re-published at most once an hour of event time
    assert len({s["signal_id"] for s in opened}) == 1
    times = [s["event_time_ms"] for s in opened]
    assert all(b - a >= 3_600_000 for a, b in zip(times, times[1:], strict=False))
    reader = StockingReader(store, catalogue, settings)
    listed = await reader.open_signals("dc-uk", None, 10)
    assert [s["event_id"] for s in listed] == [opened[-1]["event_id"]]
    assert await reader.open_signals("dc-intl", None, 10) == []
    forecast = await reader.forecast(item, None, None)
    assert forecast is not None
    uk = next(r for r in forecast["regions"] if r["region"] == "united-kingdom")
    assert uk["dc"] == "dc-uk" and uk["mean"] > 0 and uk["lower"] <= uk["mean"] <= uk["upper"]
    centre = next(c for c in forecast["centres"] if c["dc"] == "dc-uk")
    assert centre["on_hand"] == 10 and centre["open_signal"] == first["signal_id"]

    # the restock: cleared at once, and no longer listed
    await run(store, catalogue, settings, signal_records(catalogue, inputs, 25), broker)
    cleared = signals(broker)[len(published):]
    assert [s["status"] for s in cleared] == ["cleared"]
    assert cleared[0]["signal_id"] == first["signal_id"]
    assert await reader.open_signals(None, item, 10) == []


async def test_resent_and_replayed_signals_publish_the_same_stocking_signals(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    _, inputs = scenario(settings)
    records = signal_records(catalogue, inputs, 25)
    one = Broker()
    await run(store, catalogue, settings, records, one)
    first = signals(one)
    assert first
    rows = await store.client.hgetall(store.shard(PRICE_SIGNALS, 0) + "st")
    await run(store, catalogue, settings, records, one)                    # re-delivered
    await run(store, catalogue, settings, records, one, start=10_000)      # re-sent
    assert signals(one) == first
    assert await store.client.hgetall(store.shard(PRICE_SIGNALS, 0) + "st") == rows
    other = StateStore(store.client, store.namespace + "-replay")
    two = Broker()
    try:   # other input batches and stage batch sizes: the same signals, the same ids
        await run(other, catalogue, settings, signal_records(catalogue, inputs, 7), two,
                  batch=3)
    finally:
        await drop_namespace(other)
    assert signals(two) == first


async def test_a_batch_that_crashed_before_its_apply_publishes_each_signal_once(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    """Stocking signals are keyed by centre, so a shard's signals go to any partition: the
    marks cover every partition, and a crash between publish and apply publishes nothing twice
    and loses nothing."""
    item, inputs = scenario(settings)
    partition = catalogue.partition_of(PRICE_SIGNALS, item)
    raws = signal_records(catalogue, inputs, 25)[partition]
    shard = store.shard(PRICE_SIGNALS, partition)
    clean = Broker(catalogue)
    publishing = []   # the records after which the clean run had published more
    for i, raw in enumerate(raws):
        before = len(signals(clean))
        await run(store, catalogue, settings, {partition: [raw]}, clean, start=i)
        if len(signals(clean)) > before:
            publishing.append(i)
    expected = {k: await store.client.hgetall(shard + k) for k in ("st", "sto")}
    await drop_namespace(store)
    crash = next(i for i in publishing if i > 0)

    broker = Broker(catalogue)
    stage = StockingStage(settings, broker, published_signals(4, broker.tail))
    await pricing_run(store, catalogue, settings, {partition: raws[:crash]}, broker,
                      stage=stage)
    validator = Validator(catalogue, settings.validation)
    before = len(signals(broker))
    await StockingStage(settings, broker, published_signals(4, broker.tail)).ops(
        store, PRICE_SIGNALS, partition,
        [(crash, validator.check(PRICE_SIGNALS, raws[crash]))])   # type: ignore[list-item]
    assert len(signals(broker)) > before   # published, never applied

    published = published_signals(4, broker.tail)
    await published.resume(store, {partition: shard})
    assert published.unapplied
    await pricing_run(store, catalogue, settings, {partition: raws[crash:]}, broker,
                      start=crash, stage=StockingStage(settings, broker, published))
    ids = [s["event_id"] for s in signals(broker)]
    assert len(ids) == len(set(ids))
    assert ids == [s["event_id"] for s in signals(clean)]
    assert {k: await store.client.hgetall(shard + k) for k in ("st", "sto")} == expected
    marks = await store.client.hgetall(shard + "stpub")
    assert marks and all(int(v) == len(broker.logs.get((STOCKING_SIGNALS, int(q)), []))
                         for q, v in marks.items())


async def test_customers_fit_and_return_forecasts_from_real_invoices(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    """Real invoices through the input path (op custbuy) -> each customer's statistics, the
    BG/NBD fit over them with regional totals, and one customer's return forecast."""
    records = build_records(settings, ["online_retail"], limit=6000, catalog=False)
    orders = [r for r in records if r.topic == "orders"]
    processor = BatchProcessor(store, Validator(catalogue, settings.validation),
                               _letters_ok, core=decision_core(settings))
    by_partition: dict[int, list[RawRecord]] = {}
    for r in orders:          # where Kafka's default partitioner puts each customer's orders
        p = catalogue.partition_of("orders", r.key)
        rows = by_partition.setdefault(p, [])
        rows.append(RawRecord(p, len(rows), r.event_time_ms, r.key.encode(),
                              orjson.dumps(r.event)))
    await processor.load_watermarks([("orders", p) for p in by_partition])
    for rows in by_partition.values():
        for k in range(0, len(rows), 200):
            await processor.process("orders", rows[k:k + 200])
    reader = StockingReader(store, catalogue, settings)
    fitted = await reader.fit_returns()
    assert fitted["customers"] > 500 and all(v > 0 for v in fitted["params"])
    uk = fitted["regions"]["united-kingdom"]
    last_uk = max(r.event_time_ms for r in orders if r.event["region"] == "united-kingdom"
                  and r.event["event_type"] == "purchase")
    assert uk["as_of_ms"] <= last_uk and uk["expected_purchases_7d"] > 0
    assert uk["expected_purchases_30d"] > uk["expected_purchases_7d"]
    buys: dict[str, set[int]] = {}
    for r in orders:
        if r.event["event_type"] == "purchase" and r.event.get("user_id"):
            buys.setdefault(r.event["user_id"], set()).add(r.event_time_ms // 86_400_000)
    loyal = max(sorted(buys), key=lambda u: len(buys[u]))
    answer = await reader.return_forecast(loyal, 30)
    assert answer is not None and answer["model"]["source"] == "fit"
    assert answer["repeat_transactions"] >= 2
    assert 0 < answer["p_buy_within_horizon"] <= answer["p_alive"] <= 1
    assert answer["expected_days_to_next_purchase"] > 0
    assert await reader.return_forecast("nobody-at-all", 30) is None


async def _letters_ok(topic: str, record: RawRecord, rejection: Any) -> Any:
    """Real invoices have defects the contracts dead-letter (zero prices, ...): accept them."""
    import asyncio

    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


async def test_signals_the_schema_passes_but_stocking_cannot_use_are_counted_not_fatal(
        store: StateStore, catalogue: Catalogue, settings: Settings) -> None:
    """The price-signals schema leaves per-kind fields to the stages: a stock level without its
    centre is skipped with a reason (the partition goes on), and the next signals still count."""
    t = 1_600_000_000_000
    sent = [
        {"event_id": "s1", "event_time_ms": t, "item_id": "I1", "kind": "stock", "on_hand": 5},
        {"event_id": "s2", "event_time_ms": t, "item_id": "I1", "kind": "stock", "dc": "dc-uk"},
        {"event_id": "s3", "event_time_ms": t, "item_id": "I1", "kind": "purchase",
         "quantity": 4, "price": 2.5, "region": "united-kingdom"},
        {"event_id": "s4", "event_time_ms": t + 1, "item_id": "I1", "kind": "stock",
         "dc": "dc-uk", "on_hand": 0},
    ]
    raw = orjson.dumps({"event_id": "r1", "event_time_ms": t + 1, "signals": sent})
    validator = Validator(catalogue, settings.validation)
    assert isinstance(validator.check(PRICE_SIGNALS, raw), dict)   # the schema lets it in
    broker = Broker()
    partition = catalogue.partition_of(PRICE_SIGNALS, "I1")
    await run(store, catalogue, settings, {partition: [raw]}, broker)
    shard = store.shard(PRICE_SIGNALS, partition)
    stats = await store.client.hgetall(shard + "ststats")
    assert stats["malformed_signal"] == "2"
    opened = [s for s in signals(broker) if s["status"] == "open"]
    assert [s["item_id"] for s in opened] == ["I1"] and opened[0]["on_hand"] == 0
