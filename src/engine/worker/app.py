"""The Faust application: one thin agent per input topic around the BatchProcessor.

Faust is tuned for latency here: its aiokafka driver hard-codes ``fetch_max_wait_ms=1500``, which
on brokers that hold every fetch that long makes each event wait about a second; the transport
subclasses below pass ``worker.fetch_max_wait_ms`` instead, and the worker raises it while a
partition with records cannot move (``fetchwait``). State lives only in Redis (no Faust
tables, no changelog topics), the web server with its table and router views is off, and topics
come from the catalogue rather than Faust's auto-declaration.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import faust
import orjson
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from engine import metrics
from engine.config import Settings, item_stages_enabled
from engine.contracts import Catalogue, Rejection, Validator
from engine.core.compose import PRICE_SIGNALS, decision_core
from engine.errors import TRANSIENT_REDIS_ERRORS, StateError
from engine.kafka_client import faust_credentials, read_tail, topic_ids
from engine.pricing.stage import PricingStage, SignalForwarder, published_prices
from engine.published import Published
from engine.recommend.neighbours import NeighbourViews, ViewRefresher
from engine.recommend.personal import PersonalModel
from engine.stocking.stage import STOCKING_SIGNALS, StockingStage, published_signals
from engine.store import StateStore
from engine.worker.fetchwait import FetchWait, fetch_positions
from engine.worker.processor import BatchProcessor, RawRecord, Stage

log = logging.getLogger(__name__)

#: Exit status of a worker that stopped itself to protect the state (EX_SOFTWARE).
EXIT_FATAL = 70
#: Attempts, a second apart, to read the watermarks when partitions are assigned.
RESUME_ATTEMPTS = 30
#: Records Faust holds per topic ahead of each agent (Faust's default).
STREAM_BUFFER = 4096
#: Dead letters keep at most this much of a key; longer keys are cut, with a hash in a header.
DLQ_MAX_KEY_BYTES = 1024


#: What a worker process consumes: "all" topics, the "inputs" (forwarding item signals), or
#: only "pricing" (the item-keyed price-signals topic, in its own consumer group: the pricing
#: and stocking stages).
ROLES = ("all", "inputs", "pricing")


def group_id_for(settings: Settings, role: str) -> str:
    """The pricing workers form their own consumer group: they read one topic only."""
    return f"{settings.worker.group_id}.pricing" if role == "pricing" \
        else settings.worker.group_id


def build_app(settings: Settings, catalogue: Catalogue, group_id: str | None = None,
              stream_buffer: int = STREAM_BUFFER) -> faust.App:
    fetch_wait = settings.worker.fetch_max_wait_ms
    consumers: list[Any] = []   # the aiokafka consumer, for the fetch-wait governor

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_wait  # read when its fetcher starts
            consumers[:] = [consumer]   # a restarted consumer thread makes a new one
            return consumer

    class TunedConsumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def perform_seek(self) -> None:
            # Faust seeks every assigned partition to Kafka's committed offset here, just before
            # fetching resumes. Redis is the authority on what was applied: resume where
            # resume_offsets says (never past the record after the Redis watermark).
            await super().perform_seek()
            hook = getattr(self.app, "resume_from", None)
            if hook is None:
                return
            try:
                committed = {tp: off for tp, off in self._committed_offset.items()
                             if tp in self.assignment()}
                for tp, offset in (await hook(committed)).items():
                    await self.seek(tp, offset)
            except Exception:  # Faust swallows errors here; a skipped rewind would lose data
                die("cannot check the Redis watermarks of the assigned partitions")

    class Transport(faust_aiokafka.Transport):
        Consumer = TunedConsumer

    class App(faust.App):
        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

        @property
        def kafka_consumer(self) -> Any:
            """The aiokafka consumer under Faust's (None before the worker starts)."""
            return consumers[-1] if consumers else None

    w = settings.worker
    group_id = group_id or w.group_id
    return App(
        group_id,
        broker=[f"kafka://{host.strip()}" for host in settings.kafka.url.split(",")],
        broker_credentials=faust_credentials(settings.kafka),
        web_enabled=False,
        web_tables_enabled=False,
        web_router_enabled=False,
        producer_linger=w.producer_linger_ms / 1000.0,
        producer_acks=-1,
        broker_session_timeout=w.session_timeout_s,
        broker_heartbeat_interval=max(w.session_timeout_s / 5.0, 0.5),
        broker_commit_interval=w.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=max(t.partitions for t in catalogue.consumed),
        table_standby_replicas=0,
        datadir=os.path.join(tempfile.gettempdir(), f"engine-faust-{group_id}"),
        key_serializer="raw",
        value_serializer="raw",
        stream_buffer_maxsize=stream_buffer,
    )


def die(why: str) -> NoReturn:
    """Leave at once, before Faust can acknowledge or commit the records in flight.

    Used when a batch cannot be applied, or Redis lost acknowledged writes: the records stay
    uncommitted, and the restarted worker resumes from the Redis watermark. Exiting through
    Faust instead would run the take buffer's ``finally``, acknowledge the failed batch and
    commit past it.
    """
    log.critical("worker exiting: %s", why, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_FATAL)


def resume_offsets(watermarks: dict[TP, int], committed: dict[TP, int | None]
                   ) -> dict[TP, int]:
    """Where each assigned partition resumes: Kafka's committed offset (0 without one), or
    the record after the Redis watermark if that comes first (Redis lost writes Kafka had
    committed; see ``behind_kafka``). Records between the two are re-delivered on purpose:
    the watermark skips their state, but their signals to the item stages are sent again, in
    case the crash came before the broker took them. Every partition is sought explicitly: a
    consumer that keeps a partition across a rebalance keeps its fetch position, past records
    it had fetched but not applied (the fault suite's rebalance test caught them skipped)."""
    return {tp: min(committed.get(tp) or 0, mark + 1) for tp, mark in watermarks.items()}


def behind_kafka(watermarks: dict[TP, int], committed: dict[TP, int | None]) -> list[TP]:
    """Partitions where Kafka's committed offset is past the record after the Redis watermark:
    records were committed but their state was lost."""
    return [tp for tp, mark in watermarks.items()
            if (c := committed.get(tp)) is not None and c > mark + 1]


#: price-signals records per batch (each holds up to ``stage.SIGNALS_PER_RECORD`` signals).
PRICE_SIGNAL_RECORDS_PER_BATCH = 32
#: Records a pricing worker's Faust holds ahead of its agent: eight batches. It reads only
#: price-signals, whose records carry up to 200 signals (48 KB), and with Faust's 4,096 a
#: pricing worker that fell behind in the soak kept growing (237 -> 273 MB in 13 minutes).
PRICE_SIGNAL_BUFFER = 8 * PRICE_SIGNAL_RECORDS_PER_BATCH
#: How often the items touched are handed to the view projector (one SADD each time).
VIEW_HAND_OVER_S = 0.1


async def _retrying_redis(what: str, read: Callable[[], Awaitable[object]]) -> None:
    """An assignment's reads from Redis, retried each second while Redis is unavailable (it
    may be restarting), up to ``RESUME_ATTEMPTS`` times."""
    for attempt in range(RESUME_ATTEMPTS):
        try:
            await read()
            return
        except TRANSIENT_REDIS_ERRORS as exc:
            log.warning("Redis unavailable reading %s (%s); retry %d of %d", what, exc,
                        attempt + 1, RESUME_ATTEMPTS)
            await asyncio.sleep(1.0)
    raise StateError(f"Redis unavailable: cannot read {what} of the assignment")


class Worker:
    """Wires settings, catalogue, Redis and the Faust app; owns the worker's timers."""

    def __init__(self, settings: Settings, catalogue: Catalogue,
                 metrics_url: str | None = None, role: str = "all") -> None:
        if role not in ROLES:
            raise ValueError(f"worker role must be one of {ROLES}, got {role!r}")
        self.settings = settings
        self.metrics_url = metrics_url
        self.catalogue = catalogue
        self.role = role
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.started_ms = int(time.time() * 1000)
        items = item_stages_enabled(settings)
        consumed = [t for t in catalogue.consumed
                    if (t.name == PRICE_SIGNALS and items and role != "inputs")
                    or (t.name != PRICE_SIGNALS and role != "pricing")]
        self.app = build_app(settings, catalogue, group_id_for(settings, role),
                             PRICE_SIGNAL_BUFFER if role == "pricing" else STREAM_BUFFER)
        self.store = StateStore.open(settings.redis)
        self.views = ViewRefresher(NeighbourViews(self.store, catalogue, settings.recommend),
                                   settings.recommend)
        stages: list[Stage] = [PersonalModel(settings.recommend)]
        #: the item stages' publications, read back on assignment (``engine.published``)
        self.published: list[Published] = []
        if settings.pricing.enabled and role != "inputs":
            self.published.append(published_prices(catalogue, self._read_tail))
            stages.append(PricingStage(settings.pricing, self._send, self.published[-1]))
        if settings.stocking.enabled and role != "inputs":
            self.published.append(published_signals(
                catalogue.topics[STOCKING_SIGNALS].partitions, self._read_tail))
            stages.append(StockingStage(settings, self._send, self.published[-1]))
        forward = SignalForwarder(catalogue, self._send) \
            if items and role != "pricing" else None
        self.processor = BatchProcessor(self.store, Validator(catalogue, settings.validation),
                                        self._dead_letter, core=decision_core(settings),
                                        stages=stages, listeners=[self.views.observe],
                                        forward=forward, untimed=frozenset({PRICE_SIGNALS}),
                                        dedupe=frozenset(t.name for t in catalogue.inputs),
                                        dedupe_window=settings.validation.dedupe_window)
        self._dlq = {t.name: self.app.topic(catalogue.dlq(t.name)) for t in consumed}
        self._inputs = {t.name: self.app.topic(t.name, partitions=t.partitions)
                        for t in consumed}
        for name, topic in self._inputs.items():
            self._add_agent(name, topic)
        self.app.resume_from = self._resume_from  # type: ignore[attr-defined]
        # Faust may seek twice for one assignment: one check at a time
        self._resuming = asyncio.Lock()
        self.app.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]
        self.app.timer(settings.worker.heartbeat_interval_s)(self._heartbeat)
        self.app.timer(1.0)(self._flush_latency)
        self.fetch_wait = FetchWait(settings.worker.fetch_max_wait_ms)
        metrics.FETCH_WAIT.set(self.fetch_wait.wait_ms)
        self.app.timer(1.0)(self._govern_fetch_wait)
        if role != "pricing":
            self.app.timer(VIEW_HAND_OVER_S)(self.views.hand_over)
        self.children: list[tuple[str, Any]] = []
        self.app.timer(1.0)(self._watch_children)

    def watch(self, name: str, child: Any) -> None:
        """A helper process this worker started: if it exits, so does the worker (status 70),
        so that whatever supervises the worker restarts the pair instead of running half."""
        self.children.append((name, child))

    async def _watch_children(self) -> None:
        for name, child in self.children:
            code = child.poll()
            # stopped by SIGINT/SIGTERM: a Ctrl-C reaches the whole process group, and this
            # worker is stopping too; anything else leaves it half a worker
            if code is not None and code not in (-signal.SIGINT, -signal.SIGTERM) \
                    and not self.processor.stopping:
                die(f"the {name} child process exited with status {code}")

    def _add_agent(self, name: str, topic: faust.TopicT) -> None:
        w = self.settings.worker
        processor = self.processor
        # a price-signals record carries up to a few hundred signals: take few at a time, so
        # that one batch does not hold the event loop (and the input agents) for long
        batch_max = PRICE_SIGNAL_RECORDS_PER_BATCH if name == PRICE_SIGNALS else w.batch_max

        async def consume(stream: Any) -> None:  # a faust.Stream (take_events is not on StreamT)
            async for events in stream.take_events(batch_max, within=w.batch_within_ms / 1000):
                records = [RawRecord(e.message.partition, e.message.offset,
                                     int(e.message.timestamp * 1000), e.message.key,
                                     e.message.value) for e in events]
                try:
                    await processor.process(name, records)
                except Exception:
                    die(f"cannot apply a batch of {name} ({len(records)} records from offset "
                        f"{records[0].offset} of partition {records[0].partition})")

        consume.__name__ = f"apply_{name.replace('-', '_')}"
        self.app.agent(topic, name=f"engine.apply.{name}", concurrency=1)(consume)

    async def _send(self, topic: str, records: list[tuple[bytes | None, bytes, int | None]]
                    ) -> Awaitable[object]:
        """Enqueue records (key, value, partition or None for the key's) on an engine topic in
        order; the result resolves on the broker's acks (a failed send fails the batch, which
        is then not acknowledged)."""
        producer = self.app.producer   # straight to aiokafka: Faust's send wraps each record
        try:                            # in futures and callbacks we do not need here
            pending = [await producer.send(topic, key, value, partition, None, None)
                       for key, value, partition in records]
        except Exception:
            metrics.BROKER_ERRORS.labels(topic).inc()
            raise
        return asyncio.gather(*pending)

    async def _read_tail(self, topic: str, starts: dict[int, int | None], recent: int
                         ) -> tuple[list[bytes], dict[int, int]]:
        return await asyncio.to_thread(read_tail, self.settings.kafka, topic, starts, recent)

    async def _dead_letter(self, topic: str, record: RawRecord, rejection: Rejection
                           ) -> Awaitable[object]:
        headers = [
            ("dlq.reason", rejection.reason.encode()),
            ("dlq.detail", rejection.detail.encode("utf-8", "replace")),
            ("dlq.topic", topic.encode()),
            ("dlq.partition", str(record.partition).encode()),
            ("dlq.offset", str(record.offset).encode()),
            ("dlq.timestamp", str(record.timestamp_ms).encode()),
        ]
        key, value = record.key, record.value or b""
        limit = self.settings.validation.max_event_bytes
        if len(value) > limit:   # a record the broker took may not fit again beside headers
            headers += [("dlq.truncated_from", str(len(value)).encode()),
                        ("dlq.sha256", hashlib.sha256(value).hexdigest().encode())]
            value = value[:limit]
        if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
            headers += [("dlq.key_sha256", hashlib.sha256(key).hexdigest().encode())]
            key = key[:DLQ_MAX_KEY_BYTES]
        try:
            return await self._dlq[topic].send(key=key, value=value, headers=headers,
                                               force=True)
        except Exception:
            metrics.BROKER_ERRORS.labels(self.catalogue.dlq(topic)).inc()
            raise

    async def _resume_from(self, committed: dict[TP, int | None]) -> dict[TP, int]:
        """On assignment: load the Redis watermarks; where Redis is behind Kafka's committed
        offset, return the offset to resume from (the first record Redis has not applied)."""
        async with self._resuming:
            return await self._resume_from_locked(committed)

    async def _resume_from_locked(self, committed: dict[TP, int | None]) -> dict[TP, int]:
        mine = sorted((tp.topic, tp.partition) for tp in self.app.consumer.assignment()
                      if tp.topic in self._inputs)
        self.processor.watermarks.clear()
        await _retrying_redis("the watermarks", lambda: self.processor.load_watermarks(mine))
        metrics.ASSIGNED.set(len(mine))
        await self._reset_lost_logs(mine)
        await self._read_back([p for t, p in mine if t == PRICE_SIGNALS])
        marks = {TP(t, p): self.processor.watermarks[(t, p)] for t, p in mine}
        seeks = resume_offsets(marks, committed)
        for tp in behind_kafka(marks, committed):
            log.warning("Redis is behind Kafka on %s:%d (watermark %d, committed %s): "
                        "replaying from offset %d", tp.topic, tp.partition, marks[tp],
                        committed[tp], seeks[tp])
        log.info("assigned %d input partitions; watermarks %s", len(mine),
                 {f"{tp.topic}:{tp.partition}": wm for tp, wm in marks.items()})
        await self._heartbeat()
        return seeks

    async def _read_back(self, partitions: list[int]) -> None:
        """The item stages read back what they published after their shards' marks (both
        topics at once: assignment waits for this)."""
        shards = {p: self.store.shard(PRICE_SIGNALS, p) for p in partitions}
        await _retrying_redis("the publish marks", lambda: asyncio.gather(
            *(published.resume(self.store, shards) for published in self.published)))

    async def _reset_lost_logs(self, mine: list[tuple[str, int]]) -> None:
        """Where the broker lost a partition's log, its offsets start again, and a watermark
        left as it is would skip every new record as a re-delivery. Checked on every
        assignment: the topic's id (Kafka 2.8+, Redpanda, Tansu) against the one stored with
        the shard. A different id means the topic was created again (a broker that keeps no
        data restarted, a topic deleted and re-created): the watermark goes back to -1, the
        shard's epoch moves on, the item stages' source marks for it are forgotten, and a
        critical line is logged. A broker without topic ids is trusted to have lost the log
        only when it is empty.

        A log that ends at or below the watermark under the same id is only reported: Kafka
        truncates a log below its committed end only through an unclean leader election (off by
        default), and some brokers report the end of a log inexactly (Tansu 0.6 answers the
        last batch's base offset + 1), so acting on it would re-apply records.
        """
        if not mine:
            return
        topics = sorted({t for t, _ in mine})
        ids = await asyncio.to_thread(topic_ids, self.settings.kafka, topics)
        stored = await self.store.log_ids(mine)
        ends = await self.app.consumer.highwaters(*[TP(t, p) for t, p in mine])
        item_shards = [(PRICE_SIGNALS, p)
                       for p in range(self.catalogue.topics[PRICE_SIGNALS].partitions)]
        for topic, partition in mine:
            mark = self.processor.watermarks[(topic, partition)]
            current, before = ids.get(topic), stored.get((topic, partition))
            end = ends.get(TP(topic, partition))
            why = ""
            if mark >= 0 and current and before and current != before:
                why = f"topic id {before} is now {current}: the topic was created again"
            elif mark >= 0 and not current and end == 0:
                why = "the log is empty (the broker gives no topic ids to tell more)"
            elif mark >= 0 and end is not None and end <= mark:
                log.warning("%s:%d: the broker says the log ends at offset %d, at or below the "
                            "watermark %d, under the same topic id: an unclean leader election "
                            "truncated it, or the broker reports its end inexactly; the "
                            "watermark stays", topic, partition, end, mark)
            if why:
                epoch = await self.store.reset_log(
                    topic, partition, -1, item_shards if topic != PRICE_SIGNALS else ())
                self.processor.watermarks[(topic, partition)] = -1
                metrics.LOG_RESETS.labels(topic).inc()
                log.critical("%s:%d: the broker lost records this engine applied (%s). The log "
                             "was lost: its offsets start again (epoch %d); records applied "
                             "before stay counted.", topic, partition, why, epoch)
            if current and current != before:
                await self.store.set_log_id(topic, partition, current)

    def _assigned(self) -> list[tuple[str, int]]:
        consumer = self.app.consumer
        return sorted((tp.topic, tp.partition) for tp in consumer.assignment()
                      if tp.topic in self._inputs)

    async def _heartbeat(self) -> None:
        try:
            await self._beat()
        except TRANSIENT_REDIS_ERRORS as exc:   # a timer's error would stop the whole worker
            metrics.REDIS_ERRORS.inc()
            log.warning("heartbeat not written: Redis unavailable (%s)", exc)

    async def _beat(self) -> None:
        assigned = self._assigned()
        for topic, partition in assigned:
            high = self.app.consumer.highwater(TP(topic, partition))
            applied = self.processor.watermarks.get((topic, partition), -1)
            if high is not None:
                metrics.LAG.labels(topic, str(partition)).set(max(high - 1 - applied, 0))
        beat = {"pid": os.getpid(), "host": socket.gethostname(), "role": self.role,
                "started_ms": self.started_ms,
                "heartbeat_ms": int(time.time() * 1000),
                "applied": self.processor.applied, "duplicates": self.processor.duplicates,
                "metrics_url": self.metrics_url,
                "assigned": [f"{t}:{p}" for t, p in assigned]}
        await self.store.client.hset(self.store.key("workers"), self.id, orjson.dumps(beat))

    async def _govern_fetch_wait(self) -> None:
        consumer = self.app.kafka_consumer   # type: ignore[attr-defined]
        fetcher = getattr(consumer, "_fetcher", None)
        try:
            seen = fetch_positions(fetcher, getattr(self.app.consumer,
                                                    "_buffered_partitions", ()))
        except Exception:   # aiokafka's own thread moves these; a bad read costs one look
            log.debug("fetch positions not read this second", exc_info=True)
            return
        if seen is None or fetcher is None:    # between generations: nothing to judge
            return
        before = self.fetch_wait.wait_ms
        wait = self.fetch_wait.update(seen)
        if wait != before:
            fetcher._fetch_max_wait_ms = wait   # read for every fetch request
            metrics.FETCH_WAIT.set(wait)
            if before == self.fetch_wait.floor_ms:
                log.warning("partitions hold records their position does not reach: fetch wait "
                            "raised from %d ms (doubling each second while they stay)", before)
            elif wait == self.fetch_wait.floor_ms:
                log.info("partitions moving: fetch wait back to %d ms", wait)

    async def _flush_latency(self) -> None:
        counts = self.processor.latency.drain()
        if not counts:
            return
        key = self.store.key("metrics:event_to_state")
        pipe = self.store.client.pipeline(transaction=False)
        for bucket, n in counts.items():
            pipe.hincrby(key, str(bucket), n)
        try:
            await pipe.execute()
        except TRANSIENT_REDIS_ERRORS as exc:
            metrics.REDIS_ERRORS.inc()
            self.processor.latency.counts.update(counts)   # keep them for the next flush
            log.warning("latency histogram not flushed: Redis unavailable (%s)", exc)

    async def _on_shutdown(self, app: faust.App, **_: Any) -> None:
        self.processor.stopping = True
        await self._flush_latency()
        try:
            await self.store.client.hdel(self.store.key("workers"), self.id)
        except TRANSIENT_REDIS_ERRORS as exc:
            log.warning("worker not removed from the registry: Redis unavailable (%s)", exc)
        await self.store.close()
