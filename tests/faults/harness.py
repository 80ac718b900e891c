"""The fault suite's shared machinery: a private stack (broker, Redis, workers) that a test may
crash piece by piece, the real events it replays, and the state comparison against a clean run.

What "equal" means. Each input partition's shard is written in offset order by one script call
per batch, so a single pass through any number of crashes, restarts and rebalances must leave
every key of every input shard (counters, co-occurrence weights, demand tallies, histories, the
FunkMF vectors, DLQ counts, watermarks) identical, to the bit, to a clean pass. The item stages'
shards (`price-signals`) receive signals from every input partition interleaved as the batches
happened to be cut, so only their commutative figures must match: the signals stepped on per
kind (one model update each), the source marks, the rejections. Decisions published on
`prices` must not repeat an id.

Sizes: the default is the short version run by CI; ``FAULT_SUITE=full`` runs the issue's
(100,000+ real events, 20+ crashes, ...) and writes each test's figures to
``benchmarks/results/faults/<test>.json``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from engine.config import Settings
from engine.contracts import Catalogue
from engine.embedded import ManagedProcess, create_topics, start_broker, start_redis
from engine.replay.catalog import derive_catalog
from engine.replay.inventory import opening_stock
from engine.replay.publish import publish
from engine.replay.sources import Record, merged, open_source
from engine.store import StateStore

from ..conftest import (
    REPO,
    WORKER_JOIN_TIMEOUT_S,
    assigned_partitions,
    heartbeats,
    worker_process,
)

FULL = os.environ.get("FAULT_SUITE", "") == "full"
RESULTS = REPO / "benchmarks" / "results" / "faults"
ITEM_TOPIC = "price-signals"
SOURCES = ("rees46", "online_retail", "competitor_prices", "hammer")
#: Events per source: the full version replays more than 100,000 real events.
LIMITS = ({"rees46": None, "online_retail": None, "competitor_prices": None, "hammer": 72_000}
          if FULL else {"rees46": 2_500, "online_retail": 250, "competitor_prices": 300,
                        "hammer": 500})
SHARD = re.compile(r"^[^{]*\{(?P<topic>[^:}]+):(?P<partition>\d+)\}:(?P<rest>.*)$")


def fault_records(settings: Settings) -> list[Record]:
    """Real events of all four data sets in event-time order, after the DERIVED catalogue of
    the items they touch and the DERIVED opening stock (as the demo replays them)."""
    root = settings.replay.datasets_path
    streams = [open_source(name, root, regions=settings.replay.rees46_regions,
                           limit=LIMITS[name]) for name in SOURCES]
    events = list(merged(*streams))
    touched = {line["item_id"] for r in events for line in r.event.get("lines", ())} | {
        r.event["item_id"] for r in events if "item_id" in r.event}
    catalogue = [r for r in derive_catalog(root, SOURCES) if r.event["item_id"] in touched]
    records = list(merged(catalogue, events))
    return list(merged(opening_stock(records, settings.regions), records))


def save_figures(name: str, figures: dict[str, Any]) -> None:
    """The full version's figures, for the closing note and the README."""
    print(f"\n{name}: {orjson.dumps(figures).decode()}")
    if FULL:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... (Linux /proc)."""
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in map(int, children):
        out += [child, *descendants(child)]
    return out


def crash(proc: ManagedProcess) -> None:
    """SIGKILL a process and everything it started at once: a machine or container dying, with
    no shutdown hook, no final commit and no child told to stop."""
    assert proc.popen is not None
    for pid in [*descendants(proc.popen.pid), proc.popen.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.popen.wait()


@dataclasses.dataclass
class Stack:
    """A private broker, Redis and any number of worker processes, for one fault test."""

    base: Settings
    catalogue: Catalogue
    run_dir: Path
    settings: Settings = dataclasses.field(init=False)
    broker: ManagedProcess = dataclasses.field(init=False)
    redis: ManagedProcess = dataclasses.field(init=False)
    #: a Redis Cluster seed URL to keep state in, instead of a Redis of the stack's own
    cluster_url: str = ""
    workers: list[ManagedProcess] = dataclasses.field(default_factory=list)
    started_workers: int = 0

    def __post_init__(self) -> None:
        self.broker = start_broker(self.run_dir / "broker")
        self.redis = start_redis(self.run_dir / "redis", fresh=True)
        live = self.base.with_urls(self.broker.url, self.cluster_url or self.redis.url)
        if self.cluster_url:
            live = dataclasses.replace(live, redis=dataclasses.replace(
                live.redis, cluster=True, namespace=f"faults{uuid.uuid4().hex[:6]}"))
        self.settings = dataclasses.replace(live, worker=dataclasses.replace(
            live.worker, group_id=f"faults-{uuid.uuid4().hex[:8]}"))
        create_topics(self.broker.url, self.catalogue.creation_plan(), replication_factor=1)

    def store(self) -> StateStore:
        return StateStore.open(self.settings.redis)

    def start_worker(self, wait: bool = True, **env: str) -> ManagedProcess:
        self.started_workers += 1
        proc = worker_process(
            self.settings, self.run_dir / f"worker-{self.started_workers}.log",
            f"worker-{self.started_workers}", ENGINE_KAFKA_CREATE_TOPICS="false",
            ENGINE_REDIS_CLUSTER=str(self.settings.redis.cluster).lower(), **env)
        proc.start()
        self.workers.append(proc)
        if wait:
            self.wait_covered(proc)
        return proc

    def wait_covered(self, proc: ManagedProcess, workers: int | None = None) -> None:
        """Until live heartbeats cover every input and item-stage partition (and, with
        ``workers``, that many input workers hold some)."""
        wanted = {f"{t.name}:{p}" for t in self.catalogue.consumed for p in range(t.partitions)}

        def covered() -> bool:
            if not assigned_partitions(self.settings) >= wanted:
                return False
            if workers is None:
                return True
            now = time.time() * 1000
            return len([b for b in heartbeats(self.settings)
                        if b["role"] != "pricing" and b["assigned"]
                        and now - b["heartbeat_ms"] < 5000]) == workers

        proc.wait_ready(covered, timeout=WORKER_JOIN_TIMEOUT_S)

    def crash_worker(self, proc: ManagedProcess) -> None:
        crash(proc)
        self.workers.remove(proc)

    def crash_redis(self, before_restart: Callable[[], object] | None = None) -> None:
        """SIGKILL Redis and start it again on the same port from its append-only file
        (``before_restart`` may damage the file first, as a power loss would)."""
        crash(self.redis)
        if before_restart is not None:
            before_restart()
        port = int(self.settings.redis.url.rsplit(":", 1)[1].split("/")[0])   # redis://h:p/0
        self.redis = start_redis(self.run_dir / "redis", port=port, fresh=False)

    def publish(self, records: Sequence[Record], rate: float | None = None
                ) -> threading.Thread:
        thread = threading.Thread(target=publish, args=(list(records),), kwargs={
            "bootstrap": self.settings.kafka.url, "kafka_options": {}, "rate": rate,
            "progress": False}, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        for proc in self.workers:
            proc.stop()
        self.redis.stop()
        self.broker.stop()


def end_offsets(settings: Settings, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The exact end of each partition's log: one past the last offset a fetch returns.
    (Tansu 0.6 answers a list-offsets request with the last batch's base offset + 1, short of
    the real end when that batch holds several records; fetching from there finds the rest.)"""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.url, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        listed = consumer.end_offsets(tps)
        consumer.assign(tps)
        ends = dict(listed)
        for tp, end in listed.items():
            consumer.seek(tp, max(end - 1, 0))
        quiet = 0
        while quiet < 2:
            batches = consumer.poll(timeout_ms=300)
            quiet = 0 if batches else quiet + 1
            for tp, records in batches.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1)
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}
    finally:
        consumer.close()


async def watermarks(store: StateStore, keys: Sequence[tuple[str, int]]
                     ) -> dict[tuple[str, int], int]:
    return {(t, p): await store.watermark(t, p) for t, p in keys}


async def wait_caught_up(settings: Settings, catalogue: Catalogue, store: StateStore,
                         timeout: float, what: str) -> None:
    """Until every input and item-stage partition's Redis watermark reaches the end of its log
    (the item stages' end moves while the inputs are applied: read it again each round)."""
    topics = [s.name for s in catalogue.inputs] + [ITEM_TOPIC]
    deadline = time.monotonic() + timeout
    while True:
        ends = end_offsets(settings, topics)
        marks = await watermarks(store, list(ends))
        behind = {f"{t}:{p}": ends[(t, p)] - 1 - marks[(t, p)] for t, p in ends
                  if marks[(t, p)] < ends[(t, p)] - 1}
        if not behind:
            if ends == end_offsets(settings, topics):
                return
            continue
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                 f"records behind: {behind}")
        await asyncio.sleep(0.5)


async def _value(client: Any, key: str, kind: str) -> Any:
    if kind == "string":
        return await client.get(key)
    if kind == "hash":
        return dict(sorted((await client.hgetall(key)).items()))
    if kind == "zset":
        return sorted(await client.zrange(key, 0, -1, withscores=True))
    if kind == "list":
        return await client.lrange(key, 0, -1)
    if kind == "set":
        return sorted(await client.smembers(key))
    raise AssertionError(f"unexpected Redis type {kind} of {key}")


#: Item-stage hash fields that are commutative over the interleaving of signals.
COMMUTATIVE = {"pxsrc": None, "stsrc": None,
               "pxstats": re.compile(r"^steps:"), "ststats": re.compile(r"^(malformed|unproc)")}


async def snapshot(store: StateStore, catalogue: Catalogue,
                   skip: Sequence[str] = ()) -> dict[str, Any]:
    """Every key of every input shard, exactly; the item stages' commutative figures summed
    over their shards. ``skip`` drops input-shard keys (after the shard prefix) by name, or
    hash fields as ``key.field``."""
    inputs = {s.name for s in catalogue.inputs}
    state: dict[str, Any] = {}
    items: Counter[str] = Counter()
    async for key in store.client.scan_iter(match=f"{store.namespace}:{{*", count=1000):
        match = SHARD.match(key)
        if match is None:
            continue
        topic, rest = match["topic"], match["rest"]
        if topic in inputs:
            if rest in skip or rest == "logid":    # the broker's topic id: differs per stack
                continue
            kind = await store.client.type(key)
            value = await _value(store.client, key, kind)
            if kind == "hash":
                value = {f: v for f, v in value.items() if f"{rest}.{f}" not in skip}
            state[f"{{{topic}:{match['partition']}}}:{rest}"] = value
        elif topic == ITEM_TOPIC and rest in COMMUTATIVE:
            pattern = COMMUTATIVE[rest]
            for field, value in (await store.client.hgetall(key)).items():
                if pattern is None or pattern.match(field):
                    items[f"{rest}.{field}"] += int(value)
    state["item-stages"] = dict(sorted(items.items()))
    return state


def differences(got: dict[str, Any], want: dict[str, Any], limit: int = 10) -> list[str]:
    """Keys (hash fields, for hashes) whose values differ: at most ``limit``, for the
    assertion message."""
    out = []
    for key in sorted(set(got) | set(want)):
        a, b = got.get(key), want.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{f}: got {a.get(f)} want {b.get(f)}" for f in sorted(set(a) | set(b))
                    if a.get(f) != b.get(f)]
        else:
            out.append(f"{key}: got {str(a)[:300]} want {str(b)[:300]}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def count_differences(got: dict[str, Any], want: dict[str, Any]) -> int:
    return sum(1 for key in set(got) | set(want) if got.get(key) != want.get(key))


def read_all(settings: Settings, topics: Sequence[str], **options: Any) -> Iterator[Any]:
    """Every record now on ``topics``, from the beginning. It reads until the broker has
    nothing more (two empty polls), not up to the listed end offsets, which Tansu 0.6 gives
    short of the real end (see ``end_offsets``)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.url, enable_auto_commit=False,
                             **options)
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        quiet = 0
        while quiet < 2:
            batches = consumer.poll(timeout_ms=1000)
            quiet = 0 if batches else quiet + 1
            for records in batches.values():
                yield from records
    finally:
        consumer.close()


async def applied_decisions(store: StateStore, catalogue: Catalogue) -> dict[str, set[str]]:
    """The decision ids the item stages' applied state says were published: every change in
    the items' price histories (``pxh``) and every open stocking signal (``sto``)."""
    prices: set[str] = set()
    signals: set[str] = set()
    for p in range(catalogue.topics["price-signals"].partitions):
        shard = store.shard("price-signals", p)
        async for key in store.client.scan_iter(match=f"{shard}pxh:*", count=1000):
            prices |= {orjson.loads(v)["decision_id"] for v in
                       await store.client.lrange(key, 0, -1)}
        signals |= {orjson.loads(v)["event_id"] for v in
                    (await store.client.hgetall(shard + "sto")).values()}
    return {"prices": prices, "stocking-signals": signals}


def read_back(run_dir: Path) -> dict[str, int]:
    """Decisions the workers of a run found on each output topic after their shards' marks on
    assignment (published by a batch that crashed before its apply, and for topics with many
    writers per partition also others' applied ones), from their logs."""
    pattern = re.compile(r"([a-z-]+): (\d+) decisions on the topic after the marks")
    out: Counter[str] = Counter()
    for log in run_dir.glob("worker-*.log"):
        for topic, n in pattern.findall(log.read_text(errors="replace")):
            out[topic] += int(n)
    return dict(out)


#: The field that identifies a decision on each topic the item stages publish to.
DECISION_ID = {"prices": "decision_id", "stocking-signals": "event_id"}


def decision_ids(settings: Settings, topic: str = "prices") -> Counter[str]:
    """Every decision id on ``topic``, read from the beginning to its current end."""
    field = DECISION_ID[topic]
    return Counter(orjson.loads(r.value)[field] for r in read_all(settings, [topic]))


def random_moments(rng: random.Random, n: int, low: float, high: float) -> Iterator[float]:
    for _ in range(n):
        yield rng.uniform(low, high)
