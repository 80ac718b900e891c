"""The hot path: a batch of raw input records -> validated -> DLQ or state ops -> Redis, once.

Kept free of Faust so the same code runs in the worker, the tests and the benchmarks. Order per
batch: decode and validate everything; publish dead letters and wait for the broker's ack; apply
each partition's slice in one atomic Redis call with its watermark. Only after this returns does
the agent acknowledge the records, so a crash at any point re-delivers them, and the watermark
turns the re-delivery into a no-op: nothing accepted is lost, nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions

from engine import metrics
from engine.contracts import Rejection, Validator
from engine.core.activity import Op, dead_letter_ops, ops_for
from engine.errors import TRANSIENT_REDIS_ERRORS, StateError
from engine.latency import LatencyHistogram
from engine.store import ApplyResult, StateStore

log = logging.getLogger(__name__)



class WatermarkRegressed(StateError):
    """Redis's watermark went backwards under a running worker: it lost acknowledged writes.

    Fatal for the worker process: a restarted worker is assigned the partition again and
    rewinds Kafka to the Redis watermark (``worker.app``), replaying what Redis lost.
    """


#: Reason for records whose state operations Redis refused one by one (a bug, never bad input:
#: input is validated first). The records are dead-lettered so the partition keeps moving.
UNPROCESSABLE = "unprocessable"


@dataclass(frozen=True, slots=True)
class RawRecord:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class Stage(Protocol):
    """A model step that needs the shard's state as of the batch (model parameters): it reads
    at the start of the batch and returns extra ops per offset. It must process events in
    offset order with its own in-memory overlay, so its result does not depend on where batch
    boundaries fall, and it must read nothing it will not write back under the same watermark.
    The stages of a batch run concurrently, so each must read and write keys of its own.
    """

    async def ops(self, store: StateStore, topic: str, partition: int,
                  events: Sequence[tuple[int, dict[str, Any]]]) -> dict[int, list[Op]]: ...


#: Enqueues one dead letter (in call order) and returns an awaitable that resolves when the
#: broker has it, so a batch's letters keep their order and are awaited together.
DeadLetterSink = Callable[[str, RawRecord, Rejection], Awaitable[Awaitable[object]]]
#: Enqueues what a batch's valid events imply for other topics (topic, [(partition, offset,
#: event)]) and returns an awaitable of the broker's acks, or None when nothing was sent.
Forward = Callable[[str, Sequence[tuple[int, int, dict[str, Any]]]],
                   Awaitable[Awaitable[object] | None]]


class BatchProcessor:
    def __init__(self, store: StateStore, validator: Validator, dead_letter: DeadLetterSink,
                 clock: Callable[[], float] = time.time,
                 core: Callable[[str, dict[str, Any]], list[Op]] = ops_for,
                 stages: Sequence[Stage] = (),
                 listeners: Sequence[Callable[[str, list[dict[str, Any]]], None]] = (),
                 forward: Forward | None = None, untimed: frozenset[str] = frozenset(),
                 dedupe: frozenset[str] = frozenset(), dedupe_window: int = 0
                 ) -> None:
        self.store = store
        #: topics whose events are dead-lettered as duplicate_event_id when their event_id was
        #: applied before in the same partition, among its latest ``dedupe_window`` (producer
        #: retries, replays of a feed): re-deliveries by Kafka are skipped by the watermark
        #: before this, so they are never mistaken for duplicates
        self.dedupe = dedupe if dedupe_window > 0 else frozenset()
        self.dedupe_window = dedupe_window
        #: re-keys events for a downstream stage (price signals); it is sent for every valid
        #: record, re-deliveries included, and awaited before the batch is acknowledged, so a
        #: crash re-sends rather than loses (the receiver skips what it already counted)
        self.forward = forward
        #: topics left out of the event-to-state histogram (internal hops: their records are
        #: stamped by the engine, and counting them would weigh the histogram by batch)
        self.untimed = untimed
        self.core = core
        self.stages = stages
        #: told the valid events of each applied batch (read models to refresh)
        self.listeners = listeners
        self.validator = validator
        self.dead_letter = dead_letter
        self.clock = clock
        self.latency = LatencyHistogram()
        self.watermarks: dict[tuple[str, int], int] = {}
        #: Since start: records applied, and re-deliveries skipped by the watermark.
        self.applied = 0
        self.duplicates = 0
        self.stopping = False

    async def load_watermarks(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Refresh the cached watermarks (on assignment: Redis is the authority)."""
        for topic, partition in partitions:
            self.watermarks[(topic, partition)] = await self.store.watermark(topic, partition)

    async def process(self, topic: str, records: Sequence[RawRecord]) -> None:
        started = time.perf_counter()
        self._delivered(topic, records)
        slices: dict[int, list[tuple[int, list[Op]]]] = {}
        valid: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        fresh: list[RawRecord] = []
        letters: list[Awaitable[object]] = []
        forwarded: list[tuple[int, int, dict[str, Any]]] = []
        judged: list[tuple[RawRecord, dict[str, Any] | Rejection]] = []
        for record in records:
            if record.offset <= self.watermarks.get((topic, record.partition), -1):
                metrics.EVENTS.labels(topic, "duplicate").inc()
                self.duplicates += 1
                if self.forward is not None:
                    again = self.validator.check(topic, record.value, record.timestamp_ms)
                    if not isinstance(again, Rejection):
                        forwarded.append((record.partition, record.offset, again))
                continue
            judged.append((record, self.validator.check(topic, record.value,
                                                        record.timestamp_ms)))
        if topic in self.dedupe:
            judged = await self._reject_repeated_ids(topic, judged)
        for record, checked in judged:
            if isinstance(checked, Rejection):
                letters.append(await self.dead_letter(topic, record, checked))
                metrics.DEAD_LETTERS.labels(topic, checked.reason).inc()
                ops = dead_letter_ops(checked.reason)
            else:
                ops = self.core(topic, checked)
                if topic in self.dedupe:
                    ops.append(("seenid", "ids", checked["event_id"], str(self.dedupe_window)))
                valid.setdefault(record.partition, []).append((record.offset, checked))
                if self.forward is not None:
                    forwarded.append((record.partition, record.offset, checked))
            slices.setdefault(record.partition, []).append((record.offset, ops))
            fresh.append(record)
        validated = time.perf_counter()
        metrics.STAGE.labels("decode_validate").observe(validated - started)
        if letters:
            await asyncio.gather(*letters)
            metrics.STAGE.labels("dlq_publish").observe(time.perf_counter() - validated)
        # enqueued now, awaited after the apply: the broker round trip overlaps Redis's
        sent = await self.forward(topic, forwarded) if forwarded and self.forward else None
        # the batch's time in the stages (model updates) and in the apply script; per call:
        # every topic's agent runs this concurrently
        timing = [0.0, 0.0]
        skipped = 0
        for partition, batch in slices.items():
            result = await self._apply_partition(topic, partition, batch,
                                                 valid.get(partition, []), fresh, timing)
            self.watermarks[(topic, partition)] = result.watermark
            if result.skipped:
                metrics.EVENTS.labels(topic, "duplicate").inc(result.skipped)
                self.duplicates += result.skipped
                skipped += result.skipped
        metrics.STAGE.labels("redis_apply").observe(timing[1])
        if self.stages and valid:
            metrics.STAGE.labels("model_update").observe(timing[0])
        if sent is not None:
            forwarded_at = time.perf_counter()
            await sent
            metrics.STAGE.labels("forward_ack").observe(time.perf_counter() - forwarded_at)
        if self.listeners and valid:
            events = [event for rows in valid.values() for _, event in rows]
            for listener in self.listeners:
                listener(topic, events)
        metrics.BATCH_SIZE.observe(len(records))
        self._account(topic, fresh, skipped)

    async def _reject_repeated_ids(
            self, topic: str, judged: list[tuple[RawRecord, dict[str, Any] | Rejection]]
    ) -> list[tuple[RawRecord, dict[str, Any] | Rejection]]:
        """Valid events whose event_id the partition applied before (kept in its shard's
        ``ids``, one read per partition) or earlier in this batch become rejections."""
        ids: dict[int, list[str]] = {}
        for record, checked in judged:
            if not isinstance(checked, Rejection):
                ids.setdefault(record.partition, []).append(checked["event_id"])
        if not ids:
            return judged
        pipe = self.store.client.pipeline(transaction=False)
        for partition, names in ids.items():
            pipe.zmscore(self.store.shard(topic, partition) + "ids", names)
        seen = {(partition, name) for (partition, names), scores
                in zip(ids.items(), await pipe.execute(), strict=True)
                for name, score in zip(names, scores, strict=True) if score is not None}
        out: list[tuple[RawRecord, dict[str, Any] | Rejection]] = []
        for record, checked in judged:
            if not isinstance(checked, Rejection):
                key = (record.partition, checked["event_id"])
                if key in seen:
                    checked = Rejection("duplicate_event_id", f"event_id {key[1]!r} was "
                                        f"already applied in {topic}[{record.partition}]")
                else:
                    seen.add(key)
            out.append((record, checked))
        return out

    def _delivered(self, topic: str, records: Sequence[RawRecord]) -> None:
        now_ms = self.clock() * 1000.0
        observe = metrics.DELIVERY.labels(topic).observe
        for record in records:
            observe(max(now_ms - record.timestamp_ms, 0.0) / 1000.0)

    def _account(self, topic: str, fresh: Sequence[RawRecord], skipped: int) -> None:
        now_ms = self.clock() * 1000.0
        observe = metrics.EVENT_TO_STATE.labels(topic).observe
        ok = metrics.EVENTS.labels(topic, "applied")
        timed = topic not in self.untimed
        for record in fresh:
            lag_ms = max(now_ms - record.timestamp_ms, 0.0)
            if timed:
                self.latency.record(lag_ms)
            observe(lag_ms / 1000.0)
        ok.inc(len(fresh) - skipped)
        self.applied += len(fresh) - skipped

    async def _apply_partition(self, topic: str, partition: int,
                               batch: list[tuple[int, list[Op]]],
                               valid: list[tuple[int, dict[str, Any]]],
                               records: Sequence[RawRecord], timing: list[float]
                               ) -> ApplyResult:
        """Add the stages' ops, apply; if another writer got there first, re-read the
        watermark, drop what it applied and recompute the stages from fresh state."""
        skipped = 0
        while True:
            extra: dict[int, list[Op]] = {}
            # the stages write disjoint keys: they run concurrently, so that their Redis reads
            # and broker acks overlap, and their ops are merged in stage order (deterministic)
            modelled = time.perf_counter()
            computed = await asyncio.gather(*(stage.ops(self.store, topic, partition, valid)
                                              for stage in self.stages))
            timing[0] += time.perf_counter() - modelled
            for stage_ops in computed:
                for offset, ops in stage_ops.items():
                    extra.setdefault(offset, []).extend(ops)
            full = [(offset, ops + extra.get(offset, [])) for offset, ops in batch]
            applying = time.perf_counter()
            result = await self._apply_or_isolate(topic, partition, full, records)
            timing[1] += time.perf_counter() - applying
            if not result.overtaken:
                return ApplyResult(result.applied, result.skipped + skipped, result.watermark)
            mark = result.watermark
            log.warning("%s[%d] was written up to offset %d by another worker; re-reading",
                        topic, partition, mark)
            self.watermarks[(topic, partition)] = mark
            skipped += sum(1 for offset, _ in batch if offset <= mark)
            batch = [(o, ops) for o, ops in batch if o > mark]
            valid = [(o, e) for o, e in valid if o > mark]
            if not batch:
                return ApplyResult(0, skipped, mark)

    async def _apply_or_isolate(self, topic: str, partition: int,
                                batch: list[tuple[int, list[Op]]], records: Sequence[RawRecord]
                                ) -> ApplyResult:
        """Apply a partition's slice; if Redis refuses it (the script names an invalid op and
        writes nothing), apply event by event and dead-letter the ones it refuses."""
        try:
            return await self._apply(topic, partition, batch)
        except redis.exceptions.ResponseError as exc:
            log.error("Redis refused %s[%d] offsets %d-%d (%s); isolating the event(s)", topic,
                      partition, batch[0][0], batch[-1][0], exc)
        by_offset = {r.offset: r for r in records if r.partition == partition}
        total = ApplyResult(0, 0, self.watermarks.get((topic, partition), -1))
        for offset, ops in batch:
            try:
                result = await self._apply(topic, partition, [(offset, ops)])
                if result.overtaken:
                    return result
            except redis.exceptions.ResponseError as exc:
                rejection = Rejection(UNPROCESSABLE, str(exc)[:300])
                await (await self.dead_letter(topic, by_offset[offset], rejection))
                metrics.DEAD_LETTERS.labels(topic, UNPROCESSABLE).inc()
                result = await self._apply(topic, partition,
                                           [(offset, dead_letter_ops(UNPROCESSABLE))])
            self.watermarks[(topic, partition)] = result.watermark
            total = ApplyResult(total.applied + result.applied, total.skipped + result.skipped,
                                result.watermark)
        return total

    async def _apply(self, topic: str, partition: int, batch: list[tuple[int, list[Op]]]
                     ) -> ApplyResult:
        delay = 0.05
        expected = self.watermarks.get((topic, partition))
        while True:
            try:
                result = await self.store.apply(topic, partition, batch, expected)
            except TRANSIENT_REDIS_ERRORS as exc:
                if self.stopping:
                    raise
                metrics.REDIS_ERRORS.inc()
                log.warning("Redis unavailable applying %s[%d] offsets %d-%d (%s); retrying in "
                            "%.2fs", topic, partition, batch[0][0], batch[-1][0], exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if result.regressed:
                raise WatermarkRegressed(
                    f"Redis watermark of {topic}[{partition}] is {result.watermark}, behind the "
                    f"{expected} this worker applied: Redis lost acknowledged writes")
            return result
