"""The replay sources on the real data sets: order, determinism, counts, contracts, catalogue.

Pure: files in, records out, no broker. Real-data defects (a zero price, a negative quantity, an
invoice longer than the contract allows, a stock code with a space) are kept by the replay, and
here they must *fail* the schema: that is what proves the dead-letter path will fire.
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kafka import KafkaProducer

import engine.replay as replay
from engine.errors import ReplayError
from engine.replay import (
    SOURCES,
    Record,
    competitor_prices,
    derive_catalog,
    derive_region,
    hammer,
    merged,
    online_retail,
    open_source,
    publish,
    rees46,
)
from engine.replay.publish import _Pacer

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SCHEMAS = Path(__file__).resolve().parents[1] / "streams" / "schemas"
REGIONS = ("north", "south", "east", "west")
HAMMER_LIMIT = 3000

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"{DATASETS} not present")


def _path(name: str) -> Path:
    return DATASETS / SOURCES[name].path


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft7Validator]:
    return {path.name.removesuffix(".v1.json"): jsonschema.Draft7Validator(
        json.loads(path.read_text())) for path in SCHEMAS.glob("*.v1.json")}


@pytest.fixture(scope="module")
def rees() -> list[Record]:
    return list(rees46(_path("rees46"), REGIONS))


@pytest.fixture(scope="module")
def retail() -> list[Record]:
    return list(online_retail(_path("online_retail")))


@pytest.fixture(scope="module")
def kaggle() -> list[Record]:
    return list(competitor_prices(_path("competitor_prices")))


@pytest.fixture(scope="module")
def grocer() -> list[Record]:
    return list(hammer(_path("hammer"), limit=HAMMER_LIMIT))


@pytest.fixture(scope="module")
def catalog() -> list[Record]:
    return derive_catalog(DATASETS, list(SOURCES))


def _defects(event: dict[str, Any]) -> list[str]:
    """The documented real-data defects an event carries (empty: it must validate)."""
    found = []
    if "price" in event and event["price"] <= 0:
        found.append("non-positive price")
    lines = event.get("lines", [])
    if len(lines) > 1000:
        found.append("more lines than the contract's 1000")
    for line in lines:
        if line["quantity"] < 1:
            found.append("negative quantity")
        if line["unit_price"] <= 0:
            found.append("non-positive unit price")
        if any(ch.isspace() for ch in line["item_id"]):
            found.append("stock code with a space")
    if any(ch.isspace() for ch in event.get("item_id", "")):
        found.append("stock code with a space")
    return found


def _check_contract(records: list[Record], validators: dict[str, Any]) -> Counter[str]:
    defects: Counter[str] = Counter()
    for record in records:
        problems = _defects(record.event)
        valid = validators[record.topic].is_valid(record.event)
        assert valid == (not problems), (record.event, problems)
        defects.update(set(problems))
    return defects


def _in_time_order(records: list[Record]) -> bool:
    return all(a.event_time_ms <= b.event_time_ms for a, b in pairwise(records))


# --- REES46 -------------------------------------------------------------------------------


def test_rees46_counts_match_the_readme(rees: list[Record]) -> None:
    kinds = Counter((r.topic, r.event["event_type"]) for r in rees)
    assert kinds == {("clicks", "view"): 17_055, ("carts", "add"): 165,
                     ("orders", "purchase"): 214}
    assert len({r.event["event_id"] for r in rees}) == 17_434
    assert len({r.event["user_id"] for r in rees}) == 4_504


def test_rees46_every_event_meets_its_contract_except_zero_prices(
        rees: list[Record], validators: dict[str, Any]) -> None:
    defects = _check_contract(rees, validators)
    assert defects == {"non-positive price": 19}


def test_rees46_mapping(rees: list[Record]) -> None:
    first = rees[0]
    assert first.event == {
        "event_id": "rees46:1", "event_time_ms": 1_569_888_000_000, "event_type": "view",
        "user_id": "541312140", "session_id": "72d76fde-8bb3-4e00-8c23-a032dfed738c",
        "item_id": "44600062", "category": "2103807459595387724", "price": 35.79,
        "currency": "USD", "region": "south", "brand": "shiseido"}
    for record in rees:
        assert record.key == record.event["user_id"]
        if record.topic == "orders":
            (line,) = record.event["lines"]
            assert line["quantity"] == 1
            assert record.event["order_id"].startswith("rees46-")


def test_region_derivation_is_stable(rees: list[Record]) -> None:
    assert [derive_region(u, REGIONS) for u in ("4", "541312140", "5", "1")] == list(REGIONS)
    assert derive_region("12345", REGIONS) == REGIONS[zlib.crc32(b"12345") % 4]
    by_user: dict[str, set[str]] = {}
    for record in rees:
        by_user.setdefault(record.event["user_id"], set()).add(record.event["region"])
    assert all(len(regions) == 1 for regions in by_user.values())
    assert set().union(*by_user.values()) == set(REGIONS)


# --- Online Retail ---------------------------------------------------------------------------


def test_online_retail_invoices_become_orders(retail: list[Record]) -> None:
    assert len(retail) == 3_230
    assert retail[0].event["lines"][0] == {"item_id": "85123A", "quantity": 6,
                                            "unit_price": 2.55}
    assert retail[0].event["user_id"] == "17850" and retail[0].key == "17850"
    assert retail[0].event["region"] == "united-kingdom"
    assert retail[0].event["currency"] == "GBP"
    guests = [r for r in retail if "user_id" not in r.event]
    assert guests and all(r.key == r.event["order_id"] for r in guests)


def test_cancellations_become_returns_with_positive_quantities(retail: list[Record]) -> None:
    returns = [r for r in retail if r.event["event_type"] == "return"]
    assert returns and all(r.event["order_id"].startswith("C") for r in returns)
    assert all(line["quantity"] > 0 for r in returns for line in r.event["lines"])
    purchases = [r for r in retail if r.event["event_type"] == "purchase"]
    assert not any(r.event["order_id"].startswith("C") for r in purchases)


def test_online_retail_defects_are_kept_and_fail_the_contract(
        retail: list[Record], validators: dict[str, Any]) -> None:
    flawed = [r for r in retail if _defects(r.event)]
    sample = flawed + [r for r in retail[::7] if not _defects(r.event)]
    defects = _check_contract(sample, validators)
    assert defects["negative quantity"] == 113
    assert defects["non-positive unit price"] > 0
    # The longest real invoice has 675 lines, within the contract's 1000.
    assert "more lines than the contract's 1000" not in defects


def test_limit_counts_events(retail: list[Record]) -> None:
    assert list(online_retail(_path("online_retail"), limit=25)) == retail[:25]
    assert list(online_retail(_path("online_retail"), limit=0)) == []


# --- competitor prices -------------------------------------------------------------------------


def test_kaggle_competitor_prices(kaggle: list[Record], validators: dict[str, Any]) -> None:
    assert len(kaggle) == 676 * 3
    assert _in_time_order(kaggle)
    assert not _check_contract(kaggle, validators)
    first = next(r for r in kaggle if r.event["event_id"] == "retail_price:1:comp_2")
    assert first.event == {"event_id": "retail_price:1:comp_2",
                           "event_time_ms": 1_493_596_800_000, "item_id": "bed1",
                           "competitor": "comp_2", "price": 215.0, "currency": "BRL"}


def test_hammer_prices(grocer: list[Record], validators: dict[str, Any]) -> None:
    assert len(grocer) == HAMMER_LIMIT
    assert _in_time_order(grocer)
    assert not _check_contract(grocer, validators)
    assert all(r.key == r.event["item_id"] and r.event["item_id"].startswith("hammer-")
               for r in grocer)
    assert {r.event["currency"] for r in grocer} == {"CAD"}
    assert all(isinstance(r.event["in_stock"], bool) for r in grocer)


def test_empty_prices_are_skipped_and_counted(tmp_path: Path) -> None:
    kaggle_file = tmp_path / "k.csv"
    kaggle_file.write_text("product_id,month_year,comp_1,comp_2,comp_3\n"
                           "a1,01/02/2018,10.5,,0\n")
    skipped: Counter[str] = Counter()
    events = [r.event for r in competitor_prices(kaggle_file, skipped=skipped)]
    assert [(e["competitor"], e["price"]) for e in events] == [("comp_1", 10.5), ("comp_3", 0.0)]
    assert skipped == {"competitor_prices.empty_price": 1}
    hammer_file = tmp_path / "h.csv.gz"
    with gzip.open(hammer_file, "wt") as handle:
        handle.write("nowtime,current_price,vendor,product_name,stock_status,is_sale\n"
                     "2024-03-01 10:00:00+00:00,,Metro,Eggs,in_stock,False\n"
                     "2024-03-01 09:00:00+00:00,4.99,Metro,Eggs,out_of_stock,True\n")
    events = [r.event for r in hammer(hammer_file, skipped=skipped)]
    assert len(events) == 1 and events[0]["event_id"] == "hammer:2"
    assert (events[0]["in_stock"], events[0]["on_sale"]) == (False, True)
    assert skipped["hammer.empty_price"] == 1


# --- all sources ------------------------------------------------------------------------------


def test_every_source_is_in_event_time_order(rees: list[Record], retail: list[Record]) -> None:
    assert _in_time_order(rees) and _in_time_order(retail)
    both = list(merged(rees, retail))
    assert len(both) == len(rees) + len(retail) and _in_time_order(both)


def test_replay_is_deterministic(rees: list[Record], retail: list[Record],
                                 grocer: list[Record]) -> None:
    assert list(rees46(_path("rees46"), REGIONS)) == rees
    assert list(open_source("online_retail", DATASETS)) == retail
    assert list(hammer(_path("hammer"), limit=HAMMER_LIMIT)) == grocer


def test_merge_breaks_ties_by_source_position() -> None:
    a = [Record("catalog", "x", {}, 5)]
    b = [Record("clicks", "u", {}, 5), Record("clicks", "u", {}, 6)]
    assert [r.topic for r in merged(b, a)] == ["clicks", "catalog", "clicks"]
    assert [r.topic for r in merged(a, b)] == ["catalog", "clicks", "clicks"]


def test_missing_file_and_unknown_source_are_named(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="nothing.csv"):
        online_retail(tmp_path / "nothing.csv")
    with pytest.raises(ReplayError, match="unknown source"):
        open_source("amazon", DATASETS)
    with pytest.raises(ReplayError, match="region"):
        rees46(_path("rees46"), [])


# --- catalogue --------------------------------------------------------------------------------


def _observed_prices(event: dict[str, Any]) -> Iterator[tuple[str, float]]:
    if "lines" in event:
        yield from ((line["item_id"], line["unit_price"]) for line in event["lines"])
    else:
        yield event["item_id"], event["price"]


def test_catalog_covers_every_item_with_a_price(
        catalog: list[Record], rees: list[Record], retail: list[Record],
        kaggle: list[Record], grocer: list[Record]) -> None:
    prices: dict[str, list[float]] = {}
    for record in rees + retail + kaggle + grocer:
        for item_id, price in _observed_prices(record.event):
            prices.setdefault(item_id, []).append(price)
    never_positive = {item for item, seen in prices.items() if max(seen) <= 0}
    listed = {r.key for r in catalog}
    assert set(prices) - listed == never_positive
    assert len(never_positive) < 0.01 * len(prices)


def test_catalog_derived_fields(catalog: list[Record], validators: dict[str, Any]) -> None:
    assert _in_time_order(catalog)
    assert len({r.key for r in catalog}) == len(catalog)
    for record in catalog:
        event = record.event
        assert record.topic == "catalog" and record.key == event["item_id"]
        assert 0 < event["unit_cost"] < event["list_price"]
        assert event["min_margin"] == 0.05 and event["category"]
        assert validators["catalog"].is_valid(event) == (" " not in event["item_id"])
    by_id = {r.key: r.event for r in catalog}
    assert by_id["85123A"]["category"] == "giftware" and by_id["85123A"]["currency"] == "GBP"
    assert by_id["bed1"]["currency"] == "BRL"
    assert {"catalog.unit_cost", "catalog.list_price", "region (rees46)"} <= set(
        replay.DERIVED_FIELDS)


def test_catalog_precedes_each_source(catalog: list[Record], rees: list[Record]) -> None:
    rees_catalog = [r for r in catalog if r.event["event_id"].startswith("catalog:rees46:")]
    replayed = list(merged(rees_catalog, rees))
    first_event = next(i for i, r in enumerate(replayed) if r.topic != "catalog")
    assert first_event == len(rees_catalog)


# --- publishing (no broker: pacing and the unreachable-broker error) ------------------------


def test_rate_pacing_is_a_fixed_schedule() -> None:
    pacer = _Pacer(rate=4.0, speedup=None, max_gap_s=2.0)
    assert [pacer.due_s(t) for t in (0, 0, 10**9, 5)] == [0.0, 0.25, 0.5, 0.75]


def test_speedup_pacing_compresses_long_gaps() -> None:
    pacer = _Pacer(rate=None, speedup=10.0, max_gap_s=2.0)
    times = [0, 1_000, 1_000, 100_000_000, 99_000_000, 99_005_000]
    assert [pacer.due_s(t) for t in times] == pytest.approx([0.0, 0.1, 0.1, 2.1, 2.1, 2.6])
    with pytest.raises(ReplayError):
        _Pacer(rate=1.0, speedup=1.0, max_gap_s=2.0)


def test_unreachable_broker_is_a_replay_error() -> None:
    timeout = ("bootstrap_timeout_ms" if "bootstrap_timeout_ms" in KafkaProducer.DEFAULT_CONFIG
               else "api_version_auto_timeout_ms")

    def nothing() -> Iterator[Record]:
        yield from ()

    started = time.monotonic()
    with pytest.raises(ReplayError, match="unreachable at 127.0.0.1:9"):
        publish(nothing(), bootstrap="127.0.0.1:9", kafka_options={timeout: 300},
                progress=False)
    assert time.monotonic() - started < 10


def test_public_surface_is_pinned() -> None:
    assert sorted(replay.__all__) == [
        "DERIVED_FIELDS", "Record", "ReplayStats", "SOURCES", "competitor_prices",
        "derive_catalog", "derive_region", "hammer", "merged", "online_retail", "open_source",
        "publish", "rees46", "source_names"]


def test_derived_opening_stock_covers_the_first_week_and_precedes_the_orders(
        validators: dict[str, Any]) -> None:
    from engine.config import load_settings
    from engine.replay.inventory import opening_stock
    from engine.replay.run import build_records

    settings = load_settings()
    records = build_records(settings, ["online_retail"], limit=3000, inventory=True)
    stock = [r for r in records if r.topic == "inventory"]
    assert stock and stock == opening_stock(records, settings.regions)
    first_order = min(r.event_time_ms for r in records if r.topic == "orders")
    week = first_order + 7 * 86_400_000
    sold: dict[tuple[str, str], int] = {}
    first_sale: dict[str, int] = {}
    for r in records:
        if r.topic == "orders" and r.event["event_type"] == "purchase" and r.event_time_ms < week:
            dc = settings.region(r.event["region"]).dc
            for line in r.event["lines"]:
                if line["quantity"] > 0 and line["unit_price"] > 0:
                    key = (line["item_id"], dc)
                    sold[key] = sold.get(key, 0) + line["quantity"]
                    first_sale.setdefault(line["item_id"], r.event_time_ms)
    assert {(r.event["item_id"], r.event["dc"]): r.event["on_hand"] for r in stock} == sold
    for r in stock:
        # just before the item's first sale (records are merged in event-time order)
        assert r.key == r.event["item_id"] and r.event_time_ms == first_sale[r.key] - 1
        assert validators["inventory"].is_valid(r.event) == (" " not in r.key)
