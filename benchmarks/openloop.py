"""Open-loop load and what it takes to see each event become a decision.

* ``Mix``: real events from ``../shared/datasets`` (the replay's records), interleaved by topic in
  the demo data's own shares (clickstream 75 %, orders 15 %, competitor prices 9 %, carts 1 %).
  The clickstream, carts and orders are few (three hours of REES46, a year of invoices), so a
  long run sends them again: cycle k > 0 gets event ids suffixed ``~k`` (a DERIVED stream, same
  contents and event times). Competitor prices come in event-time order from Kaggle and the
  hammer feed and are not repeated within a run's length.
* ``Generator``: a child process with a kafka-python producer that sends event i at
  ``t0 + i / rate`` (a fixed schedule that never waits for the engine) and stamps each record
  with that due time, so a stall shows up as latency instead of a slower send (no coordinated
  omission). It reports each record's partition, offset and due time.
* ``Observer``: in the bench process, polls Redis once a millisecond with one script call (every
  input partition's watermark, every item-stage shard's source marks) and reads ``prices`` and
  the floor topics with one aiokafka consumer. Each poll is a timestamped row; when an event
  became state is the first row whose watermark (or source mark) covers its offset.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.config import Settings
from engine.contracts import Catalogue, Rejection, Validator
from engine.core.compose import PRICE_SIGNALS
from engine.core.repricing import signals_for
from engine.kafka_client import aiokafka_options
from engine.pricing.stage import SOURCE_SLOTS
from engine.replay.sources import Record
from engine.stocking.stage import KINDS as STOCKING_KINDS
from engine.store import StateStore

#: The demo data's shares of the live topics (REES46 + Online Retail + Kaggle: 17,055 clicks,
#: 3,444 orders, 2,028 competitor prices, 165 cart events).
SHARES = (("clicks", 17_055), ("orders", 3_444), ("competitor-prices", 2_028), ("carts", 165))
RECO_TOPICS = ("clicks", "carts", "orders")
#: Topics whose events are decisions' inputs and whose watermarks the observer polls.
POLLED_INPUTS = ("clicks", "carts", "orders", "competitor-prices", "catalog", "inventory")
FLOOR_TOPIC, PASS_TOPIC, PASS_DONE_TOPIC = "bench-floor", "bench-pass", "bench-pass-done"
POLL_INTERVAL_S = 0.001

# --- the events -----------------------------------------------------------------------------


@dataclass
class Mix:
    """The events a run sends, pre-serialised, with what the observer needs to match them."""

    topic: list[str] = field(default_factory=list)
    key: list[bytes] = field(default_factory=list)
    value: list[bytes] = field(default_factory=list)
    valid: list[bool] = field(default_factory=list)
    #: per order event: (price-signals partition, highest signal index that goes there)
    stock_dests: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    items: set[str] = field(default_factory=set)

    def add(self, topic: str, key: str, event: dict[str, Any], ok: bool,
            catalogue: Catalogue) -> None:
        i = len(self.topic)
        self.topic.append(topic)
        self.key.append(key.encode())
        self.value.append(orjson.dumps(event))
        self.valid.append(ok)
        if "item_id" in event:
            self.items.add(str(event["item_id"]))
        if topic == "orders" and ok:
            dests: dict[int, int] = {}
            for n, signal in enumerate(signals_for(topic, event)[:SOURCE_SLOTS]):
                self.items.add(signal["item_id"])
                if signal["kind"] not in STOCKING_KINDS:   # returns: stocking skips them
                    continue
                dest = catalogue.partition_of(PRICE_SIGNALS, signal["item_id"])
                dests[dest] = n
            if dests:
                self.stock_dests[i] = sorted(dests.items())

    def __len__(self) -> int:
        return len(self.topic)

    def wire(self, start: int, stop: int) -> list[tuple[str, bytes, bytes]]:
        return list(zip(self.topic[start:stop], self.key[start:stop], self.value[start:stop],
                        strict=True))


def interleaved(records: Sequence[Record], count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """``count`` live events in the demo's topic shares (see the module docstring)."""
    pools: dict[str, list[Record]] = {t: [] for t, _ in SHARES}
    for r in records:
        if r.topic in pools:
            pools[r.topic].append(r)
    shares = [(t, w) for t, w in SHARES if pools[t]]   # a data set left out: no such events
    total = sum(w for _, w in shares)
    sent = dict.fromkeys(pools, 0)
    out: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(count):
        # the topic furthest behind its share goes next: deterministic, evenly spread
        topic = max(shares, key=lambda tw: tw[1] * (i + 1) / total - sent[tw[0]])[0]
        pool = pools[topic]
        cycle, index = divmod(sent[topic], len(pool))
        sent[topic] += 1
        record = pool[index]
        event = record.event
        if cycle:
            event = {**event, "event_id": f"{event['event_id']}~{cycle}"}
        out.append((topic, record.key, event))
    return out


def build_mix(catalogue: Catalogue, validator: Validator, records: Sequence[Record],
              count: int) -> tuple[Mix, Mix]:
    """(warm-up, live): the live events, and first the catalogue entries and opening stock of
    the items they touch (the catalogue gives list prices, the stock lets stocking decide)."""
    live = Mix()
    now_ms = int(time.time() * 1000)
    for topic, key, event in interleaved(records, count):
        checked = validator.check(topic, orjson.dumps(event), now_ms)
        live.add(topic, key, event, not isinstance(checked, Rejection), catalogue)
    warm = Mix()
    for r in records:
        if r.topic in ("catalog", "inventory") and str(r.event.get("item_id")) in live.items:
            warm.add(r.topic, r.key, r.event, True, catalogue)
    return warm, live


# --- the generator (a child process) --------------------------------------------------------


@dataclass
class Sent:
    """What the generator did for a run of events: arrays aligned with the events sent."""

    partition: np.ndarray
    offset: np.ndarray
    due: np.ndarray          # wall clock, s: when each event was scheduled
    late: np.ndarray         # s: how much later than due it was handed to the producer
    failed: int
    wall_s: float


def _generator(conn: Any, bootstrap: str, options: dict[str, Any]) -> None:
    from kafka import KafkaProducer  # imported here: the child is spawned

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1, **options)
    events: list[tuple[str, bytes, bytes]] = []
    while True:
        command, *args = conn.recv()
        if command == "stop":
            producer.close(timeout=10)
            conn.send("stopped")
            return
        if command == "load":
            events = args[0]
            conn.send(len(events))
            continue
        conn.send(_send_all(producer, events, *args))


def _send_all(producer: Any, events: list[tuple[str, bytes, bytes]], start: int, stop: int,
              rate: float | None, topic: str | None, t0: float) -> Sent:
    n = stop - start
    partition = np.full(n, -1, dtype=np.int64)
    offset = np.full(n, -1, dtype=np.int64)
    due = np.empty(n)
    late = np.empty(n)
    failures = [0]

    def delivered(i: int, meta: Any) -> None:   # in the producer's I/O thread
        partition[i] = meta.partition
        offset[i] = meta.offset

    def failed(_exc: Any) -> None:
        failures[0] += 1

    began = time.time()
    for i in range(n):
        when = t0 + i / rate if rate else max(t0, began)
        wait = when - time.time()
        if wait > 0:
            time.sleep(wait)
        name, key, value = events[start + i]
        due[i], late[i] = when, max(0.0, time.time() - when)
        future = producer.send(topic or name, key=key, value=value,
                               timestamp_ms=int(when * 1000))
        future.add_callback(delivered, i)
        future.add_errback(failed)
    producer.flush()
    return Sent(partition, offset, due, late, failures[0], time.time() - began)


class Generator:
    def __init__(self, settings: Settings) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_generator, daemon=True, name="bench-generator",
                                   args=(child, settings.kafka.url,
                                         settings.kafka.kafka_python_options()))
        self.process.start()

    def load(self, events: list[tuple[str, bytes, bytes]]) -> None:
        self.conn.send(("load", events))
        self.conn.recv()

    async def run(self, start: int, stop: int, rate: float | None, topic: str | None = None,
                  lead_s: float = 0.2) -> Sent:
        """Send events [start, stop) at ``rate`` (None: as fast as the producer goes) from
        ``lead_s`` from now, optionally all to ``topic``; returns when the broker acked all."""
        t0 = time.time() + lead_s
        self.conn.send(("run", start, stop, rate, topic, t0))
        sent: Sent = await asyncio.to_thread(self.conn.recv)
        return sent

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
            self.conn.poll(15) and self.conn.recv()
        except (OSError, EOFError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


# --- the observer ---------------------------------------------------------------------------

#: KEYS: the watermark keys, then the source-mark hashes; ARGV[1]: how many watermark keys,
#: ARGV[2..]: the source-mark fields. One flat array back: values, or -1 when absent.
_POLL = """
local out = {}
local n = tonumber(ARGV[1])
for i = 1, #KEYS do
  if i <= n then
    out[#out + 1] = redis.call('GET', KEYS[i]) or '-1'
  else
    local values = redis.call('HMGET', KEYS[i], unpack(ARGV, 2))
    for j = 1, #values do out[#out + 1] = values[j] or '-1' end
  end
end
return out
"""


class Observer:
    """Polls state and reads the output topics for the whole run; ``window`` slices it."""

    def __init__(self, settings: Settings, catalogue: Catalogue, store: StateStore) -> None:
        self.settings, self.catalogue, self.store = settings, catalogue, store
        self.columns: list[tuple[str, int]] = []   # ("wm:<topic>" | "src:<shard>:<source>", p)
        keys = []
        for topic in (*POLLED_INPUTS, PRICE_SIGNALS):
            for p in range(catalogue.topics[topic].partitions):
                keys.append(store.shard(topic, p) + "wm")
                self.columns.append((f"wm:{topic}", p))
        self.wm_keys = len(keys)
        orders = catalogue.topics["orders"].partitions
        self.fields = [f"orders:{p}" for p in range(orders)]
        for shard in range(catalogue.topics[PRICE_SIGNALS].partitions):
            keys.append(store.shard(PRICE_SIGNALS, shard) + "stsrc")
            for p in range(orders):
                self.columns.append((f"src:{shard}:orders", p))
        self.keys = keys
        self.rows: list[tuple[float, np.ndarray]] = []
        #: (receive time, topic, partition, offset, value) of prices and the floor topics
        self.messages: list[tuple[float, str, int, int, bytes]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self.error: str | None = None   # set if polling or reading stopped with an error
        self._stopping = False

    def column(self, name: str, partition: int) -> int:
        return self.columns.index((name, partition))

    async def start(self) -> None:
        script = self.store.client.register_script(_POLL)
        self._consumer = AIOKafkaConsumer(
            enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10,
            **aiokafka_options(self.settings.kafka))
        await self._consumer.start()
        tps = [TopicPartition(t, p) for t in ("prices", FLOOR_TOPIC, PASS_DONE_TOPIC)
               for p in range(self.catalogue.topics["prices"].partitions
                              if t == "prices" else 4 if t == FLOOR_TOPIC else 1)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        self._tasks = [asyncio.create_task(self._poll(script)),
                       asyncio.create_task(self._read())]
        for task in self._tasks:
            task.add_done_callback(self._died)

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.error = f"{task.get_name()}: {task.exception()!r}"
            print(f"bench observer stopped: {self.error}", file=sys.stderr, flush=True)

    async def _poll(self, script: Any) -> None:
        args = [self.wm_keys, *self.fields]
        while not self._stopping:
            values = await script(keys=self.keys, args=args)
            # floats parse both the watermarks and hsetmax's marks; 8 bytes a column
            self.rows.append((time.time(), np.array(values, dtype=np.float64)))
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _read(self) -> None:
        assert self._consumer is not None
        while not self._stopping:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.time()
            for tp, messages in batches.items():
                for m in messages:
                    self.messages.append((now, tp.topic, tp.partition, m.offset, m.value))

    async def stop(self) -> None:
        # a flag first: redis-py may swallow a cancellation that lands inside a command
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        if self._consumer is not None:
            await self._consumer.stop()

    def series(self, since: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, values): the poll rows since ``since``, values as an int matrix."""
        rows = [r for r in self.rows if r[0] >= since]
        if not rows:
            return np.empty(0), np.empty((0, len(self.columns)), dtype=np.int64)
        times = np.array([t for t, _ in rows])
        values = np.vstack([vals for _, vals in rows]).astype(np.int64)
        return times, values

    def forget(self, before: float) -> None:
        self.rows = [r for r in self.rows if r[0] >= before]
        self.messages = [m for m in self.messages if m[0] >= before]


# --- matching -------------------------------------------------------------------------------


def first_reaching(times: np.ndarray, column: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target, the first time the (non-decreasing) column reached it; NaN if never."""
    running = np.maximum.accumulate(column) if len(column) else column
    index = np.searchsorted(running, targets, side="left")
    out = np.full(len(targets), np.nan)
    hit = index < len(times)
    out[hit] = times[index[hit]]
    return out


@dataclass
class Latencies:
    """Per decision: latencies (ms) of the events that reached it, and how many did not."""

    ms: dict[str, np.ndarray]
    missing: dict[str, int]
    dead_lettered: int


def match(obs: Observer, mix: Mix, start: int, sent: Sent, since: float) -> Latencies:
    """Latency of every event of ``mix[start:start+len(sent.offset)]`` to each decision."""
    times, values = obs.series(since)
    n = len(sent.offset)
    topics = np.array(mix.topic[start:start + n])
    valid = np.array(mix.valid[start:start + n], dtype=bool)
    ms: dict[str, list[np.ndarray]] = {"recommendations": [], "stocking": [], "price": []}
    missing = dict.fromkeys(ms, 0)
    for topic in RECO_TOPICS:
        for p in range(obs.catalogue.topics[topic].partitions):
            sel = (topics == topic) & (sent.partition == p) & valid
            if not sel.any():
                continue
            col = values[:, obs.column(f"wm:{topic}", p)] if len(times) else np.empty(0)
            at = first_reaching(times, col, sent.offset[sel])
            ms["recommendations"].append((at - sent.due[sel]) * 1000)
    # stocking: an order counts once every item-stage shard it reached has marked its signals
    for local in range(n):
        dests = mix.stock_dests.get(start + local)
        if not dests or sent.partition[local] < 0:   # no stocking signal, or never sent
            continue
        p, off = int(sent.partition[local]), int(sent.offset[local])
        reached = []
        for shard, index in dests:
            col = values[:, obs.column(f"src:{shard}:orders", p)] if len(times) else np.empty(0)
            reached.append(first_reaching(times, col,
                                          np.array([off * SOURCE_SLOTS + index]))[0])
        # NaN (a shard that never counted it) must win: np.max propagates it, max() may not
        ms["stocking"].append(np.array([(np.max(reached) - sent.due[local]) * 1000]))
    # prices: a change names the input event that moved it (reason.signal)
    due_of = {(mix.topic[start + i], int(sent.partition[i]), int(sent.offset[i])): sent.due[i]
              for i in range(n)}
    for at, topic, _p, _o, value in obs.messages:
        if topic != "prices" or at < since:
            continue
        signal = orjson.loads(value).get("reason", {}).get("signal", "")
        parts = signal.split(":")
        if len(parts) == 4:
            key = (parts[0], int(parts[1]), int(parts[2]))
            if key in due_of:
                ms["price"].append(np.array([(at - due_of[key]) * 1000]))
    out: dict[str, np.ndarray] = {}
    for name, chunks in ms.items():
        values_ms = np.concatenate(chunks) if chunks else np.empty(0)
        missing[name] = int(np.isnan(values_ms).sum())
        out[name] = values_ms[~np.isnan(values_ms)]
    return Latencies(out, missing, int((~valid).sum()))


def floor_latencies(obs: Observer, sent: Sent, since: float) -> tuple[np.ndarray, int]:
    """Raw produce -> consume on ``bench-floor``: ms per record, and records never seen."""
    due_of = {(int(p), int(o)): d for p, o, d in zip(sent.partition, sent.offset, sent.due,
                                                      strict=True)}
    out = [(at - due_of.pop((p, o))) * 1000 for at, topic, p, o, _ in obs.messages
           if topic == FLOOR_TOPIC and at >= since and (p, o) in due_of]
    return np.array(out), len(due_of)


def passthrough_latencies(obs: Observer, since: float) -> np.ndarray:
    """Record timestamp (its due time, to the ms) -> the agent's per-batch report received."""
    out: list[float] = []
    for at, topic, _p, _o, value in obs.messages:
        if topic == PASS_DONE_TOPIC and at >= since:
            out.extend(at * 1000 - stamp for stamp in orjson.loads(value))
    return np.array(out)


def passthrough_done(obs: Observer, since: float) -> tuple[int, float | None]:
    """Events the pass-through agent reported since ``since``, and when the last report came."""
    count, last = 0, None
    for at, topic, _p, _o, value in obs.messages:
        if topic == PASS_DONE_TOPIC and at >= since:
            count += len(orjson.loads(value))
            last = at
    return count, last
