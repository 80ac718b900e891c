"""The live recommendation model driven record by record, for the offline evaluator.

It runs the worker's own path minus Kafka: contract validation, the composed decision core,
the same Lua script through ``StateStore.apply`` (records are given the partition the default
Kafka partitioner would pick for their key, and consecutive offsets), and reads through the
API's ``Recommender``, with the worker's view refresh run after every record (the live model
without the refresh lag; trending lists are rebuilt rather than cached for seconds of wall
time, so a run is reproducible). So the evaluation measures the code that serves the
storefront.
"""

from __future__ import annotations

from engine.config import Settings
from engine.contracts import Validator, load_catalogue
from engine.core.activity import dead_letter_ops
from engine.core.compose import decision_core
from engine.recommend.neighbours import NeighbourViews, ViewRefresher
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
        self.views = NeighbourViews(store, catalogue, settings.recommend)
        self.refresher = ViewRefresher(self.views, settings.recommend)
        self.recommender = Recommender(store, catalogue, settings, views=self.views)
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
        if rejection is None:   # the worker's refresh, without its lag
            self.refresher.observe(record.topic, [record.event])
            await self.refresher.tick()
            self.views.forget_trending()

    async def recommend(self, user_id: str, k: int) -> list[str]:
        result = await self.recommender.for_user(user_id, k)
        return [r.item_id for r in result.items]

    async def close(self) -> None:
        await self.store.close()
