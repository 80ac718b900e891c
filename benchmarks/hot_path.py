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
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from kafka.partitioner.default import murmur2

from engine.config import RedisSettings, Settings, load_settings
from engine.contracts import Rejection, Validator, load_catalogue
from engine.core.activity import Op, dead_letter_ops, ops_for
from engine.embedded import start_redis
from engine.replay.run import build_records
from engine.store import StateStore
from engine.worker.processor import BatchProcessor, RawRecord

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
RESULTS = Path(__file__).resolve().parent / "results"

TP = tuple[str, int]
T = TypeVar("T")
Figures = dict[str, float]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


# --- c: floors --------------------------------------------------------------------------


def _resp(*parts: str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        b = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_lines(sock: socket.socket, lines: int) -> None:
    """Read until ``lines`` one-line replies (+PONG, :42, -ERR) have arrived."""
    seen, last = 0, b""
    while seen < lines:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("Redis closed the connection mid-benchmark")
        seen += (last + chunk).count(b"\r\n")  # ``last`` catches a \r|\n split across reads
        last = chunk[-1:]


def raw_floor_round(url: str, payloads: list[tuple[bytes, int]]) -> Figures:
    """PING and pipelined HINCRBY over a bare socket with the commands encoded before the
    clock starts: the kernel and the server alone, what no client library can go below."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ping = _resp("PING")
        started = time.perf_counter()
        for _ in range(PING_CALLS):
            sock.sendall(ping)
            _read_lines(sock, 1)
        ping_us = (time.perf_counter() - started) / PING_CALLS * 1e6
        sock.sendall(_resp("FLUSHDB"))
        _read_lines(sock, 1)
        started = time.perf_counter()
        for payload, commands in payloads:
            sock.sendall(payload)
            _read_lines(sock, commands)
        ops_s = sum(n for _, n in payloads) / (time.perf_counter() - started)
    return {"ping_raw_us": ping_us, "hincrby_raw_ops_s": ops_s}


async def client_floor_round(client: Any, chunks: list[list[tuple[str, str]]]) -> Figures:
    """The same floors through redis.asyncio. In practice no floor for apply: redis-py packs
    and parses each pipelined command in Python, where apply is one script call."""
    gc.collect()
    started = time.perf_counter()
    for _ in range(PING_CALLS):
        await client.ping()
    ping_us = (time.perf_counter() - started) / PING_CALLS * 1e6
    await client.flushdb()
    gc.collect()
    started = time.perf_counter()
    for chunk in chunks:
        pipe = client.pipeline(transaction=False)
        for key, field in chunk:
            pipe.hincrby(key, field, 1)
        await pipe.execute()
    ops_s = sum(len(c) for c in chunks) / (time.perf_counter() - started)
    return {"ping_asyncio_us": ping_us, "hincrby_asyncio_ops_s": ops_s}


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
        payloads = [(b"".join(_resp("HINCRBY", k, f, "1") for k, f in c), len(c))
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


# --- report -----------------------------------------------------------------------------


def machine(server: dict[str, Any]) -> dict[str, Any]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "redis_server": server,
            "redis_shares_cores": True}


def describe(work: Workload) -> dict[str, Any]:
    rejected = [c.reason for c in work.checked if isinstance(c, Rejection)]
    ops = sum(len(o) for o in work.ops)
    return {
        "sources": [*SOURCES, "derived catalogue"], "events": len(work.records),
        "by_topic": dict(Counter(t for t, _ in work.records).most_common()),
        "partitions": len({(t, r.partition) for t, r in work.records}),
        "dead_lettered": len(rejected), "by_reason": dict(Counter(rejected).most_common()),
        "ops": ops, "ops_per_event": round(ops / len(work.records), 3),
        "mean_bytes": round(sum(len(r.value or b"") for _, r in work.records)
                            / len(work.records), 1),
    }


def medians(rounds: list[Figures]) -> dict[str, dict[str, Any]]:
    """Median of each figure with its per-round values, so a noisy one shows itself."""
    return {k: {"median": statistics.median(r[k] for r in rounds),
                "runs": [round(r[k], 3) for r in rounds]} for k in rounds[0]}


def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, median, note) for the console and the markdown table alike."""
    f = {k: v["median"] for k, v in result["figures"].items()}
    r = {k: v["median"] for k, v in result["ratios"].items()}
    n = result["sizes"]
    out = [
        ("a. orjson.loads only (baseline)", f"{f['decode_us']:.2f} µs/event", ""),
        ("a. decode + validate", f"{f['validate_us']:.2f} µs/event",
         f"{r['validate_vs_decode']:.1f}× bare decode"),
        ("b. ops_for (valid events)", f"{f['ops_us']:.2f} µs/event", ""),
        ("c. PING, raw socket", f"{f['ping_raw_us']:.0f} µs/call", "server + kernel"),
        ("c. PING, redis.asyncio", f"{f['ping_asyncio_us']:.0f} µs/call", "the engine's client"),
        ("c. HINCRBY pipelined, raw socket", f"{f['hincrby_raw_ops_s']:,.0f} ops/s",
         f"{n['hincrby_raw_ops']:,} ops in {n['hincrby_raw_round_trips']} round trips"),
        ("c. HINCRBY pipelined, redis.asyncio", f"{f['hincrby_asyncio_ops_s']:,.0f} ops/s",
         f"{n['hincrby_asyncio_ops']:,} ops in {n['hincrby_asyncio_round_trips']} round trips"),
    ]
    for size in APPLY_BATCHES:
        events_s = f[f"apply_{size}_events_s"]
        ope = n[f"apply_{size}_ops"] / n[f"apply_{size}_events"]
        note = (f"{events_s * ope:,.0f} ops/s; Redis {f[f'apply_{size}_redis_us']:.0f} of "
                f"{1e6 / events_s:.0f} µs/event; {n[f'apply_{size}_events']:,} events")
        if size == 1:
            note += f"; a call = {r['apply_1_call_vs_ping_asyncio']:.1f}× PING"
        out.append((f"d. StateStore.apply, batch={size}", f"{events_s:,.0f} events/s", note))
    out += [
        (f"e. BatchProcessor, batch={BATCH}", f"{f['processor_events_s']:,.0f} events/s",
         f"Redis {f['processor_redis_us']:.0f} of {1e6 / f['processor_events_s']:.0f} µs/event; "
         f"+{r['processor_extra_us']:.0f} µs/event over apply (a + b alone: "
         f"{f['validate_us'] + f['ops_us']:.0f})"),
        ("ratio: processor / apply batch=100", f"{r['processor_vs_apply_100']:.2f}", "events/s"),
        ("ratio: apply batch=100 / HINCRBY raw socket", f"{r['apply_100_vs_hincrby_raw']:.2f}",
         "ops/s"),
        ("ratio: apply batch=100 / HINCRBY redis.asyncio",
         f"{r['apply_100_vs_hincrby_asyncio']:.2f}", "ops/s"),
    ]
    return out


def header(result: dict[str, Any]) -> str:
    m, w = result["machine"], result["workload"]
    s = m["redis_server"]
    return (f"{w['events']:,} real events ({', '.join(w['sources'])}), {w['dead_lettered']:,} "
            f"dead-lettered, {w['ops_per_event']} ops/event, {w['partitions']} topic "
            f"partitions; median of {result['repeat']} rounds.\n"
            f"{m['cpus']} cores ({m['cpu_model']}), Python {m['python']}, {s['name']} "
            f"{s['version']} (appendonly {s['appendonly']}, fsync {s['appendfsync']}) on the "
            f"same cores; run took {result['elapsed_s']:.0f} s.")


def render_text(result: dict[str, Any]) -> str:
    table = rows(result)
    wide = [max(len(row[i]) for row in table) for i in range(2)]
    lines = [f"{a:<{wide[0]}}  {b:>{wide[1]}}  {c}".rstrip() for a, b, c in table]
    return header(result) + "\n\n" + "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    lines = ["# Hot-path benchmark", "", header(result).replace("\n", "  \n"), "",
             "| figure | median | note |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(result)]
    return "\n".join(lines) + "\n"


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
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hot_path.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (RESULTS / "hot_path.md").write_text(render_markdown(result))
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(render_text(result))
    say(f"written: {RESULTS / 'hot_path.json'} and hot_path.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
