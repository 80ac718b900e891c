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

import redis.exceptions

from engine import metrics
from engine.contracts import Rejection, Validator
from engine.core.activity import Op, dead_letter_ops, ops_for
from engine.latency import LatencyHistogram
from engine.store import StateStore

log = logging.getLogger(__name__)

#: Redis errors worth waiting out (server restarting, failover); anything else is a bug.
_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              redis.exceptions.BusyLoadingError, redis.exceptions.TryAgainError,
              redis.exceptions.ClusterDownError)


@dataclass(frozen=True, slots=True)
class RawRecord:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


#: Enqueues one dead letter (in call order) and returns an awaitable that resolves when the
#: broker has it, so a batch's letters keep their order and are awaited together.
DeadLetterSink = Callable[[str, RawRecord, Rejection], Awaitable[Awaitable[object]]]


class BatchProcessor:
    def __init__(self, store: StateStore, validator: Validator, dead_letter: DeadLetterSink,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
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
        slices: dict[int, list[tuple[int, list[Op]]]] = {}
        fresh: list[RawRecord] = []
        letters: list[Awaitable[object]] = []
        for record in records:
            if record.offset <= self.watermarks.get((topic, record.partition), -1):
                metrics.EVENTS.labels(topic, "duplicate").inc()
                self.duplicates += 1
                continue
            result = self.validator.check(topic, record.value, record.timestamp_ms)
            if isinstance(result, Rejection):
                letters.append(await self.dead_letter(topic, record, result))
                metrics.DEAD_LETTERS.labels(topic, result.reason).inc()
                ops = dead_letter_ops(result.reason)
            else:
                ops = ops_for(topic, result)
            slices.setdefault(record.partition, []).append((record.offset, ops))
            fresh.append(record)
        validated = time.perf_counter()
        metrics.STAGE.labels("decode_validate").observe(validated - started)
        if letters:
            await asyncio.gather(*letters)
            metrics.STAGE.labels("dlq_publish").observe(time.perf_counter() - validated)
        applied_at = time.perf_counter()
        skipped = 0
        for partition, batch in slices.items():
            result = await self._apply(topic, partition, batch)
            self.watermarks[(topic, partition)] = result.watermark
            if result.skipped:
                metrics.EVENTS.labels(topic, "duplicate").inc(result.skipped)
                self.duplicates += result.skipped
                skipped += result.skipped
        metrics.STAGE.labels("redis_apply").observe(time.perf_counter() - applied_at)
        metrics.BATCH_SIZE.observe(len(records))
        self._account(topic, fresh, skipped)

    def _account(self, topic: str, fresh: Sequence[RawRecord], skipped: int) -> None:
        now_ms = self.clock() * 1000.0
        observe = metrics.EVENT_TO_STATE.labels(topic).observe
        ok = metrics.EVENTS.labels(topic, "applied")
        for record in fresh:
            lag_ms = max(now_ms - record.timestamp_ms, 0.0)
            self.latency.record(lag_ms)
            observe(lag_ms / 1000.0)
        ok.inc(len(fresh) - skipped)
        self.applied += len(fresh) - skipped

    async def _apply(self, topic: str, partition: int, batch: list[tuple[int, list[Op]]]):
        delay = 0.05
        while True:
            try:
                return await self.store.apply(topic, partition, batch)
            except _TRANSIENT as exc:
                if self.stopping:
                    raise
                metrics.REDIS_ERRORS.inc()
                log.warning("Redis unavailable applying %s[%d] offsets %d-%d (%s); retrying in "
                            "%.2fs", topic, partition, batch[0][0], batch[-1][0], exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
