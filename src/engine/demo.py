"""``engine demo``: the embedded stack, real data through it, a readable summary, a clean stop.

Two phases, because one figure cannot honestly be both a throughput and a latency:
  1. backfill — the derived catalogue and the history replayed as fast as the broker takes
     them; the engine's events/s is measured here, from first send to last event applied;
  2. live tail — the newest events (REES46 clickstream) replayed at a fixed rate inside
     capacity (1,000 events/s; the worker with every decision on does about 1,500 on a 2-core
     machine); event-to-state latency is measured here, free of the backfill's queueing.
The contracts' invalid examples are mixed into the backfill (labelled as such) so the summary
shows dead-lettering next to the real data's own defects.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from engine.config import Settings
from engine.contracts import Catalogue, load_catalogue
from engine.core.compose import PRICE_SIGNALS
from engine.latency import LatencyHistogram
from engine.pricing.follow import describe
from engine.pricing.query import PriceReader
from engine.replay.publish import publish
from engine.replay.run import build_records
from engine.stack import Stack, embedded_stack, say
from engine.stocking.query import StockingReader, describe_fit, describe_signal
from engine.store import StateStore
from engine.views import event_to_state_latency, item_activity, pipeline_stats
from engine.worker.app import item_stages_enabled

LIVE_TAIL_EVENTS = 20_000
LIVE_TAIL_RATE = 1_000.0
DRAIN_TIMEOUT_S = 120.0


def run_demo(settings: Settings, sources: Sequence[str], *, limit: int | None, as_json: bool,
             with_invalid: bool, base_env: Mapping[str, str]) -> int:
    say("engine demo: starting the embedded stack")
    with embedded_stack(settings, base_env) as stack:
        summary = asyncio.run(_replay_and_measure(stack, sources, limit, with_invalid))
    say("stopped: API, worker, Redis and broker")
    if summary.get("stopped_by"):
        say(f"demo interrupted: {summary['stopped_by']}")
        return 130 if summary.get("signal") else 1
    if as_json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        print(render(summary))
    return 0 if summary["complete"] else 1


async def _replay_and_measure(stack: Stack, sources: Sequence[str], limit: int | None,
                              with_invalid: bool) -> dict[str, Any]:
    settings, catalogue = stack.settings, load_catalogue()
    store = StateStore.open(settings.redis)
    supervisor = stack.supervisor
    interrupted = supervisor.stop_requested.is_set   # cheap: checked before every send

    def halted() -> bool:   # Ctrl-C, SIGTERM, or a child (worker, API, servers) that died
        return supervisor.wait(timeout=0.001) is not None

    try:
        records = build_records(settings, sources, limit=limit, inventory=True)
        tail = min(LIVE_TAIL_EVENTS, len(records) // 3)
        backfill, live = records[: len(records) - tail], records[len(records) - tail:]
        say(f"phase 1/2: backfill {len(backfill):,} real events (+ catalogue) as fast as possible")
        started = time.monotonic()
        invalid = _publish_invalid_examples(settings, catalogue) if with_invalid else 0
        first = await asyncio.to_thread(_publish, settings, backfill, None, interrupted)
        expected = invalid + first.total
        await _drain(store, catalogue, expected, halted)
        backfill_s = time.monotonic() - started
        if item_stages_enabled(settings):   # the live tail measures steady state, not a backlog
            say("         waiting for the item stages (pricing, stocking) to work through the "
                "backfill's signals")
            pricing_s = await _drain_pricing(store, settings, catalogue, halted)
            say(f"         caught up {pricing_s:.1f} s after the inputs")
        else:
            pricing_s = None
        await asyncio.sleep(1.5)  # let workers flush the backfill's latencies, then forget them
        await store.client.delete(store.key("metrics:event_to_state"))
        say(f"phase 2/2: live tail {len(live):,} events at {LIVE_TAIL_RATE:,.0f} events/s")
        second = await asyncio.to_thread(_publish, settings, live, LIVE_TAIL_RATE, interrupted)
        expected += second.total
        stats = await _drain(store, catalogue, expected, halted)
        await asyncio.sleep(1.5)
        latency = await event_to_state_latency(store)
        sample = await _sample(store, catalogue, settings)
    finally:
        await store.close()
    reason = supervisor.wait(timeout=0.001)
    if reason is not None:
        return {"stopped_by": reason.message, "signal": reason.signal}
    summary = _summary(stats, expected, first.total + invalid, backfill_s, latency, invalid,
                       sample, stack.run_dir)
    summary["pricing_catch_up_s"] = None if pricing_s is None else round(pricing_s, 1)
    return summary


def _publish(settings: Settings, records: list[Any], rate: float | None, stop: Any) -> Any:
    return publish(records, bootstrap=settings.kafka.url,
                   kafka_options=settings.kafka.kafka_python_options(), rate=rate,
                   total=len(records), should_stop=stop)


def _publish_invalid_examples(settings: Settings, catalogue: Catalogue) -> int:
    """The contracts' invalid examples, byte for byte, to every input topic."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.url, linger_ms=5,
                             **settings.kafka.kafka_python_options())
    sent = 0
    for spec in catalogue.inputs:
        path = catalogue.root / "examples" / f"{spec.name}.invalid.jsonl"
        for line in path.read_bytes().splitlines():
            case = orjson.loads(line)
            raw = case["raw"].encode() if "raw" in case else orjson.dumps(case["event"])
            producer.send(spec.name, key=b"demo-invalid-example", value=raw)
            sent += 1
    producer.flush()
    producer.close()
    return sent


async def _drain(store: StateStore, catalogue: Catalogue, expected: int, stop: Any
                 ) -> dict[str, Any]:
    """Wait until state accounts for every published event."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        stats = await pipeline_stats(store, catalogue)
        if stats["events_in"] >= expected or time.monotonic() > deadline or stop():
            return stats
        await asyncio.sleep(0.2)


async def _drain_pricing(store: StateStore, settings: Settings, catalogue: Catalogue,
                         stop: Any) -> float:
    """Wait until the pricing stage has applied every price-signals record on the broker (its
    watermarks reach the end offsets twice in a row); return how long that took."""
    started = time.monotonic()
    spec = catalogue.topics[PRICE_SIGNALS]
    tps = [TopicPartition(spec.name, p) for p in range(spec.partitions)]
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.url.split(","),
                             enable_auto_commit=False, **settings.kafka.kafka_python_options())
    try:
        settled = 0
        while settled < 2 and time.monotonic() - started < DRAIN_TIMEOUT_S and not stop():
            ends = await asyncio.to_thread(consumer.end_offsets, tps)
            marks = [await store.watermark(spec.name, tp.partition) for tp in tps]
            caught_up = all(mark >= ends[tp] - 1 for tp, mark in zip(tps, marks, strict=True))
            settled = settled + 1 if caught_up else 0
            await asyncio.sleep(0.2)
    finally:
        consumer.close()
    return time.monotonic() - started


async def _sample(store: StateStore, catalogue: Catalogue, settings: Settings
                  ) -> dict[str, Any]:
    """A glimpse of live state: the best-selling items in the UK, and the top one's record."""
    partitions = catalogue.topics["orders"].partitions
    units: dict[str, float] = {}
    for p in range(partitions):
        key = store.shard("orders", p) + "demand:united-kingdom"
        for item, score in await store.client.zrevrange(key, 0, 9, withscores=True):
            units[item] = units.get(item, 0.0) + score
    top = sorted(units.items(), key=lambda kv: -kv[1])[:5]
    sample: dict[str, Any] = {"top_uk_items_by_units": [{"item_id": i, "units": int(u)}
                                                         for i, u in top]}
    if top:
        sample["top_item"] = await item_activity(store, catalogue, top[0][0])
    spec = catalogue.topics[PRICE_SIGNALS]
    changes = await store.merged_counts(spec.name, spec.partitions, "pxstats")
    sample["price_changes"] = int(changes.get("changes", 0))
    if top:
        reader = PriceReader(store, catalogue, settings.pricing)
        history = await reader.history(top[0][0], 1)
        sample["top_item_price"] = history[0] if history else None
    if settings.stocking.enabled:
        counts = await store.merged_counts(spec.name, spec.partitions, "ststats")
        stocking = StockingReader(store, catalogue, settings)
        sample["stocking"] = {
            "published": {k: int(counts.get(k, 0)) for k in ("open", "cleared")},
            "open": await stocking.open_signals(None, None, 5),
            "returns": await stocking.fit_returns()}
    return sample


def _summary(stats: dict[str, Any], expected: int, backfill_events: int, backfill_s: float,
             latency: LatencyHistogram, invalid: int, sample: dict[str, Any], run_dir: Any
             ) -> dict[str, Any]:
    pct = latency.summary()
    return {
        "events_in": stats["events_in"],
        "events_per_s": round(backfill_events / backfill_s, 1) if backfill_s else 0.0,
        "dlq": stats["dlq"],
        "latency_ms": {k: round(v, 2) if v is not None else None for k, v in pct.items()},
        "complete": stats["events_in"] == expected,
        "events_published": expected,
        "valid": stats["valid"],
        "dead_lettered": stats["dead_lettered"],
        "invalid_examples_injected": invalid,
        "by_topic": {t: {"valid": v["valid"], "dead_lettered": v["dead_lettered"]}
                     for t, v in stats["topics"].items()},
        "latency_phase": {"rate_eps": LIVE_TAIL_RATE, "events": latency.total},
        "sample": sample,
        "logs": str(run_dir),
    }


def render(s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    lines = [
        "",
        "Demo summary",
        "============",
        f"events in            {s['events_in']:>10,}  of {s['events_published']:,} published"
        f"{'' if s['complete'] else '  (INCOMPLETE: some events never reached state)'}",
        f"  valid              {s['valid']:>10,}",
        f"  dead-lettered      {s['dead_lettered']:>10,}  (incl. "
        f"{s['invalid_examples_injected']} injected invalid examples)",
        f"throughput           {s['events_per_s']:>10,.0f}  events/s (backfill, first send to "
        "last state write)",
        f"event->state latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
        f"(live tail at {s['latency_phase']['rate_eps']:,.0f} events/s, "
        f"{s['latency_phase']['events']:,} events)",
        *([f"pricing              caught up with the backfill {s['pricing_catch_up_s']} s "
           "after the inputs"] if s.get("pricing_catch_up_s") is not None else []),
        "",
        "per topic            valid   dead-lettered",
    ]
    for topic, t in s["by_topic"].items():
        lines.append(f"  {topic:<18}{t['valid']:>8,}  {t['dead_lettered']:>8,}")
    lines += ["", "dead letters by reason"]
    lines += [f"  {reason:<22}{n:>8,}" for reason, n in s["dlq"].items()] or ["  (none)"]
    sample = s["sample"]
    if sample.get("top_uk_items_by_units"):
        lines += ["", "live state sample: best sellers in united-kingdom (units)"]
        lines += [f"  {row['item_id']:<12}{row['units']:>8,}"
                  for row in sample["top_uk_items_by_units"]]
        top = sample["top_item"]
        title = top["catalog"].get("title", "")
        lines.append(f"  top item {top['item_id']} {title!r}: {top['counts']}")
    if "price_changes" in sample:
        lines += ["", f"prices: {sample['price_changes']:,} changes published so far (the "
                  "pricing stage may still be working on the newest signals)"]
        if sample.get("top_item_price"):
            lines.append(f"  top item's last change: {describe(sample['top_item_price'])}")
    if "stocking" in sample:
        k = sample["stocking"]
        lines += ["", f"stocking: {k['published']['open']:,} signals opened or updated, "
                  f"{k['published']['cleared']:,} cleared (opening stock is DERIVED: a week of "
                  "the first orders); the most confident open ones:"]
        lines += [f"  {describe_signal(signal)}" for signal in k["open"]] or ["  (none open)"]
        fit = k["returns"]
        if fit.get("customers"):
            lines += ["", "returning customers (BG/NBD fitted on the replayed orders):"]
            lines += [f"  {line}" for line in describe_fit(fit).splitlines()[:8]]
    lines += ["", f"logs: {s['logs']}"]
    return "\n".join(lines)

