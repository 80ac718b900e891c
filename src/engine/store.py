"""The Redis state layer: one small interface over Redis, Valkey and Redis Cluster, chosen by URL.

State is sharded like the input log: everything one input partition changes lives under
``<ns>:{<topic>:<partition>}:`` and is written by one script call per batch together with that
partition's watermark (``state/apply_batch.lua``). The braces are a Redis hash tag, so one call
always touches one cluster slot. A reader that wants a global figure (say, an item's views) merges
the shards of a topic, a handful of pipelined reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.config import RedisSettings
from engine.core.activity import Op
from engine.errors import StateError
from engine.resources import data_dir

Batch = Sequence[tuple[int, Sequence[Op]]]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    skipped: int
    watermark: int

    @property
    def regressed(self) -> bool:
        """Redis's watermark was behind the caller's: nothing was written."""
        return self.applied == -1

    @property
    def overtaken(self) -> bool:
        """Redis's watermark was ahead of the caller's (another writer): nothing was written."""
        return self.applied == -2


def connect(settings: RedisSettings) -> Any:
    """An asyncio client for ``settings.url``: plain, TLS (rediss://), ACL user or cluster."""
    if not settings.url:
        raise StateError("redis.url is empty: start the embedded stack or set ENGINE_REDIS_URL")
    options: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30}
    if settings.username:
        options["username"] = settings.username
    if settings.password:
        options["password"] = settings.password
    if settings.url.startswith("rediss://") and settings.ssl_ca_certs:
        options["ssl_ca_certs"] = settings.ssl_ca_certs
    if settings.cluster:
        options.pop("health_check_interval")
        return RedisCluster.from_url(settings.url, **options)
    return aioredis.Redis.from_url(settings.url, **options)


class StateStore:
    """Exactly-once application of event batches, and the reads the API and demo need."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        script = (data_dir("state") / "apply_batch.lua").read_text()
        self._apply = client.register_script(script)

    @classmethod
    def open(cls, settings: RedisSettings) -> StateStore:
        return cls(connect(settings), settings.namespace)

    async def close(self) -> None:
        await self.client.aclose()

    def shard(self, topic: str, partition: int) -> str:
        return f"{self.namespace}:{{{topic}:{partition}}}:"

    def key(self, name: str) -> str:
        """A key outside any shard (worker registry, metrics), for single-key commands."""
        return f"{self.namespace}:{name}"

    async def apply(self, topic: str, partition: int, batch: Batch,
                    expected: int | None = None) -> ApplyResult:
        """Apply events (offset ascending) and advance the watermark, in one atomic call.

        ``expected`` is the watermark the caller last saw; if Redis's differs nothing is
        applied: lower means Redis lost writes (``regressed``), higher that another writer got
        there first (``overtaken``).
        A batch with an invalid operation raises ``redis.ResponseError`` and writes nothing.
        """
        prefix = self.shard(topic, partition)
        payload = orjson.dumps(batch)
        applied, skipped, watermark = await self._apply(
            keys=[prefix + "wm"], args=[prefix, payload, "" if expected is None else expected])
        return ApplyResult(int(applied), int(skipped), int(watermark))

    async def watermark(self, topic: str, partition: int) -> int:
        """Highest offset applied for the partition, -1 if none."""
        value = await self.client.get(self.shard(topic, partition) + "wm")
        return int(value) if value is not None else -1

    async def reset_log(self, topic: str, partition: int, resume: int,
                        item_shards: Sequence[tuple[str, int]] = ()) -> int:
        """The broker lost records of the partition's log that this shard applied: the
        watermark goes back to ``resume`` (the log's new last known offset, -1 for a new log)
        and the shard's epoch moves on (event ids remembered before keep their place in the
        dedupe window). The item stages' shards (``item_shards``) forget this partition's
        source marks, or the new log's signals would look re-sent. Returns the new epoch.
        Safe to repeat after a crash half way."""
        shard = self.shard(topic, partition)
        epoch = int(await self.client.incr(shard + "epoch"))
        source = f"{topic}:{partition}"
        for item_topic, p in item_shards:
            for marks in ("pxsrc", "stsrc"):
                await self.client.hdel(self.shard(item_topic, p) + marks, source)
        await self.client.set(shard + "wm", resume)
        return epoch

    async def log_ids(self, partitions: Sequence[tuple[str, int]]
                      ) -> dict[tuple[str, int], str | None]:
        """The topic id each shard was last applied from (``set_log_id``)."""
        return {(t, p): await self.client.get(self.shard(t, p) + "logid") for t, p in partitions}

    async def set_log_id(self, topic: str, partition: int, topic_id: str) -> None:
        await self.client.set(self.shard(topic, partition) + "logid", topic_id)

    async def shard_hashes(self, topic: str, partitions: int, key: str) -> list[dict[str, str]]:
        """HGETALL of ``key`` in every shard of ``topic``."""
        return await self._each_shard(topic, partitions, "hgetall", key)

    async def merged_counts(self, topic: str, partitions: int, key: str) -> dict[str, float]:
        """Sum a numeric hash across the shards of a topic (counters are additive)."""
        total: dict[str, float] = {}
        for part in await self.shard_hashes(topic, partitions, key):
            for field, value in part.items():
                total[field] = total.get(field, 0.0) + float(value)
        return total

    async def merged_latest(self, topic: str, partitions: int, key: str) -> dict[str, str]:
        """Union of a hash across shards; for keyed topics the item lives in a single shard."""
        out: dict[str, str] = {}
        for part in await self.shard_hashes(topic, partitions, key):
            out.update(part)
        return out

    async def _each_shard(self, topic: str, partitions: int, command: str, key: str
                          ) -> list[Any]:
        keys = [self.shard(topic, p) + key for p in range(partitions)]
        if isinstance(self.client, RedisCluster):
            return [await getattr(self.client, command)(k) for k in keys]
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            getattr(pipe, command)(k)
        return list(await pipe.execute())
