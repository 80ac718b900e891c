"""``engine prices follow``: the price changes on ``prices``, one readable line each.

A plain kafka-python consumer without a consumer group (it commits nothing and disturbs no
one): it takes every partition and starts at the end, or at the beginning with
``--from-beginning``. A change re-published after a worker crash carries the same decision id
and is shown once.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import orjson
from kafka import KafkaConsumer, TopicPartition

from engine.config import Settings

PRICES = "prices"
#: Decision ids remembered to drop re-published duplicates.
SEEN_IDS = 100_000


def describe(change: dict[str, Any]) -> str:
    """One line for a person: when, which item, old -> new, why."""
    when = dt.datetime.fromtimestamp(change["event_time_ms"] / 1000, dt.UTC)
    old, new = change.get("old_price"), change["new_price"]
    move = f"{new:.2f}" if old is None else f"{old:.2f} -> {new:.2f}"
    pct = "" if not old else f" ({(new - old) / old:+.1%})"
    reason = change.get("reason") or {}
    why = [str(reason.get("trigger", "?"))]
    comp = reason.get("competitor")
    if comp:
        why.append(f"lowest competitor {comp['name']} {comp['price']:.2f} "
                   f"(we are {comp['gap']:+.1%}, rule {comp['rule']})")
    demand = reason.get("demand")
    if demand:
        why.append(f"{demand['views_per_day']:.1f} views/day, conversion "
                   f"{demand['conversion']:.2%}")
    stock = reason.get("stock")
    if stock and stock.get("rule"):
        why.append(f"stock {stock['on_hand']} ({stock['rule']})")
    if reason.get("override"):
        until = dt.datetime.fromtimestamp(reason["override"]["expires_ms"] / 1000, dt.UTC)
        why.append(f"override by {reason['override'].get('by') or '?'} until "
                   f"{until:%Y-%m-%d %H:%M}")
    guards = [g for g in reason.get("guardrails", []) if g != "proposed"]
    if guards:
        why.append("guardrails " + ",".join(guards))
    return (f"{when:%Y-%m-%d %H:%M:%S}  {change['item_id']:<16} {move} {change['currency']}"
            f"{pct}  {'; '.join(why)}  [{change['decision_id'][:15]}]")


def changes(consumer: Any, stop: Callable[[], bool]) -> Iterator[dict[str, Any]]:
    """Decoded changes, each decision once; a record that is not a change is skipped."""
    seen: OrderedDict[str, None] = OrderedDict()
    while not stop():
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                try:
                    change = orjson.loads(record.value)
                    key = change["decision_id"]
                    describe(change)   # has what a line needs
                except (orjson.JSONDecodeError, TypeError, KeyError, ValueError,
                        AttributeError, OverflowError, OSError):
                    print(f"engine prices follow: skipped a record that is not a price "
                          f"change (partition {record.partition}, offset {record.offset})",
                          file=sys.stderr)
                    continue
                if not isinstance(key, str):
                    continue
                if key in seen:
                    continue
                seen[key] = None
                if len(seen) > SEEN_IDS:
                    seen.popitem(last=False)
                yield change


def follow(settings: Settings, *, item: str | None, category: str | None, from_beginning: bool,
           as_json: bool, limit: int | None = None, out: TextIO = sys.stdout,
           stop: Callable[[], bool] = lambda: False) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.url.split(","),
                             enable_auto_commit=False, group_id=None,
                             **settings.kafka.kafka_python_options())
    try:
        partitions = [TopicPartition(PRICES, p)
                      for p in sorted(consumer.partitions_for_topic(PRICES) or [])]
        if not partitions:
            print(f"engine: error: topic {PRICES!r} not found on {settings.kafka.url}",
                  file=sys.stderr)
            return 2
        consumer.assign(partitions)
        (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*partitions)
        shown = 0
        for change in changes(consumer, stop):
            if item is not None and change["item_id"] != item:
                continue
            cat = change.get("category") or ""
            if category is not None and not (cat == category
                                             or cat.startswith(category + ".")):
                continue
            out.write((orjson.dumps(change).decode() if as_json else describe(change)) + "\n")
            out.flush()
            shown += 1
            if limit is not None and shown >= limit:
                break
        return 0
    finally:
        consumer.close()
