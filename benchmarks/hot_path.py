"""Hot-path benchmark: what one event costs at each stage, beside the floors that bound it.

Workload: the real replay data (REES46 clickstream, UCI Online Retail, the Kaggle competitor
prices, and the catalogue derived from them), built by the same code ``engine replay`` uses,
serialised with orjson to the bytes a worker receives, and partitioned with Kafka's default
(murmur2) partitioner over the record key as the replay producer's records are. Nothing is
random and nothing touches the network: the same files give the same events, partitions and
offsets on every run. Defects in the real data stay in, so the dead-letter path is exercised
in its real proportion.

Figures, each the median of ``--repeat`` runs:
  a. decode + validate (``Validator.check``), beside bare ``orjson.loads`` as its baseline;
  b. ``ops_for`` on the valid events;
  c. Redis floors: PING one at a time, and HINCRBY pipelined (as many commands as the events
     imply, in the same round trips as apply at batch 100), through redis.asyncio (the
     engine's client) and through a raw socket (what is left without any client library);
  d. ``StateStore.apply`` at batch sizes 1, 10, 100, 500 events of one partition;
  e. ``BatchProcessor.process`` end to end without Kafka, 100 records per topic partition.

Absolute figures move with the machine; the ratios (processor / apply, apply / floor) are
what to compare across machines and commits. Usage::

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

from engine.config import Settings, load_settings
from engine.contracts import Rejection, Validator, load_catalogue
from engine.core.activity import Op, dead_letter_ops, ops_for
from engine.embedded import start_redis
from engine.replay.run import build_records
from engine.store import StateStore
from engine.worker.processor import BatchProcessor, RawRecord

SOURCES = ("rees46", "online_retail", "competitor_prices")
APPLY_BATCHES = (1, 10, 100, 500)
#: The processor is fed, and the HINCRBY floor pipelined, in apply's batch=100 round trips,
#: so the ratios compare the same number of calls.
BATCH = 100
PING_CALLS = 2_000
#: Small batches cost a round trip per event or ten; their figures are taken on an evenly
#: spaced subset of at most this many events (same topic mix) to keep the default run near a
#: minute. Events/s does not depend on the count once it is in the thousands.
APPLY_EVENTS = {1: 5_000, 10: 16_000}
#: Pipelined HINCRBY through redis.asyncio is client-bound (~16 µs a command in redis-py's
#: pure-Python packing and parsing); one round trip in this many is enough to measure it.
CLIENT_FLOOR_STRIDE = 3
RESULTS = Path(__file__).resolve().parent / "results"

TP = tuple[str, int]
T = TypeVar("T")


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


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and kafka-python alike) picks."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


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
        partition = kafka_partition(key, catalogue.topics[rec.topic].partitions)
        offset = offsets[(rec.topic, partition)]
        offsets[(rec.topic, partition)] += 1
        records.append((rec.topic, RawRecord(partition, offset, now_ms, key,
                                             orjson.dumps(rec.event))))
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


def summary(runs: list[float], **extra: Any) -> dict[str, Any]:
    """Median with the runs beside it, so a noisy figure shows itself as such."""
    return {"median": statistics.median(runs), "runs": [round(r, 3) for r in runs], **extra}


# --- a, b: CPU stages -------------------------------------------------------------------


def time_cpu(repeat: int, body: Callable[[], object], count: int) -> list[float]:
    """Microseconds per item for each of ``repeat`` runs of ``body`` over ``count`` items."""
    runs = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        body()
        runs.append((time.perf_counter() - started) / count * 1e6)
    return runs


def cpu_stages(work: Workload, validator: Validator, repeat: int) -> dict[str, Any]:
    records = work.records
    valid = [(t, c) for (t, _), c in zip(records, work.checked, strict=True)
             if not isinstance(c, Rejection)]
    loads, check = orjson.loads, validator.check

    def decode() -> None:
        for _, r in records:
            loads(r.value)  # type: ignore[arg-type]

    def validate() -> None:
        for t, r in records:
            check(t, r.value, r.timestamp_ms)

    def ops() -> None:
        for t, e in valid:
            ops_for(t, e)

    n = len(records)
    return {
        "decode_us": summary(time_cpu(repeat, decode, n), events=n),
        "validate_us": summary(time_cpu(repeat, validate, n), events=n),
        "ops_us": summary(time_cpu(repeat, ops, len(valid)), events=len(valid)),
    }


# --- c: floors --------------------------------------------------------------------------


def _resp(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_lines(sock: socket.socket, lines: int) -> None:
    """Read until ``lines`` one-line replies (+PONG, :42, -ERR) have arrived."""
    seen, tail = 0, b""
    while seen < lines:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("Redis closed the connection mid-benchmark")
        seen += (tail + chunk).count(b"\r\n") - tail.count(b"\r\n")
        tail = chunk[-1:]


def raw_socket_floors(url: str, chunks: list[list[tuple[str, str]]], repeat: int
                      ) -> dict[str, Any]:
    """PING and pipelined HINCRBY over a bare socket, commands encoded before the clock
    starts: the kernel and the server alone, the cost no client library can go below."""
    parts = urlsplit(url)
    payloads = [b"".join(_resp("HINCRBY", k, f, "1") for k, f in c) for c in chunks]
    n_ops = sum(len(c) for c in chunks)
    ping = _resp("PING")
    ping_runs, hincr_runs = [], []
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(PING_CALLS):
                sock.sendall(ping)
                _read_lines(sock, 1)
            ping_runs.append((time.perf_counter() - started) / PING_CALLS * 1e6)
            sock.sendall(_resp("FLUSHDB"))
            _read_lines(sock, 1)
            started = time.perf_counter()
            for payload, c in zip(payloads, chunks, strict=True):
                sock.sendall(payload)
                _read_lines(sock, len(c))
            hincr_runs.append(n_ops / (time.perf_counter() - started))
    return {"ping_us": summary(ping_runs, calls=PING_CALLS),
            "hincrby_ops_s": summary(hincr_runs, ops=n_ops, round_trips=len(chunks))}


async def client_floors(client: Any, chunks: list[list[tuple[str, str]]], repeat: int
                        ) -> dict[str, Any]:
    """The same two floors through redis.asyncio, the client ``StateStore`` uses.

    Not a floor for apply in practice: redis-py builds and parses each pipelined command in
    Python, while apply sends one script call whose arguments are packed in one go."""
    chunks = chunks[::CLIENT_FLOOR_STRIDE]
    n_ops = sum(len(c) for c in chunks)
    ping_runs, hincr_runs = [], []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        for _ in range(PING_CALLS):
            await client.ping()
        ping_runs.append((time.perf_counter() - started) / PING_CALLS * 1e6)
        await client.flushdb()
        gc.collect()
        started = time.perf_counter()
        for c in chunks:
            pipe = client.pipeline(transaction=False)
            for key, field in c:
                pipe.hincrby(key, field, 1)
            await pipe.execute()
        hincr_runs.append(n_ops / (time.perf_counter() - started))
    return {"ping_us": summary(ping_runs, calls=PING_CALLS),
            "hincrby_ops_s": summary(hincr_runs, ops=n_ops, round_trips=len(chunks))}


# --- d, e: the engine -------------------------------------------------------------------


async def apply_stage(store: StateStore, work: Workload, size: int, repeat: int
                      ) -> dict[str, Any]:
    """``StateStore.apply`` alone: ops precomputed, one call per batch of one partition."""
    indices = evenly(range(len(work.records)), APPLY_EVENTS.get(size))
    groups = work.by_partition(lambda i: (work.records[i][1].offset, work.ops[i]), indices)
    batches = interleave(groups, size)
    events = sum(len(b) for _, b in batches)
    ops = sum(len(o) for _, b in batches for _, o in b)
    runs, server = [], []
    for _ in range(repeat):
        await store.client.flushdb()
        await store.client.config_resetstat()
        gc.collect()
        applied = 0
        started = time.perf_counter()
        for (topic, partition), batch in batches:
            applied += (await store.apply(topic, partition, batch)).applied
        runs.append(events / (time.perf_counter() - started))
        server.append(await script_usec(store.client) / events)
        if applied != events:
            raise RuntimeError(f"apply batch={size}: {applied} of {events} events applied")
    return summary(runs, events=events, ops=ops, calls=len(batches),
                   server_us_per_event=statistics.median(server))


async def script_usec(client: Any) -> float:
    """Microseconds Redis spent running apply_batch.lua since the last CONFIG RESETSTAT:
    what is left of apply's time is the client and the round trip."""
    stats = await client.info("commandstats")
    return float(sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in ("evalsha", "eval")))


async def _dead_letter(topic: str, record: RawRecord, rejection: Rejection) -> Awaitable[object]:
    """A broker that acknowledges at once: the benchmark measures the engine, not Kafka."""
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


async def processor_stage(store: StateStore, validator: Validator, work: Workload,
                          repeat: int) -> dict[str, Any]:
    """The worker's whole path minus Faust: decode, validate, ops, metrics, Redis."""
    batches = interleave(work.by_partition(lambda i: work.records[i][1]), BATCH)
    events = len(work.records)
    runs, server = [], []
    for _ in range(repeat):
        await store.client.flushdb()
        await store.client.config_resetstat()
        processor = BatchProcessor(store, validator, _dead_letter)
        gc.collect()
        started = time.perf_counter()
        for (topic, _), batch in batches:
            await processor.process(topic, batch)
        runs.append(events / (time.perf_counter() - started))
        server.append(await script_usec(store.client) / events)
        if processor.applied != events or processor.duplicates:
            raise RuntimeError(f"processor: {processor.applied} of {events} applied, "
                               f"{processor.duplicates} duplicates")
    return summary(runs, events=events, calls=len(batches),
                   server_us_per_event=statistics.median(server))


async def _redis_stages(settings: Settings, work: Workload, validator: Validator, repeat: int
                        ) -> dict[str, Any]:
    store = StateStore.open(settings)
    try:
        info = await store.client.info("server")
        config = {k: (await store.client.config_get(k))[k] for k in ("appendonly", "appendfsync")}
        floor_batches = interleave(work.by_partition(lambda i: work.ops[i]), BATCH)
        chunks = [[(store.shard(topic, part) + op[1], op[2]) for ops in batch for op in ops]
                  for (topic, part), batch in floor_batches]
        say("c. floors: PING and pipelined HINCRBY (raw socket, redis.asyncio)")
        raw = await asyncio.to_thread(raw_socket_floors, settings.url, chunks, repeat)
        client = await client_floors(store.client, chunks, repeat)
        await store.apply("warm-up", 0, [(0, [("hincrby", "stats", "valid", "1")])])
        apply = {}
        for size in APPLY_BATCHES:
            say(f"d. StateStore.apply, batch={size}")
            apply[str(size)] = await apply_stage(store, work, size, repeat)
        say(f"e. BatchProcessor.process, {BATCH} records per topic partition")
        processor = await processor_stage(store, validator, work, repeat)
        await store.client.flushdb()
    finally:
        await store.close()
    server = {"name": info.get("server_name", "redis"),
              "version": info.get("valkey_version", info.get("redis_version")), **config}
    return {"server": server, "floors": {"raw_socket": raw, "redis_asyncio": client},
            "apply": apply, "processor": processor}


def redis_stages(settings: Settings, work: Workload, validator: Validator, repeat: int
                 ) -> dict[str, Any]:
    """Start a fresh embedded Valkey in a temporary directory, measure, and always stop it."""
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        proc = start_redis(Path(tmp), fresh=True)
        try:
            bench = dataclasses.replace(settings.redis, url=proc.url, namespace="bench")
            return asyncio.run(_redis_stages(bench, work, validator, repeat))
        finally:
            proc.stop()


# --- report -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: the model is informative only
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "redis_shares_cores": True}


def describe(work: Workload) -> dict[str, Any]:
    rejected = [c.reason for c in work.checked if isinstance(c, Rejection)]
    ops = sum(len(o) for o in work.ops)
    return {
        "sources": list(SOURCES), "events": len(work.records),
        "by_topic": dict(Counter(t for t, _ in work.records).most_common()),
        "partitions": len({(t, r.partition) for t, r in work.records}),
        "dead_lettered": len(rejected), "by_reason": dict(Counter(rejected).most_common()),
        "ops": ops, "ops_per_event": round(ops / len(work.records), 3),
        "mean_bytes": round(sum(len(r.value or b"") for _, r in work.records)
                            / len(work.records), 1),
    }


def ratios(cpu: dict[str, Any], redis: dict[str, Any]) -> dict[str, float]:
    apply, floors = redis["apply"], redis["floors"]
    a100, processor = apply[str(BATCH)], redis["processor"]["median"]
    a100_ops = a100["median"] * a100["ops"] / a100["events"]
    raw, client = floors["raw_socket"], floors["redis_asyncio"]
    return {
        "processor_vs_apply_100": processor / a100["median"],
        "apply_100_vs_hincrby_raw": a100_ops / raw["hincrby_ops_s"]["median"],
        "apply_100_vs_hincrby_asyncio": a100_ops / client["hincrby_ops_s"]["median"],
        "apply_1_call_vs_ping_asyncio": 1e6 / apply["1"]["median"] / client["ping_us"]["median"],
        "validate_vs_decode": cpu["validate_us"]["median"] / cpu["decode_us"]["median"],
        #: What the processor adds per event beyond apply, and how much of it a + b explain.
        "processor_extra_us": 1e6 / processor - 1e6 / a100["median"],
        "stages_ab_us": cpu["validate_us"]["median"] + cpu["ops_us"]["median"],
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, beside it) for the console and the markdown table alike."""
    cpu, redis, r = result["cpu"], result["redis"], result["ratios"]
    raw, cli = redis["floors"]["raw_socket"], redis["floors"]["redis_asyncio"]
    us = "{:,.2f} µs/event".format
    out = [
        ("a. orjson.loads only (baseline)", us(cpu["decode_us"]["median"]), ""),
        ("a. decode + validate", us(cpu["validate_us"]["median"]),
         f"{r['validate_vs_decode']:.1f}× bare decode"),
        ("b. ops_for (valid events)", us(cpu["ops_us"]["median"]), ""),
        ("c. PING, raw socket", f"{raw['ping_us']['median']:,.1f} µs/call", "server + kernel"),
        ("c. PING, redis.asyncio", f"{cli['ping_us']['median']:,.1f} µs/call",
         "the engine's client"),
        ("c. HINCRBY pipelined, raw socket", f"{raw['hincrby_ops_s']['median']:,.0f} ops/s",
         f"{raw['hincrby_ops_s']['round_trips']} round trips"),
        ("c. HINCRBY pipelined, redis.asyncio", f"{cli['hincrby_ops_s']['median']:,.0f} ops/s",
         f"{cli['hincrby_ops_s']['round_trips']} round trips"),
    ]
    for size, fig in redis["apply"].items():
        per_event = 1e6 / fig["median"]
        note = (f"{fig['median'] * fig['ops'] / fig['events']:,.0f} ops/s; Redis "
                f"{fig['server_us_per_event']:.0f} of {per_event:.0f} µs/event")
        if size == "1":
            note += f"; {r['apply_1_call_vs_ping_asyncio']:.1f}× a PING"
        out.append((f"d. StateStore.apply, batch={size}", f"{fig['median']:,.0f} events/s",
                    f"{note} ({fig['events']:,} events)"))
    proc = redis["processor"]
    out += [
        (f"e. BatchProcessor, batch={BATCH}", f"{proc['median']:,.0f} events/s",
         f"Redis {proc['server_us_per_event']:.0f} of {1e6 / proc['median']:.0f} µs/event; "
         f"+{r['processor_extra_us']:.0f} µs/event over apply, a + b explain "
         f"{r['stages_ab_us']:.0f}"),
        ("ratio: processor / apply batch=100", f"{r['processor_vs_apply_100']:.2f}", "events/s"),
        ("ratio: apply batch=100 / HINCRBY raw floor", f"{r['apply_100_vs_hincrby_raw']:.2f}",
         "ops/s"),
        ("ratio: apply batch=100 / HINCRBY redis.asyncio",
         f"{r['apply_100_vs_hincrby_asyncio']:.2f}", "ops/s"),
    ]
    return out


def header(result: dict[str, Any]) -> str:
    m, w, s = result["machine"], result["workload"], result["redis"]["server"]
    return (f"{w['events']:,} real events ({', '.join(w['sources'])} + derived catalogue), "
            f"{w['dead_lettered']:,} dead-lettered, {w['ops_per_event']} ops/event, "
            f"{w['partitions']} topic partitions; median of {result['repeat']} runs.\n"
            f"{m['cpus']} cores ({m['cpu_model']}), Python {m['python']}, {s['name']} "
            f"{s['version']} (appendonly {s['appendonly']}, fsync {s['appendfsync']}) on the "
            f"same cores; run took {result['elapsed_s']:.0f} s.")


def render_text(result: dict[str, Any]) -> str:
    table = rows(result)
    wide = [max(len(row[i]) for row in table) for i in range(2)]
    lines = [f"{a:<{wide[0]}}  {b:>{wide[1]}}  {c}".rstrip() for a, b, c in table]
    return header(result) + "\n\n" + "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    lines = ["# Hot-path benchmark", "", header(result), "",
             "| figure | median | note |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(result)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=None,
                        help="evenly spaced subset of the replay records (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.repeat < 1 or (args.events is not None and args.events < 1):
        parser.error("--events and --repeat must be at least 1")

    started = time.perf_counter()
    settings = load_settings()
    validator = Validator(load_catalogue(), settings.validation)
    say("building the workload from the replay data sets")
    work = build_workload(settings, validator, args.events)
    say(f"a, b. decode + validate and ops_for on {len(work.records):,} events")
    cpu = cpu_stages(work, validator, args.repeat)
    redis = redis_stages(settings, work, validator, args.repeat)
    result = {"benchmark": "hot_path", "repeat": args.repeat, "machine": machine(),
              "workload": describe(work), "cpu": cpu, "redis": redis,
              "ratios": ratios(cpu, redis), "elapsed_s": time.perf_counter() - started}

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hot_path.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (RESULTS / "hot_path.md").write_text(render_markdown(result))
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print(render_text(result))
        say(f"written: {RESULTS / 'hot_path.json'}, {RESULTS / 'hot_path.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
