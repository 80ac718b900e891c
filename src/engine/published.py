"""Decisions a stage published but its shard's state does not show yet: each is published once.

The item stages publish a batch's decisions (``prices``, ``stocking-signals``) before they apply
the batch, so a crash in between cannot lose a decision: the batch runs again from the same
state and makes the same decisions with the same ids. Without more, it would also publish them
again. So each shard also keeps, in the batch it applies, where its publishes ended on each
partition of the output topic (``<prefix>pub``: output partition -> next offset). On assignment
a stage reads the output topic from there to its end (``Tail``): whatever is on it is a
decision of a batch that was published and not applied, and its id is not published again when
that batch runs again. The batch's state is still applied.

A shard that has no mark yet for a partition (a first batch, or state from before this mark
existed), or whose mark lies outside the log (the broker lost the topic), has the partition's
last ``recent`` records read instead: more than one stage batch can publish.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

import orjson
from kafka.errors import KafkaError

from engine import metrics
from engine.core.activity import Op
from engine.store import StateStore

log = logging.getLogger(__name__)

#: Reads a topic's partitions, each from its offset (None, or an offset outside its log: its
#: last ``recent`` records), to the end; returns the record values. Partitions left out are not
#: read.
Tail = Callable[[str, dict[int, int | None], int], Awaitable[list[bytes]]]


class Ack(Protocol):
    """What the broker answers for one sent record (aiokafka's RecordMetadata)."""

    partition: int
    offset: int


class Published:
    """One stage's publications on one output topic; see the module docstring."""

    def __init__(self, topic: str, partitions: int, key: str, id_field: str,
                 tail: Tail | None, recent: int,
                 routes: Callable[[int], Collection[int]] | None = None) -> None:
        self.topic = topic
        self.partitions = partitions
        #: the shard hash that keeps where this stage's publishes ended, per output partition
        self.key = key
        self.id_field = id_field
        self.tail = tail
        self.recent = recent
        #: the output partitions a shard's decisions can go to (all, unless the stage knows)
        self.routes = routes or (lambda shard: range(partitions))
        #: ids on the output topic that the owned shards' applied state does not account for
        self.unapplied: set[str] = set()

    async def resume(self, store: StateStore, shards: dict[int, str]) -> None:
        """On assignment (``shards``: partition -> prefix of each shard now owned): read the
        output topic after the shards' applied publishes and remember its decision ids."""
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
            values = await self.tail(self.topic, starts, self.recent)
        except (KafkaError, OSError) as exc:   # not worth a worker that cannot start
            log.warning("%s not read back on assignment (%s): a batch that crashed after "
                        "publishing and runs again publishes its decisions again", self.topic,
                        exc)
            return
        for value in values:
            try:
                self.unapplied.add(str(orjson.loads(value)[self.id_field]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue   # not a decision (nothing but the engine writes this topic)
        if self.unapplied:
            log.info("%s: %d decisions on the topic after the applied state of partitions %s; "
                     "a batch that runs again does not publish them twice", self.topic,
                     len(self.unapplied), sorted(shards))

    def fresh(self, records: list[tuple[bytes | None, bytes, int | None]],
              ids: Sequence[str]) -> list[tuple[bytes | None, bytes, int | None]]:
        """The records (with their decision ``ids``, in the same order) not published yet."""
        if not self.unapplied:
            return records
        out = [r for r, i in zip(records, ids, strict=True) if i not in self.unapplied]
        if len(out) < len(records):
            metrics.REPUBLISH_SKIPPED.labels(self.topic).inc(len(records) - len(out))
        return out

    def marks(self, acks: Sequence[Ack]) -> list[Op]:
        """The ops that keep where this batch's publishes ended (applied with the batch)."""
        ends: dict[int, int] = {}
        for ack in acks:
            ends[ack.partition] = max(ends.get(ack.partition, -1), ack.offset + 1)
        return [("hset", self.key, str(p), str(o)) for p, o in sorted(ends.items())]
