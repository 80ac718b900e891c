"""Which partitions live workers must cover before the stack and the API call themselves
ready: the item-keyed signals only while an item stage consumes them."""

from __future__ import annotations

import dataclasses

from engine.config import Settings
from engine.contracts import Catalogue
from engine.core.compose import PRICE_SIGNALS
from engine.views import expected_partitions


def test_item_signals_are_expected_only_while_an_item_stage_is_on(
        base_settings: Settings, catalogue: Catalogue) -> None:
    every = catalogue.input_partitions()
    signals = {tp for tp in every if tp.startswith(f"{PRICE_SIGNALS}:")}
    assert signals and expected_partitions(base_settings, catalogue) == every
    for pricing, stocking in ((True, False), (False, True)):
        on = dataclasses.replace(
            base_settings, pricing=dataclasses.replace(base_settings.pricing, enabled=pricing),
            stocking=dataclasses.replace(base_settings.stocking, enabled=stocking))
        assert expected_partitions(on, catalogue) == every
    off = dataclasses.replace(
        base_settings, pricing=dataclasses.replace(base_settings.pricing, enabled=False),
        stocking=dataclasses.replace(base_settings.stocking, enabled=False))
    assert expected_partitions(off, catalogue) == every - signals
