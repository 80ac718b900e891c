"""Hot-path benchmark: what one event costs at each stage, beside the floors that bound it.

Workload: the real replay data (REES46 clickstream, UCI Online Retail, the Kaggle competitor
prices, and the catalogue derived from them), built by the same code ``engine replay`` uses,
serialised with orjson to the bytes a worker receives, and partitioned with Kafka's default
(murmur2) partitioner over the record key, as the replay producer's records are. Nothing is
random and nothing touches the network: the same files give the same events, partitions and
offsets on every run. Defects in the real data stay in, so the dead-letter path is exercised
in its real proportion.

Figures:
  a. decode + validate (``Validator.check``), beside bare ``orjson.loads`` as its baseline;
  b. ``ops_for`` on the valid events;
  c. Redis floors: PING one at a time, and HINCRBY pipelined (as many commands as the events
     imply, in the same round trips as apply at batch 100), over a raw socket (the server and
     the kernel alone) and through redis.asyncio (the engine's client);
  d. ``StateStore.apply`` at batch sizes 1, 10, 100, 500 events of one partition;
  e. ``BatchProcessor.process`` end to end without Kafka, 100 records per topic partition.

Every figure is measured once per round and reported as the median of ``--repeat`` rounds.
Ratios are taken within a round, between figures measured seconds apart, then the median of
those: on a shared two-core machine a busy moment slows a whole round, and the ratio survives
it where the absolute figures do not. Usage::

    python benchmarks/hot_path.py [--events N] [--repeat K] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from floors import client_floor_round, raw_floor_round, resp
from report import describe, machine, medians, render_markdown, render_text
from workload import (
    APPLY_BATCHES,
    BATCH,
    CLIENT_FLOOR_STRIDE,
    PING_CALLS,
    TP,
    Figures,
    Plan,
    Workload,
    build_workload,
    publish_results,
    say,
)

from engine.config import RedisSettings, Settings, load_settings
from engine.contracts import Rejection, Validator, load_catalogue
from engine.core.activity import ops_for
from engine.embedded import start_redis
from engine.store import StateStore
from engine.worker.processor import BatchProcessor, RawRecord

# --- a, b: CPU stages -------------------------------------------------------------------


def per_item_us(body: Callable[[], object], count: int) -> float:
    gc.collect()
    started = time.perf_counter()
    body()
    return (time.perf_counter() - started) / count * 1e6


def cpu_round(work: Workload, plan: Plan, validator: Validator) -> Figures:
    loads, check, records = orjson.loads, validator.check, work.records

    def decode() -> None:
        for _, r in records:
            loads(r.value or b"")

    def validate() -> None:
        for t, r in records:
            check(t, r.value, r.timestamp_ms)

    def ops() -> None:
        for t, e in plan.valid:
            ops_for(t, e)

    return {"decode_us": per_item_us(decode, len(records)),
            "validate_us": per_item_us(validate, len(records)),
            "ops_us": per_item_us(ops, len(plan.valid))}



# --- d, e: the engine -------------------------------------------------------------------


async def script_usec(client: Any) -> float:
    """Microseconds Redis spent running apply_batch.lua since the last CONFIG RESETSTAT;
    the rest of apply's time is the client and the round trip."""
    stats = await client.info("commandstats")
    return float(sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in ("evalsha", "eval")))


async def _fresh(store: StateStore) -> None:
    """Empty state (watermarks included) and zeroed command stats, so every run is alike."""
    await store.client.flushdb()
    await store.client.config_resetstat()
    gc.collect()


async def apply_round(store: StateStore, size: int, batches: list[tuple[TP, list[Any]]]
                      ) -> Figures:
    """``StateStore.apply`` alone: ops precomputed, one call per batch of one partition."""
    events = sum(len(b) for _, b in batches)
    await _fresh(store)
    applied = 0
    started = time.perf_counter()
    for (topic, partition), batch in batches:
        applied += (await store.apply(topic, partition, batch)).applied
    events_s = events / (time.perf_counter() - started)
    if applied != events:
        raise RuntimeError(f"apply batch={size}: {applied} of {events} events applied")
    return {f"apply_{size}_events_s": events_s,
            f"apply_{size}_redis_us": await script_usec(store.client) / events}


async def _dead_letter(topic: str, record: RawRecord, rejection: Rejection) -> Awaitable[object]:
    """A broker that acknowledges at once: this measures the engine, not Kafka."""
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


async def processor_round(store: StateStore, validator: Validator,
                          batches: list[tuple[TP, list[RawRecord]]]) -> Figures:
    """The worker's whole path minus Faust: decode, validate, ops, metrics, Redis."""
    events = sum(len(b) for _, b in batches)
    await _fresh(store)
    processor = BatchProcessor(store, validator, _dead_letter)
    started = time.perf_counter()
    for (topic, _), batch in batches:
        await processor.process(topic, batch)
    events_s = events / (time.perf_counter() - started)
    if processor.applied != events or processor.duplicates:
        raise RuntimeError(f"processor: {processor.applied} of {events} applied, "
                           f"{processor.duplicates} duplicates")
    return {"processor_events_s": events_s,
            "processor_redis_us": await script_usec(store.client) / events}


def ratios(f: Figures, ops_per_event: float) -> Figures:
    """Within-round ratios: figures measured seconds apart, so machine drift cancels."""
    apply_ops_s = f[f"apply_{BATCH}_events_s"] * ops_per_event
    return {
        "processor_vs_apply_100": f["processor_events_s"] / f[f"apply_{BATCH}_events_s"],
        "apply_100_vs_hincrby_raw": apply_ops_s / f["hincrby_raw_ops_s"],
        "apply_100_vs_hincrby_asyncio": apply_ops_s / f["hincrby_asyncio_ops_s"],
        "apply_1_call_vs_ping_asyncio": 1e6 / f["apply_1_events_s"] / f["ping_asyncio_us"],
        "validate_vs_decode": f["validate_us"] / f["decode_us"],
        "processor_extra_us": 1e6 / f["processor_events_s"] - 1e6 / f[f"apply_{BATCH}_events_s"],
    }


async def measure(redis: RedisSettings, work: Workload, validator: Validator, repeat: int
                  ) -> tuple[list[Figures], dict[str, Any], dict[str, Any]]:
    """``repeat`` rounds of every figure against the server at ``redis.url``."""
    store = StateStore.open(redis)
    try:
        info = await store.client.info("server")
        server = {"name": info.get("server_name", "redis"),
                  "version": info.get("valkey_version", info.get("redis_version"))}
        for key in ("appendonly", "appendfsync"):
            server[key] = (await store.client.config_get(key))[key]
        plan = Plan.of(work, store)
        payloads = [(b"".join(resp("HINCRBY", k, f, "1") for k, f in c), len(c))
                    for c in plan.floor_chunks]
        client_chunks = plan.floor_chunks[::CLIENT_FLOOR_STRIDE]
        sizes = {
            "hincrby_raw_ops": sum(n for _, n in payloads),
            "hincrby_raw_round_trips": len(payloads),
            "hincrby_asyncio_ops": sum(len(c) for c in client_chunks),
            "hincrby_asyncio_round_trips": len(client_chunks),
            **{f"apply_{s}_{what}": sum(len(b) if what == "events" else
                                        sum(len(ops) for _, ops in b) for _, b in batches)
               for s, batches in plan.apply_batches.items() for what in ("events", "ops")},
            "processor_events": len(work.records), "ping_calls": PING_CALLS,
        }
        await store.apply("warm-up", 0, [(0, [("hincrby", "stats", "valid", "1")])])
        rounds: list[Figures] = []
        for n in range(1, repeat + 1):
            say(f"round {n}/{repeat}: a, b (CPU); c (floors); d (apply at batch "
                f"{', '.join(map(str, APPLY_BATCHES))}); e (processor)")
            figures = cpu_round(work, plan, validator)
            figures |= await asyncio.to_thread(raw_floor_round, redis.url, payloads)
            figures |= await client_floor_round(store.client, client_chunks)
            for size, batches in plan.apply_batches.items():
                figures |= await apply_round(store, size, batches)
            figures |= await processor_round(store, validator, plan.processor_batches)
            rounds.append(figures)
        await store.client.flushdb()
    finally:
        await store.close()
    return rounds, sizes, server


def run_against_valkey(settings: Settings, work: Workload, validator: Validator, repeat: int
                       ) -> tuple[list[Figures], dict[str, Any], dict[str, Any]]:
    """Start a fresh embedded Valkey in a temporary directory, measure, always stop it."""
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        proc = start_redis(Path(tmp), fresh=True)
        try:
            bench = dataclasses.replace(settings.redis, url=proc.url, namespace="bench")
            return asyncio.run(measure(bench, work, validator, repeat))
        finally:
            proc.stop()



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=None,
                        help="evenly spaced subset of the replay records (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    args = parser.parse_args(argv)
    if args.repeat < 1 or (args.events is not None and args.events < 1):
        parser.error("--events and --repeat must be at least 1")

    started = time.perf_counter()
    settings = load_settings()
    validator = Validator(load_catalogue(), settings.validation)
    say("building the workload from the replay data sets")
    work = build_workload(settings, validator, args.events)
    rounds, sizes, server = run_against_valkey(settings, work, validator, args.repeat)
    ope = sum(len(o) for o in work.ops) / len(work.records)
    result = {
        "benchmark": "hot_path", "repeat": args.repeat, "machine": machine(server),
        "workload": describe(work), "sizes": sizes, "figures": medians(rounds),
        "ratios": medians([ratios(f, ope) for f in rounds]),
        "elapsed_s": time.perf_counter() - started,
    }
    publish_results("hot_path", result, as_json=args.json, text=render_text(result),
                    markdown=render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

