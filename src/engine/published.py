"""Decisions a stage published but its shard's state does not show yet: each is published once.

The item stages publish a batch's decisions (``prices``, ``stocking-signals``) before they apply
the batch, so a crash in between cannot lose a decision: the batch runs again from the same
state and makes the same decisions with the same ids. Without more, it would also publish them
again. So each shard also keeps, in the batches it applies, a mark per partition of the output
topic (``<prefix>pub``: output partition -> offset) below which none of its publishes is
unapplied. On assignment the stage reads the output topic from the owned shards' marks to the
end (``Tail``): what it finds there are decisions of a batch that was published and not
applied, and their ids are not published again when that batch runs again (its state is still
applied).

The marks are where this process's publishes on each partition had ended (every ack counts,
whichever shard sent it; the ends found on assignment start it) when a batch finished
publishing: the shard's own later publishes can only come after. A batch writes them when it
published something new, or when no id read back is still waiting to be skipped: a batch that
only re-ran part of a crashed batch must not move the mark past the rest of it.

A shard without a mark for a partition (its first batches), or whose mark lies outside the log
(the broker lost the topic), has the partition's last ``recent`` records read instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol, cast

import orjson

from engine import metrics
from engine.core.activity import Op
from engine.errors import TailUnavailable
from engine.store import StateStore

log = logging.getLogger(__name__)

#: Records read back per partition where a shard has no usable mark: more than a stage batch
#: publishes (32 price-signals records of at most 200 signals).
RECENT = 10_000


#: Sends (key, value, partition or None) records to a topic, in order, and returns an
#: awaitable of the broker's acks (the stages' ``Send``).
Send = Callable[[str, list[tuple[bytes | None, bytes, int | None]]],
                Awaitable[Awaitable[object]]]

#: Reads a topic's partitions, each from its offset (None, or an offset outside its log: its
#: last ``recent`` records), to the end. Returns the record values and each partition's end (the
#: offset after its last record); partitions left out are not read. Raises TailUnavailable.
Tail = Callable[[str, dict[int, int | None], int], Awaitable[tuple[list[bytes], dict[int, int]]]]


class Ack(Protocol):
    """What the broker answers for one sent record (aiokafka's RecordMetadata)."""

    partition: int
    offset: int


class Published:
    """One stage's publications on one output topic; see the module docstring."""

    def __init__(self, topic: str, partitions: int, key: str, id_field: str,
                 tail: Tail | None, recent: int = RECENT,
                 routes: Callable[[int], Collection[int]] | None = None) -> None:
        self.topic = topic
        #: the shard hash that keeps the marks, per output partition
        self.key = key
        self.id_field = id_field
        self.tail = tail
        self.recent = recent
        #: the output partitions a shard's decisions can go to (all, unless the stage knows)
        self.routes = routes or (lambda shard: range(partitions))
        #: ids read back on assignment not yet met again (each is skipped once, then dropped)
        self.unapplied: set[str] = set()
        #: output partition -> offset after the last record this process knows is there
        self.ends: dict[int, int] = {}

    async def resume(self, store: StateStore, shards: dict[int, str]) -> None:
        """On assignment (``shards``: partition -> prefix of each shard now owned): read the
        output topic after the shards' marks and remember its decision ids."""
        self.unapplied = set()
        if self.tail is None or not shards:
            return
        pipe = store.client.pipeline(transaction=False)
        for prefix in shards.values():
            pipe.hgetall(prefix + self.key)
        rows: list[dict[str, str]] = await pipe.execute()
        starts: dict[int, int | None] = {}
        for shard, row in zip(shards, rows, strict=True):
            for q in self.routes(shard):
                mark = int(row[str(q)]) if str(q) in row else None
                if q not in starts:
                    starts[q] = mark
                else:
                    before = starts[q]
                    starts[q] = None if before is None or mark is None else min(before, mark)
        try:
            values, ends = await self.tail(self.topic, starts, self.recent)
        except TailUnavailable as exc:   # not worth a worker that cannot start
            metrics.REPUBLISH_UNCHECKED.labels(self.topic).inc()
            log.warning("%s not read back on assignment (%s): a batch that crashed after "
                        "publishing and runs again publishes its decisions again", self.topic,
                        exc)
            return
        self.ends = dict(ends)   # the log as it is now (a lost topic starts again at 0)
        for value in values:
            try:
                self.unapplied.add(str(orjson.loads(value)[self.id_field]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue   # not a decision (nothing but the engine writes this topic)
        if self.unapplied:
            log.info("%s: %d decisions on the topic after the marks of partitions %s; a batch "
                     "that runs again does not publish them twice", self.topic,
                     len(self.unapplied), sorted(shards))

    def fresh(self, records: list[tuple[bytes | None, bytes, int | None]],
              ids: Sequence[str]) -> list[tuple[bytes | None, bytes, int | None]]:
        """The records (with their decision ``ids``, in the same order) not published yet."""
        if not self.unapplied:
            return records
        out = []
        for record, i in zip(records, ids, strict=True):
            if i in self.unapplied:
                self.unapplied.discard(i)
            else:
                out.append(record)
        if len(out) < len(records):
            metrics.REPUBLISH_SKIPPED.labels(self.topic).inc(len(records) - len(out))
        return out

    async def publish(self, send: Send, records: list[tuple[bytes | None, bytes, int | None]],
                      ids: Sequence[str]) -> int:
        """Send the batch's records not published yet (``fresh``), wait for the broker to
        acknowledge them and note where it put them; returns how many were sent."""
        records = self.fresh(records, ids)
        if records:
            publishing = time.perf_counter()
            acks = cast(Sequence[Ack], await (await send(self.topic, records)))
            for ack in acks:
                self.ends[ack.partition] = max(self.ends.get(ack.partition, 0), ack.offset + 1)
            metrics.STAGE.labels("publish").observe(time.perf_counter() - publishing)
        return len(records)

    def marks(self, published: bool) -> list[Op]:
        """The ops that keep the marks, applied with the batch (see the module docstring)."""
        if not published and self.unapplied:
            return []
        return [("hset", self.key, str(q), str(end)) for q, end in sorted(self.ends.items())]
