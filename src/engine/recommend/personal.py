"""The personal model: River's FunkMF learned online, its parameters in Redis as numbers.

One model per clicks partition: a user's clicks always land in the same partition, so the
user's vector and the item vectors it is trained against live in one shard, with one writer,
and are written by the same atomic call as the partition's watermark (``worker.processor``
``Stage``). Vectors are float32 arrays stored base64-encoded in hashes ``mf:u`` and ``mf:i``:
data, never pickles.

Training is implicit feedback: each view, wish-list add or rating is a positive (y = 1); items
drawn from the partition's ring of recent items (``mf:ring``) are negatives (y = 0). Negatives
and new vectors' initial values are chosen by hashing the event id and the item id, and the
batch is processed in offset order over an in-memory overlay, so the result is the same whatever
the batch boundaries or the number of replays.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from river import optim, reco

from engine.config import RecommendSettings
from engine.core.activity import Op
from engine.store import StateStore

INIT_SIGMA = 0.1


def encode(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)


def _as_stored(vector: Any) -> np.ndarray:
    """``vector`` rounded to the float32 it is stored as."""
    return np.asarray(vector, dtype="<f4").astype(np.float64)


def initial(entity: str, n: int) -> np.ndarray:
    """A new vector, the same on every worker and every replay."""
    rng = np.random.default_rng(zlib.crc32(entity.encode()))
    return rng.normal(0.0, INIT_SIGMA, n)


class PersonalModel:
    """The FunkMF stage: reads vectors at the start of a batch, learns each interaction in
    offset order, returns the vectors to write back with each event."""

    def __init__(self, settings: RecommendSettings) -> None:
        self.s = settings

    def _model(self) -> reco.FunkMF:
        return reco.FunkMF(n_factors=self.s.mf_factors, optimizer=optim.SGD(
            self.s.mf_learning_rate), l2=self.s.mf_l2,
            initializer=optim.initializers.Zeros())

    async def ops(self, store: StateStore, topic: str, partition: int,
                  events: Sequence[tuple[int, dict[str, Any]]]) -> dict[int, list[Op]]:
        positives = [(offset, e) for offset, e in events
                     if topic == "clicks" and "item_id" in e
                     and not (e["event_type"] == "rating" and e["rating"] < 3)]
        if not self.s.mf_blend or not positives:
            return {}
        shard = store.shard(topic, partition)
        ring: list[str] = await store.client.lrange(shard + "mf:ring", 0, self.s.mf_ring - 1)
        users = sorted({e["user_id"] for _, e in positives})
        items = sorted({e["item_id"] for _, e in positives} | set(ring))
        pipe = store.client.pipeline(transaction=False)
        pipe.hmget(shard + "mf:u", users)
        pipe.hmget(shard + "mf:i", items)
        user_rows, item_rows = await pipe.execute()
        n = self.s.mf_factors
        uvec = {u: decode(v) if v else initial(f"u:{u}", n)
                for u, v in zip(users, user_rows, strict=True)}
        ivec = {i: decode(v) if v else initial(f"i:{i}", n)
                for i, v in zip(items, item_rows, strict=True)}
        model = self._model()
        out: dict[int, list[Op]] = {}
        for offset, event in positives:
            user, item = event["user_id"], event["item_id"]
            negatives = self._negatives(event["event_id"], item, ring)
            model.u_latents[user] = uvec[user]
            for j in (item, *negatives):
                model.i_latents[j] = ivec[j]
            model.learn_one(user, item, 1.0)
            for j in negatives:
                model.learn_one(user, j, 0.0)
            # rounded as stored: the next event sees the same vector whether it comes in this
            # batch or the next (a replay cut differently must learn the same bits)
            uvec[user] = _as_stored(model.u_latents[user])
            ops: list[Op] = [("hset", "mf:u", user, encode(uvec[user]))]
            for j in (item, *negatives):
                ivec[j] = _as_stored(model.i_latents[j])
                ops.append(("hset", "mf:i", j, encode(ivec[j])))
            ops.append(("lpushcap", "mf:ring", item, str(self.s.mf_ring)))
            ring.insert(0, item)
            del ring[self.s.mf_ring:]
            out[offset] = ops
        # one model update per positive: the count proves exactly-once learning (fault tests)
        out[positives[-1][0]].append(("hincrby", "stats", "mf_updates", str(len(positives))))
        return out

    def _negatives(self, event_id: str, item: str, ring: list[str]) -> list[str]:
        pool = [j for j in ring if j != item]
        if not pool:
            return []
        picks = {pool[zlib.crc32(f"{event_id}:{k}".encode()) % len(pool)]
                 for k in range(self.s.mf_negatives)}
        return sorted(picks)


def dot_scores(user_vector: str, items: Sequence[str], rows: Sequence[str | None]
               ) -> dict[str, float]:
    """dot(user, item) for the items that have a vector (``rows``: their encoded vectors)."""
    vector = decode(user_vector)
    return {item: float(vector @ decode(row)) for item, row in zip(items, rows, strict=True)
            if row}
