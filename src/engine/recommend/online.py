"""The live recommendation model driven record by record, for the offline evaluator.

It runs the worker's own path minus Kafka: contract validation, the composed decision core,
the same Lua script through ``StateStore.apply`` (records are given the partition the default
Kafka partitioner would pick for their key, and consecutive offsets), and reads through the
API's ``Recommender``, its neighbour views built fresh for every query (the model without the
worker's refresh lag). So the evaluation measures the code that serves the storefront.
"""

from __future__ import annotations

from engine.config import Settings
from engine.contracts import Validator, load_catalogue
from engine.core.activity import dead_letter_ops
from engine.core.compose import decision_core
from engine.recommend.neighbours import NeighbourViews
from engine.recommend.personal import PersonalModel
from engine.recommend.query import Recommender
from engine.replay.reading import Record
from engine.store import StateStore


class OnlineRecommender:
    def __init__(self, store: StateStore, settings: Settings) -> None:
        catalogue = load_catalogue()
        self.store = store
        self.catalogue = catalogue
        self.validator = Validator(catalogue, settings.validation)
        self.core = decision_core(settings)
        self.recommender = Recommender(store, catalogue, settings, views=NeighbourViews(
            store, catalogue, settings.recommend, cache=False))
        self.personal = PersonalModel(settings.recommend)
        self.offsets: dict[tuple[str, int], int] = {}

    @classmethod
    async def open(cls, settings: Settings) -> OnlineRecommender:
        return cls(StateStore.open(settings.redis), settings)

    async def learn(self, record: Record) -> None:
        partition = self.catalogue.partition_of(record.topic, record.key)
        offset = self.offsets.get((record.topic, partition), -1) + 1
        self.offsets[(record.topic, partition)] = offset
        rejection = self.validator.check_event(record.topic, record.event)
        if rejection is not None:
            ops = dead_letter_ops(rejection.reason)
        else:
            ops = self.core(record.topic, record.event)
            learned = await self.personal.ops(self.store, record.topic, partition,
                                              [(offset, record.event)])
            ops += learned.get(offset, [])
        await self.store.apply(record.topic, partition, [(offset, ops)])

    async def recommend(self, user_id: str, k: int) -> list[str]:
        result = await self.recommender.for_user(user_id, k)
        return [r.item_id for r in result.items]

    async def close(self) -> None:
        await self.store.close()
