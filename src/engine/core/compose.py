"""The engine's decision cores composed into the one function the worker applies per event.

The worker, the evaluators and the benchmarks all build the core here, so they run the same
logic. Each decision adds its own operations to the activity state's.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.config import Settings
from engine.core import activity
from engine.core.activity import Event, Op
from engine.core.recommend import RecommendCore

Core = Callable[[str, Event], list[Op]]
#: The internal, item-keyed topic the pricing stage consumes (streams/topics.toml).
PRICE_SIGNALS = "price-signals"


def decision_core(settings: Settings) -> Core:
    recommend = RecommendCore(settings.recommend)

    def ops(topic: str, event: Event) -> list[Op]:
        if topic == PRICE_SIGNALS:   # the pricing stage computes its ops (engine.pricing.stage)
            return activity.common_ops(event)
        return activity.ops_for(topic, event) + recommend.ops(topic, event)

    return ops
